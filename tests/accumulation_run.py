"""One epoch of the shared engine on a small float64 model, with the samples each process sees given exactly.

The accumulation tests compare the weights it ends with across batch sizes, --accum-steps and process
counts. Imported by tests/test_accumulation.py (one process) and run under torchrun (several):

    torchrun --standalone --nproc_per_node=2 tests/accumulation_run.py OUT.pt BATCH ACCUM BN ORDERS [FLAGS...]

ORDERS is a JSON list with one list of sample indices per rank; BN is 0 or 1.
"""
import json
import os
import sys

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

SAMPLES, FEATURES, CLASSES = 48, 6, 3


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(SAMPLES, FEATURES, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (SAMPLES,), generator=g)
    return TensorDataset(x, y)


def model(bn: bool) -> nn.Module:
    torch.manual_seed(3)
    layers = [nn.Linear(FEATURES, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.Tanh(), nn.Linear(8, CLASSES)]
    return nn.Sequential(*layers).double()


def train(order: list[int], batch: int, accum: int, bn: bool, flags: list[str] = (), drop_last: bool = True):
    """The engine's epoch over `order` (this process's samples, in order); returns (parameters, EMA parameters or
    None, the epoch's sums, the evaluation of the trained model on all samples, sharded over the processes as
    the tasks shard their test sets)."""
    from cifar10 import train as cifar10_train
    from common import distributed as D
    from common.context import make_context
    from common.data import make_loader
    from common.engine import evaluate, train_one_epoch
    from common.progress import Progress
    from common.stops import StopRequests
    from common.training import Training

    settings = cifar10_train.TASK.parse(["--device", "cpu", "--opt", "sgd", "--lr", "0.2", "--momentum", "0.9",
                                         "--weight-decay", "0.01", "--epochs", "1", "--print-freq", "1000",
                                         "-b", str(batch), "--accum-steps", str(accum), *flags])
    env, device = D.setup("cpu")
    ctx = make_context(settings, env, device, StopRequests())
    training = Training(model(bn), ctx, 0)
    loader = DataLoader(data(), batch, sampler=order, drop_last=drop_last)
    result = train_one_epoch(training, loader, nn.functional.cross_entropy, lambda out: out, ctx,
                             Progress(env, 1), 0)
    ema = None if training.ema is None else [p.detach().clone() for p in training.ema.module.parameters()]
    test = make_loader(data(), 5, 0, False, env, 0)  # 48 samples: uneven shards and batches
    metrics = evaluate(training.model, test, nn.functional.cross_entropy, lambda out: out, ctx, Progress(env, 1),
                       CLASSES)
    return [p.detach().clone() for p in training.model.parameters()], ema, result.sums, metrics


def main(argv: list[str]) -> None:
    from common import distributed as D

    out, batch, accum, bn, orders, *flags = argv
    rank = int(os.environ.get("RANK", 0))
    params, ema, sums, metrics = train(json.loads(orders)[rank], int(batch), int(accum), bn == "1", flags)
    if rank == 0:
        torch.save({"params": params, "ema": ema, "sums": sums.as_list(), "metrics": metrics}, out)
    D.teardown()


if __name__ == "__main__":
    main(sys.argv[1:])

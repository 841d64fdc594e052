"""The training loop every task shares: train one epoch, evaluate, fit, and the run around them.

A task (cifar10/train.py, ...) describes itself with a `Task` and calls `run`.
Everything else lives here: devices and DDP, AMP, checkpoints and resume,
TensorBoard, progress bars, exact metrics, and the final JSON line.
"""
import contextlib
import json
import math
import os
import random
import sys
import time
import warnings
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from common import distributed as D
from common import runlog
from common import spike_stats as spike_stats_mod
from common.checkpoint import FORMAT, load_model_weights, load_state_dict_checked, read_checkpoint, save_checkpoint
from common.cli import check_args
from common.data import DataBundle, make_loader
from common.errors import UserError, one_sentence


@dataclass
class Task:
    """What differs between the experiments; each field is a small function of the parsed args."""

    name: str
    build_data: Callable[[Namespace], DataBundle]
    build_model: Callable[[Namespace, int], nn.Module]  # (args, num_classes)
    run_name: Callable[[Namespace], str]
    train_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (output, target) -> scalar
    eval_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    # Model output -> class scores [N, classes] for accuracy (e.g. mean over time steps).
    scores: Callable[[torch.Tensor], torch.Tensor] = lambda output: output
    # Called at the start of each epoch with (model, epoch, args); returns scalars to log.
    on_epoch_start: Callable[[nn.Module, int, Namespace], dict] | None = None
    # Task state saved in and restored from checkpoints (e.g. the masked PSN's lambda).
    state: Callable[[nn.Module], dict] = lambda model: {}
    prepare_input: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
    # True when --batch-size is the total over all processes (CIFAR10-DVS), not per process.
    global_batch: bool = False
    # Called on a new run's fresh model before training (e.g. ImageNet's --load of ANN weights).
    init_weights: Callable[[nn.Module, Namespace, bool], None] | None = None
    # Called with --test-only once the weights are loaded, to refuse what cannot be evaluated.
    check_loaded: Callable[[nn.Module, Namespace], None] | None = None
    # Settings that define the network: --resume / --test-only take them from our checkpoints,
    # and refuse an explicit flag that contradicts the file.
    model_args: tuple[str, ...] = ()
    # Values of settings that checkpoints written before the setting existed were trained with.
    legacy_args: dict = field(default_factory=dict)
    # Rewrites the recorded settings of a checkpoint from before a change of meaning (ckpt -> None).
    upgrade_checkpoint: Callable | None = None


# Settings of one invocation, not of the run: never taken from a checkpoint.
INVOCATION_ARGS = frozenset({
    "data_dir", "output_dir", "run_name", "workers", "print_freq", "device", "resume", "test_only", "sync_bn",
    "channels_last", "deterministic", "stop_after", "download", "streaming", "cache_dataset", "cache_dir", "tb",
    "load", "explicit", "spike_stats", "compile"})
# Every run before --drop-last existed dropped the last partial batch.
LEGACY_ARGS = {"drop_last": True}


class TrainingDiverged(UserError):
    pass


@dataclass
class Context:
    args: Namespace
    env: D.DistEnv
    device: torch.device
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None = None
    extra: dict = field(default_factory=dict)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    ema: object | None = None  # timm ModelEmaV3 with --model-ema
    ema_source: nn.Module | None = None  # the model it averages (without DDP's wrapper)
    lock: object | None = None  # runlog.RunLock of the run directory (rank 0)

    # Epochs this invocation trains after the current one, and the last evaluation's duration:
    # what the run's ETA adds to the current epoch's.
    epochs_after: int = 0
    eval_time_s: float = 0.0

    def bar(self, iterable, total, desc):
        # Rank 0 only, and only on a terminal; elsewhere (clusters, nohup) `progress` prints lines.
        quiet = not (self.env.is_main and sys.stdout.isatty())
        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, disable=quiet)

    def progress(self, epoch: int, step: int, total: int, loss: float, acc1: float, seen: int, elapsed: float):
        """One line every --print-freq steps when stdout is not a terminal (rank 0): a run's heartbeat."""
        if not self.env.is_main or sys.stdout.isatty():
            return
        per_step = elapsed / step
        epoch_eta = per_step * (total - step)
        run_eta = epoch_eta + self.eval_time_s + self.epochs_after * (per_step * total + self.eval_time_s)
        print(f"epoch {epoch + 1}/{self.args.epochs}  step {step}/{total}  loss {loss:.4f}  acc1 {acc1:.2f}  "
              f"{seen * self.env.world_size / elapsed:.0f} img/s  epoch ETA {_clock(epoch_eta)}  "
              f"run ETA {_clock(run_eta)}", flush=True)


def _spike_scalars(test: dict) -> dict:
    """TensorBoard scalars of --spike-stats, grouped under spikes/."""
    scalars = {f"spikes/{name or 'model'}": rate for name, rate in test["firing_rates"].items()}
    for key in ("synops_per_sample", "macs_per_sample", "energy_uJ_per_sample"):
        if key in test:
            scalars[f"spikes/{key}"] = test[key]
    return scalars


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def seed_epoch(seed: int, epoch: int) -> None:
    """Reseed every generator from (seed, epoch): shuffling, augmentation and mixing of an
    epoch depend on nothing else, so a resumed run replays exactly the epochs it missed."""
    s = (seed * 1_000_003 + epoch) % 2**63
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)


def _to_device(batch, ctx: Context, task: Task):
    images, target = batch
    images = task.prepare_input(images.to(ctx.device, non_blocking=True))
    if ctx.args.channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, target.to(ctx.device, non_blocking=True)


def _check_finite(ctx: Context, loss_sum: torch.Tensor, epoch: int) -> None:
    bad = torch.tensor([0.0 if math.isfinite(loss_sum.item()) else 1.0], dtype=torch.float64, device=ctx.device)
    if D.all_reduce_sum(ctx.env, bad).item() > 0:
        raise TrainingDiverged(f"The training loss became NaN or infinite in epoch {epoch + 1}; the run stopped and "
                               "its last good checkpoint is kept (lower --lr, or check the data).")


def train_one_epoch(model: nn.Module, loader, optimizer, task: Task, ctx: Context, epoch: int,
                    batch_transform=None) -> dict:
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    correct = torch.zeros((), dtype=torch.float64, device=ctx.device)
    seen = 0
    start = time.perf_counter()
    bar = ctx.bar(loader, len(loader), f"train {epoch}")
    for step, batch in enumerate(bar, 1):
        images, target = _to_device(batch, ctx, task)
        if batch_transform is not None:
            images, target = batch_transform(images, target)
        with ctx.autocast():
            output = model(images)
            loss = task.train_loss(output, target)
        optimizer.zero_grad(set_to_none=True)
        clip = ctx.args.clip_grad
        if clip is not None:
            from timm.utils import dispatch_clip_grad  # timm takes seconds to import: only when used
        if ctx.scaler is not None:
            ctx.scaler.scale(loss).backward()
            if clip is not None:
                ctx.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                dispatch_clip_grad(model.parameters(), clip, mode="norm")
            ctx.scaler.step(optimizer)
            ctx.scaler.update()
        else:
            loss.backward()
            if clip is not None:
                dispatch_clip_grad(model.parameters(), clip, mode="norm")
            optimizer.step()
        functional.reset_net(model)
        if ctx.ema is not None:
            ctx.ema.update(ctx.ema_source)

        n = images.shape[0]
        seen += n
        with torch.no_grad():
            hard = target.argmax(-1) if target.dim() > 1 else target  # mixed soft labels: the dominant class
            loss_sum += loss.detach().double() * n
            correct += (task.scores(output).argmax(-1) == hard).sum()
        if step % ctx.args.print_freq == 0:  # the only host syncs in the loop
            _check_finite(ctx, loss_sum, epoch)
            loss_now, acc_now = loss_sum.item() / seen, 100 * correct.item() / seen
            bar.set_postfix(loss=f"{loss_now:.4f}", acc1=f"{acc_now:.2f}")
            ctx.progress(epoch, step, len(loader), loss_now, acc_now, seen, time.perf_counter() - start)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    elapsed = time.perf_counter() - start
    _check_finite(ctx, loss_sum, epoch)
    totals = D.all_reduce_sum(ctx.env, torch.stack([loss_sum, correct, loss_sum.new_tensor(seen)]))
    loss_total, correct_total, count = totals.tolist()
    count = max(count, 1.0)
    return {"loss": loss_total / count, "acc1": 100.0 * correct_total / count,
            "images_per_s": count / elapsed, "epoch_time_s": elapsed}


@torch.no_grad()
def evaluate(model: nn.Module, loader, task: Task, ctx: Context, num_classes: int, spike_stats: bool = False) -> dict:
    """Exact test metrics in fp32: per-rank sums of loss, top-1 and top-5 hits and samples, added over ranks.

    With `spike_stats`, also every spiking layer's firing rate over the test set and the
    synaptic operations and energy per sample of the first batch (common.spike_stats).
    """
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # loss, top1, top5, samples
    k = min(5, num_classes)
    rates = spike_stats_mod.FiringRates(model) if spike_stats else contextlib.nullcontext()
    operations = None
    with rates:
        for batch in ctx.bar(loader, len(loader), "test"):
            images, target = _to_device(batch, ctx, task)
            if spike_stats and operations is None:
                rates.paused = True
                operations = spike_stats_mod.operations_per_sample(model, images)
                rates.paused = False
            _evaluate_batch(model, images, target, task, sums, k)
    loss, top1, top5, n = D.all_reduce_sum(ctx.env, sums).tolist()
    n_safe = max(n, 1.0)
    metrics = {"loss": loss / n_safe, "acc1": 100.0 * top1 / n_safe, "samples": int(n)}
    if num_classes >= 5:
        metrics["acc5"] = 100.0 * top5 / n_safe
    if spike_stats:
        metrics["firing_rates"] = rates.rates(ctx.env, ctx.device)
        metrics.update(operations or {})
    return metrics


def _evaluate_batch(model, images, target, task: Task, sums: torch.Tensor, k: int) -> None:
    """Add one batch's loss, top-1 and top-k hits and count to `sums`.

    fp32 whatever --amp says, as the original scripts evaluated: test numbers do not depend
    on the training precision.
    """
    output = model(images)
    loss = task.eval_loss(output, target)
    functional.reset_net(model)
    scores = task.scores(output).float()
    topk = scores.topk(k, dim=-1).indices
    hits = topk == target[:, None]
    n = target.shape[0]
    sums += torch.stack([loss.double() * n, hits[:, 0].sum().double(), hits.any(-1).sum().double(),
                         sums.new_tensor(n)])


def _build_optimizer(args: Namespace, model: nn.Module):
    if args.opt == "sgd":
        return torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)


def strict_json(record: dict) -> str:
    """JSON that every parser reads: NaN and infinities become null (with a warning on stderr)."""
    bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        print(f"warning: {', '.join(bad)} not finite; written as null.", file=sys.stderr, flush=True)
        record = {k: (None if k in bad else v) for k, v in record.items()}
    return json.dumps(record)


def _print_json(record: dict) -> None:
    print(strict_json(record), flush=True)


def run(task_for: Callable[[Namespace], Task] | Task, args: Namespace) -> dict:
    """Train (or with --test-only, evaluate) as the args say; returns what the final JSON line prints.

    `task_for(args)` describes the task; with --resume it is called again once the
    checkpoint's recorded settings have been adopted, so the loss and model follow them.
    """
    check_args(args)
    if isinstance(task_for, Task):  # a fixed description (tests, users' own scripts)
        task_for = (lambda fixed: lambda _args: fixed)(task_for)
    task = task_for(args)
    ckpt = None
    if args.resume == "auto":  # the same command line for every restart of a cluster job
        latest = Path(args.output_dir) / (args.run_name or task.run_name(args)) / runlog.LATEST
        args.resume = str(latest) if latest.is_file() else None
        if args.test_only and args.resume is None:
            raise UserError(f"--test-only --resume auto found no {latest}.")
    if args.resume:
        ckpt = read_checkpoint(args.resume)
        if ckpt.layout == "ours":
            adopt_checkpoint_settings(args, ckpt, task)
            check_args(args)
            task = task_for(args)
    env, device = D.setup(args.device)
    ctx_holder = {}
    try:
        return _run(task, args, env, device, ckpt, ctx_holder)
    finally:
        if "ctx" in ctx_holder and ctx_holder["ctx"].lock is not None:
            ctx_holder["ctx"].lock.release()
        D.teardown()


def adopt_checkpoint_settings(args: Namespace, ckpt, task: Task) -> list[str]:
    """Take the run's settings from one of our checkpoints, where the command line did not give them.

    A resumed run so continues with what it was trained with, also after a default changed
    (a key the file predates gets its legacy value). An explicit flag that contradicts a
    model-defining setting of the file is refused; other explicit flags (--epochs to extend
    a run, say) win. Returns the names adopted.
    """
    explicit = getattr(args, "explicit", frozenset())
    if task.upgrade_checkpoint is not None:
        task.upgrade_checkpoint(ckpt)
    recorded = {**LEGACY_ARGS, **task.legacy_args, **ckpt.args}
    adopted = []
    for key, value in recorded.items():
        if key in INVOCATION_ARGS or not hasattr(args, key):
            continue
        current = getattr(args, key)
        if not _same_kind(value, current):
            raise UserError(f"Checkpoint {ckpt.path} records {key}={value!r}, which is not a valid value for "
                            f"--{key.replace('_', '-')}; the file is damaged or from another program.")
        if key in explicit:
            if key in task.model_args and value != current:
                raise UserError(f"--{key.replace('_', '-')} {current} contradicts checkpoint {ckpt.path}, whose "
                                f"model was built with {key}={value}; leave the flag out to use the file's.")
            continue
        if value != current:
            setattr(args, key, value)
            adopted.append(key)
    return adopted


def _same_kind(value, current) -> bool:
    """Whether a recorded value can stand where the parser put `current` (None on either side is fine)."""
    primitive = (bool, int, float, str, type(None))
    if not isinstance(value, primitive) or isinstance(value, float) and not math.isfinite(value):
        return False
    if value is None or current is None:
        return True
    if isinstance(current, bool) or isinstance(value, bool):
        return isinstance(current, bool) and isinstance(value, bool)
    if isinstance(current, float):
        return isinstance(value, (int, float))
    return type(value) is type(current)


def _run(task: Task, args: Namespace, env: D.DistEnv, device: torch.device, ckpt, holder: dict) -> dict:
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device} was asked for, but this machine has no CUDA GPU; use --device cpu.")
    if args.amp is None:
        args.amp = device.type == "cuda"
    amp_dtype = None
    if args.amp:
        amp_dtype = getattr(torch, args.amp_dtype) if args.amp_dtype else (
            torch.float16 if device.type == "cuda" else torch.bfloat16)
    ctx = Context(args, env, device, amp_dtype)
    holder["ctx"] = ctx
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.deterministic
        torch.backends.cudnn.deterministic = args.deterministic
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    batch_size = _per_process_batch(task, args, env)
    seed_epoch(args.seed, -1)
    data = _build_data_once(task, args, env)
    model = task.build_model(args, data.num_classes).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    test_loader = make_loader(data.test, batch_size, args.workers, False, env, args.seed,
                              pin_memory=device.type == "cuda")

    if args.test_only:
        return _test_only(model, test_loader, task, ctx, data.num_classes, ckpt)

    optimizer = _build_optimizer(args, model)
    if amp_dtype == torch.float16:
        ctx.scaler = torch.amp.GradScaler(device.type)
    start_epoch, best_acc1, last_acc1, run_dir, resumed_from = _starting_point(task, model, optimizer, ctx, ckpt)
    scheduler = Schedule(optimizer, args, start_epoch)
    if args.model_ema:
        from timm.utils import ModelEmaV3  # timm takes seconds to import: only when used

        ctx.ema, ctx.ema_source = ModelEmaV3(model, decay=args.model_ema_decay), model
        if ckpt is not None and ckpt.model_ema is not None:
            load_state_dict_checked(ctx.ema.module, ckpt.model_ema, ckpt.path, "model_ema")

    summary = {"run_dir": str(run_dir), "epochs_done": start_epoch,
               "best_test_acc1": best_acc1, "last_test_acc1": last_acc1}
    if start_epoch >= args.epochs:
        if env.is_main:
            print(f"{run_dir}: all {args.epochs} epochs are done; nothing to train.", flush=True)
            _print_json(summary)
            runlog.write_summary(run_dir, strict_json(summary))
        return summary

    if args.sync_bn and env.enabled:
        model = D.convert_sync_batchnorm(model)
    train_model = model
    if env.enabled:
        train_model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if args.compile:
        train_model = torch.compile(train_model)  # evaluation and checkpoints use the plain model
    train_loader = make_loader(data.train, batch_size, args.workers, True, env, args.seed,
                               pin_memory=device.type == "cuda", drop_last=args.drop_last)
    if len(train_loader) == 0:
        raise UserError(f"The training set ({len(data.train)} samples over {env.world_size} processes) is "
                        f"smaller than one batch of {batch_size}; lower --batch-size.")

    writer = None
    if env.is_main:
        runlog.write_args(run_dir, args, resumed_from, task.name)
        writer = runlog.open_writer(run_dir, start_epoch)
        runlog.truncate_metrics(run_dir, start_epoch)  # a resumed run rewrites the epochs it replays
        print(f"run directory: {run_dir} (epoch {start_epoch + 1} of {args.epochs})", flush=True)

    stop_at = args.epochs if args.stop_after is None else min(args.epochs, start_epoch + args.stop_after)
    try:
        for epoch in range(start_epoch, stop_at):
            seed_epoch(args.seed, epoch)
            train_loader.sampler.set_epoch(epoch)
            task_scalars = task.on_epoch_start(model, epoch, args) if task.on_epoch_start else {}
            scheduler.at_epoch_start(epoch)
            lr = optimizer.param_groups[0]["lr"]
            ctx.epochs_after = stop_at - epoch - 1
            train = train_one_epoch(train_model, train_loader, optimizer, task, ctx, epoch, data.batch_transform)
            D.broadcast_buffers(env, model)  # evaluate, on every rank, the model rank 0 saves
            eval_start = time.perf_counter()
            test = evaluate(model, test_loader, task, ctx, data.num_classes, spike_stats=args.spike_stats)
            ctx.eval_time_s = time.perf_counter() - eval_start
            ema_test = None
            if ctx.ema is not None:
                D.broadcast_buffers(env, ctx.ema.module)
                ema_test = evaluate(ctx.ema.module, test_loader, task, ctx, data.num_classes)
            scheduler.after_epoch()
            last_acc1 = test["acc1"]
            is_best = best_acc1 is None or test["acc1"] > best_acc1
            best_acc1 = test["acc1"] if is_best else best_acc1
            if env.is_main:
                scalars = {"train/loss": train["loss"], "train/acc1": train["acc1"], "test/loss": test["loss"],
                           "test/acc1": test["acc1"], "lr": lr, "train/images_per_s": train["images_per_s"],
                           "train/epoch_time_s": train["epoch_time_s"], **task_scalars}
                if "acc5" in test:
                    scalars["test/acc5"] = test["acc5"]
                if ema_test is not None:
                    scalars.update({f"test_ema/{k}": v for k, v in ema_test.items() if k != "samples"})
                if args.spike_stats:
                    scalars.update(_spike_scalars(test))
                    for name, image in spike_stats_mod.psn_weight_images(model, args.T).items():
                        writer.add_image(f"psn_weight/{name}", image, epoch)
                for tag, value in scalars.items():
                    writer.add_scalar(tag, value, epoch)
                writer.flush()
                runlog.append_metrics(run_dir, strict_json({"epoch": epoch, **scalars}))
                state = _checkpoint_state(model, optimizer, scheduler, ctx, epoch, best_acc1, last_acc1, args, task)
                if is_best:  # first: a kill between the two saves must not lose the best epoch
                    save_checkpoint(state, run_dir / runlog.BEST)
                save_checkpoint(state, run_dir / runlog.LATEST)
                print(f"epoch {epoch + 1}/{args.epochs}  train loss {train['loss']:.4f} acc1 {train['acc1']:.2f}  "
                      f"test loss {test['loss']:.4f} acc1 {test['acc1']:.2f} (best {best_acc1:.2f})  "
                      f"{train['images_per_s']:.0f} img/s  {train['epoch_time_s']:.1f} s", flush=True)
            D.barrier(env)
            summary.update(epochs_done=epoch + 1, best_test_acc1=best_acc1, last_test_acc1=last_acc1)
            if ema_test is not None:
                summary["last_test_ema_acc1"] = ema_test["acc1"]
    except UserError as e:  # bad data met mid-run (an unreadable image, say): say how to go on
        latest = run_dir / runlog.LATEST
        how = (f"its last checkpoint is intact: fix the cause, then continue with --resume {latest}"
               if latest.is_file() else "no epoch had finished, so there is no checkpoint yet")
        raise type(e)(f"{one_sentence(e)} The run stopped in epoch {epoch + 1}; {how}.") from None
    finally:
        if writer is not None:
            writer.close()
    if env.is_main:
        _print_json(summary)
        runlog.write_summary(run_dir, strict_json(summary))
    return summary


def _test_only(model, test_loader, task: Task, ctx: Context, num_classes: int, ckpt) -> dict:
    load_model_weights(model, ckpt)
    if task.check_loaded is not None:
        task.check_loaded(model, ctx.args)
    metrics = evaluate(model, test_loader, task, ctx, num_classes, spike_stats=ctx.args.spike_stats)
    record = {"test_acc1": metrics["acc1"], "test_loss": metrics["loss"], "samples": metrics["samples"]}
    if "acc5" in metrics:
        record["test_acc5"] = metrics["acc5"]
    if ctx.args.spike_stats:
        record.update({k: metrics[k] for k in ("synops_per_sample", "macs_per_sample", "energy_uJ_per_sample")
                       if k in metrics})
        record["firing_rates"] = metrics["firing_rates"]
    if ctx.env.is_main:
        _print_json(record)
    return record


class Schedule:
    """The learning rate per epoch: torch's CosineAnnealingLR (the paper's), or with --warmup-epochs
    timm's CosineLRScheduler, whose rate is a function of the epoch (set at each epoch's start).

    A resumed run replays the schedule from --lr up to its epoch rather than loading the
    saved one: the learning rate is a function of the epoch and this command's settings,
    so a run stopped after any epoch (`--stop-after`, or a first `--epochs 1`) continues
    exactly as the uninterrupted run would have.
    """

    def __init__(self, optimizer, args: Namespace, start_epoch: int):
        for group in optimizer.param_groups:
            group["lr"] = args.lr
            group.pop("initial_lr", None)
        period = args.cos_lr_T or args.epochs
        self.timm = None
        if args.warmup_epochs:
            from timm.scheduler import CosineLRScheduler  # timm takes seconds to import: only when used

            self.timm = CosineLRScheduler(optimizer, t_initial=period, warmup_t=args.warmup_epochs,
                                          warmup_lr_init=args.warmup_lr, t_in_epochs=True)
            return
        self.torch = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=period)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # stepping the schedule without optimizer steps is the point here
            for _ in range(start_epoch):
                self.torch.step()

    def at_epoch_start(self, epoch: int) -> None:
        if self.timm is not None:
            self.timm.step(epoch)

    def after_epoch(self) -> None:
        if self.timm is None:
            self.torch.step()

    def state_dict(self) -> dict:
        return (self.timm or self.torch).state_dict()


def _starting_point(task: Task, model, optimizer, ctx: Context, ckpt):
    """(start epoch, best acc1, last acc1, run directory, resumed-from path) of this invocation.

    --resume of one of our checkpoints continues in its run directory; any other file
    (the original layouts, bare weights) starts a new run directory from its weights.
    A new run directory that already holds checkpoints is refused (decided on rank 0).
    """
    args, env = ctx.args, ctx.env
    start_epoch, best_acc1, last_acc1, run_dir, resumed_from = 0, None, None, None, None
    if ckpt is not None:
        load_model_weights(model, ckpt)
        resumed_from = str(ckpt.path)
        start_epoch = 0 if ckpt.epoch is None else ckpt.epoch + 1
        best_acc1, last_acc1 = ckpt.best_acc1, ckpt.task_state.get("last_acc1")
        if start_epoch < args.epochs:
            _restore_training_state(ckpt, optimizer, ctx)
        if ckpt.layout == "ours":
            run_dir = ckpt.path.parent
    elif task.init_weights is not None:
        task.init_weights(model, args, env.is_main)
    named = Path(args.output_dir) / (args.run_name or task.run_name(args))
    explicit = getattr(args, "explicit", frozenset())
    fork = run_dir is not None and ({"output_dir", "run_name"} & explicit) and named.resolve() != run_dir.resolve()
    new_dir = run_dir is None or fork
    if new_dir:
        run_dir = named
    problem = None
    if env.is_main:
        try:
            if new_dir:
                runlog.claim_new_run_dir(run_dir)
            ctx.lock = runlog.RunLock(run_dir).claim()
            if not new_dir:
                _check_no_rewind(ckpt, run_dir)
                _restore_missing_best(ckpt, run_dir)
            runlog.remove_stray_temporaries(run_dir)
        except UserError as e:
            problem = str(e)
    problem = D.broadcast_object(env, problem)
    if problem:
        raise UserError(problem)
    if fork and env.is_main:
        print(f"forking a new run in {run_dir} from {ckpt.path} (epoch {start_epoch})", flush=True)
    return start_epoch, best_acc1, last_acc1, run_dir, resumed_from


def _check_no_rewind(ckpt, run_dir: Path) -> None:
    """Continuing in a run directory from a checkpoint older than its latest one would overwrite the
    later epochs (checkpoint_latest, TensorBoard, metrics.jsonl): refused, with the way to fork."""
    latest = run_dir / runlog.LATEST
    if ckpt.path.resolve() == latest.resolve() or not latest.is_file():
        return
    newer = read_checkpoint(latest)
    if newer.epoch is not None and ckpt.epoch is not None and newer.epoch > ckpt.epoch:
        raise UserError(f"Checkpoint {ckpt.path} is from epoch {ckpt.epoch + 1}, but its run's {latest.name} is at "
                        f"epoch {newer.epoch + 1}: continuing there would rewind the run. Resume {latest}, or give "
                        "--run-name (or --output-dir) to start a new run from this checkpoint.")


def _restore_missing_best(ckpt, run_dir: Path) -> None:
    """A kill between the two saves of a new best epoch can leave no checkpoint_max: when the checkpoint
    resumed from holds the best epoch itself, it becomes checkpoint_max again."""
    best = run_dir / runlog.BEST
    if best.exists() or ckpt.best_acc1 is None or ckpt.task_state.get("last_acc1") != ckpt.best_acc1:
        return
    import shutil

    tmp = run_dir / f".{best.name}.restore.tmp"
    shutil.copyfile(ckpt.path, tmp)
    os.replace(tmp, best)
    print(f"restored {best} from {ckpt.path} (it holds the best epoch)", flush=True)


def _per_process_batch(task: Task, args: Namespace, env: D.DistEnv) -> int:
    if not task.global_batch:
        return args.batch_size
    if args.batch_size % env.world_size:
        raise UserError(f"--batch-size {args.batch_size} is the total over all processes here and must divide "
                        f"evenly among {env.world_size} of them.")
    return args.batch_size // env.world_size


def _build_data_once(task: Task, args: Namespace, env: D.DistEnv) -> DataBundle:
    """Rank 0 builds (and maybe downloads) first; the others follow once the files are there."""
    problem = None
    if env.is_main:
        try:
            data = task.build_data(args)
        except UserError as e:
            problem = str(e)
    problem = D.broadcast_object(env, problem)
    if problem:
        raise UserError(problem)
    if not env.is_main:
        data = task.build_data(args)
    return data


def _checkpoint_state(model, optimizer, scheduler, ctx: Context, epoch, best_acc1, last_acc1, args, task):
    rng = {"torch": torch.get_rng_state()}
    if ctx.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(ctx.device)
    return {
        "format": FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict(),
        "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else None,
        "model_ema": ctx.ema.module.state_dict() if ctx.ema is not None else None,
        "epoch": epoch,
        "best_acc1": best_acc1,
        "args": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                 for k, v in vars(args).items() if k != "explicit"},
        "task_state": {**task.state(model), "last_acc1": last_acc1},
        "rng": rng,
    }


def _restore_training_state(ckpt, optimizer, ctx: Context) -> None:
    """Optimizer state (momenta), AMP scaler and RNG of a checkpoint; foreign layouts give what they have."""
    try:
        if ckpt.optimizer:
            optimizer.load_state_dict(ckpt.optimizer)
    except (ValueError, KeyError, RuntimeError) as e:
        message = f"the optimizer state in {ckpt.path} does not fit this run's optimizer (--opt {ctx.args.opt}): {e}"
        if ckpt.layout == "ours":
            raise UserError(message[0].upper() + message[1:] + ".") from None
        # Another program's file: its weights and epoch are what matter; say what is lost.
        if ctx.env.is_main:
            print(f"warning: {message}; continuing with a fresh optimizer.", file=sys.stderr, flush=True)
    if ctx.scaler is not None and ckpt.scaler:
        ctx.scaler.load_state_dict(ckpt.scaler)
    if ckpt.rng:
        torch.set_rng_state(ckpt.rng["torch"])
        if "cuda" in ckpt.rng and ctx.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt.rng["cuda"], ctx.device)

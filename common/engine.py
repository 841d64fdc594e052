"""The training loop and the evaluation every task shares: one epoch of steps, one pass over the test set.

Metrics are exact: each process keeps float64 sums (loss * n, hits, samples) that are added over
processes once, so the numbers do not depend on the batch size or the number of GPUs.
`common.fit` drives them epoch by epoch; `common.run` calls `evaluate` alone for --test-only.
"""
import contextlib
import itertools
import math
import signal
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional

from . import distributed as D
from . import spike_stats
from .context import Context
from .errors import UserError
from .progress import Progress
from .run_state import EpochSums
from .training import Training

# Under DDP, the processes check for a stop request together every this many steps (one small
# all-reduce and host sync): a cluster's warning signal comes a minute or two before the end.
STOP_CHECK_STEPS = 10


class TrainingDiverged(UserError):
    pass


@dataclass(frozen=True)
class EpochResult:
    """What one call of train_one_epoch did: the whole epoch, or up to `stopped_at` when a stop was requested."""

    sums: EpochSums
    stopped_at: int | None = None  # the last step trained, when a stop request ended the epoch early

    @property
    def loss(self) -> float:
        return self.sums.loss_n / max(self.sums.samples, 1.0)

    @property
    def acc1(self) -> float:
        return 100.0 * self.sums.correct / max(self.sums.samples, 1.0)

    @property
    def images_per_s(self) -> float:
        return max(self.sums.samples, 1.0) / self.sums.seconds

    @property
    def epoch_time_s(self) -> float:
        return self.sums.seconds


def _to_device(batch, ctx: Context):
    images, target = batch
    images = images.to(ctx.device, non_blocking=True)
    if ctx.settings.channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, target.to(ctx.device, non_blocking=True)


def _all_finite(model: nn.Module) -> torch.Tensor:
    """Whether every weight and BatchNorm statistic is finite, as one device tensor (no host sync here)."""
    tensors = [p.detach() for p in model.parameters()] + [b for b in model.buffers() if b.is_floating_point()]
    return torch.stack([t.isfinite().all() for t in tensors]).all()


def sync_point(ctx: Context, model: nn.Module, loss_sum: torch.Tensor, epoch: int) -> bool:
    """Where the processes agree, in one collective, that the loss, the weights and the BatchNorm
    statistics are finite and whether to stop now (a stop signal reached any of them).

    Raises TrainingDiverged (before anything more is saved) when something is NaN or infinite."""
    host = torch.tensor([0.0 if math.isfinite(loss_sum.item()) else 1.0, float(ctx.stops.requested)],
                        dtype=torch.float64, device=ctx.device)
    flags = torch.cat([host, (~_all_finite(model)).to(torch.float64).reshape(1)])
    bad_loss, stop, bad_weights = D.all_reduce_sum(ctx.env, flags).tolist()
    if bad_loss > 0:
        raise TrainingDiverged(f"The training loss became NaN or infinite in epoch {epoch + 1}; the run stopped and "
                               "its last good checkpoint is kept (lower --lr, or check the data).")
    if bad_weights > 0:
        raise TrainingDiverged(f"The weights or BatchNorm statistics became NaN or infinite in epoch {epoch + 1}; the "
                               "run stopped and its last good checkpoint is kept (lower --lr, or clip with --clip-grad).")
    if stop > 0 and not ctx.stops.requested:  # another process got the signal: stop with it
        ctx.stops.signum = signal.SIGTERM
    return stop > 0


def train_one_epoch(t: Training, loader, loss_fn: Callable, scores: Callable, ctx: Context, progress: Progress,
                    epoch: int, batch_transform=None, resumed: EpochSums | None = None,
                    start_step: int = 0, early_lines: bool = False) -> EpochResult:
    """Train one epoch (from optimizer step `start_step` on with the running sums `resumed`, after a mid-epoch
    checkpoint).

    With --accum-steps K, one optimizer step takes K micro-batches of the loader: their gradients add up,
    each micro-batch's loss weighted by its share of the step's samples, so the step's gradient is that of
    one batch K times as large while BatchNorm still sees one micro-batch. Under DDP only a step's last
    micro-batch reduces gradients over processes. The steps are what everything else counts: the
    optimizer, the AMP scaler, --clip-grad, the EMA, the divergence checks, progress lines, stops and
    mid-epoch checkpoints act once per step; the metrics count samples. With --drop-last, the micro-batches
    at the epoch's end that cannot fill a step are left out, as a whole batch's last partial one is.

    A stop request ends the epoch early at a step the processes agree on (every step in one process,
    every --print-freq and every STOP_CHECK_STEPS steps under DDP). With `early_lines` (the first epoch
    an invocation trains) progress also shows at steps 1, 2, 4, 8, ... before the first --print-freq
    step, so a run says within seconds that it trains, whatever --print-freq is.
    """
    t.train_model.train()
    t.optimizer.zero_grad(set_to_none=True)
    print_freq, accum = ctx.settings.print_freq, ctx.settings.accum_steps
    # [loss * n, correct, samples]: a resumed epoch's sums so far count once, on rank 0
    sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)
    seconds_before = 0.0
    if start_step and resumed is not None:
        seconds_before = resumed.seconds
        if ctx.is_main:
            sums += torch.tensor(resumed.as_list()[:3], dtype=torch.float64, device=ctx.device)
    micro_batches = len(loader)
    steps = micro_batches // accum if loader.drop_last else -(-micro_batches // accum)
    micro_batches = min(micro_batches, steps * accum)
    samples_left, batch_size = len(loader.sampler), loader.batch_size  # this process's, this epoch
    total = start_step + steps
    step = start_step
    seen_here = 0
    start = time.perf_counter()
    stopped_at = None
    batches = loader if micro_batches == len(loader) else itertools.islice(loader, micro_batches)
    bar = progress.bar(batches, micro_batches, f"train {epoch + 1}")
    for i, batch in enumerate(bar):
        last_of_step = i % accum == accum - 1 or i == micro_batches - 1
        images, target = _to_device(batch, ctx)
        if batch_transform is not None:
            images, target = batch_transform(images, target)
        with ctx.autocast():
            output = t.train_model(images)
            loss = loss_fn(output, target)
        n = images.shape[0]
        if accum > 1:  # the mean over this micro-batch, as its share of the mean over the step's samples
            step_samples = min(accum * batch_size, samples_left - (i // accum) * accum * batch_size)
            t.backward(loss * (n / step_samples), last_of_step)
        else:
            t.backward(loss)
        functional.reset_net(t.train_model)
        seen_here += n
        with torch.no_grad():
            hard = target.argmax(-1) if target.dim() > 1 else target  # mixed soft labels: the dominant class
            sums += torch.stack([loss.detach().double() * n, (scores(output).argmax(-1) == hard).sum().double(),
                                 sums.new_tensor(n)])
        if not last_of_step:
            continue
        t.step()
        t.update_ema()
        step += 1
        at_print = step % print_freq == 0 or (early_lines and step - start_step < print_freq
                                              and (step - start_step) & (step - start_step - 1) == 0)
        # Host syncs only every --print-freq steps, and under DDP every STOP_CHECK_STEPS to agree
        # on a stop (a cluster gives seconds); one process stops at the first step it can.
        if at_print or (ctx.env.enabled and step % STOP_CHECK_STEPS == 0) or (
                ctx.stops.requested and not ctx.env.enabled):
            stop = sync_point(ctx, t.model, sums[0], epoch)
            if at_print:
                loss_now, acc_now = sums[0].item() / sums[2].item(), 100 * sums[1].item() / sums[2].item()
                bar.set_postfix(loss=f"{loss_now:.4f}", acc1=f"{acc_now:.2f}")
                progress.step(epoch, step, total, loss_now, acc_now, seen_here, start_step, time.perf_counter() - start)
            if stop:
                stopped_at = step
                break
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    elapsed = time.perf_counter() - start + seconds_before
    if stopped_at is None:
        sync_point(ctx, t.model, sums[0], epoch)  # a request now is honoured after this epoch's checkpoint
    loss_total, correct_total, count = D.all_reduce_sum(ctx.env, sums).tolist()
    return EpochResult(EpochSums(loss_total, correct_total, count, elapsed), stopped_at)


@torch.no_grad()
def evaluate(model: nn.Module, loader, loss_fn: Callable, scores: Callable, ctx: Context, progress: Progress,
             num_classes: int, with_spike_stats: bool = False) -> dict:
    """Exact test metrics in fp32: per-rank sums of loss, top-1 and top-5 hits and samples, added over ranks.

    With `with_spike_stats`, also every spiking layer's firing rate over the test set and the
    synaptic operations and energy per sample of the first batch (common.spike_stats).
    """
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # loss, top1, top5, samples
    k = min(5, num_classes)
    rates = spike_stats.FiringRates(model) if with_spike_stats else contextlib.nullcontext()
    operations = None
    with rates:
        for batch in progress.bar(loader, len(loader), "test"):
            images, target = _to_device(batch, ctx)
            if with_spike_stats and operations is None:
                rates.paused = True
                operations = spike_stats.operations_per_sample(model, images)
                rates.paused = False
            _evaluate_batch(model, images, target, loss_fn, scores, sums, k)
    loss, top1, top5, n = D.all_reduce_sum(ctx.env, sums).tolist()
    n_safe = max(n, 1.0)
    metrics = {"loss": loss / n_safe, "acc1": 100.0 * top1 / n_safe, "samples": int(n)}
    if num_classes >= 5:
        metrics["acc5"] = 100.0 * top5 / n_safe
    if with_spike_stats:
        metrics["firing_rates"] = rates.rates(ctx.env, ctx.device)
        metrics.update(operations or {})
    return metrics


def _evaluate_batch(model, images, target, loss_fn, scores, sums: torch.Tensor, k: int) -> None:
    """Add one batch's loss, top-1 and top-k hits and count to `sums`.

    fp32 whatever --amp says, as the original scripts evaluated: test numbers do not depend
    on the training precision.
    """
    output = model(images)
    loss = loss_fn(output, target)
    functional.reset_net(model)
    scored = scores(output).float()
    topk = scored.topk(k, dim=-1).indices
    hits = topk == target[:, None]
    n = target.shape[0]
    sums += torch.stack([loss.double() * n, hits[:, 0].sum().double(), hits.any(-1).sum().double(),
                         sums.new_tensor(n)])

"""The training loop every task shares: train one epoch, evaluate, fit, and the run around them.

A task (cifar10/train.py, ...) describes itself with a `Task` and calls `run`.
Everything else lives here: devices and DDP, AMP, checkpoints and resume,
TensorBoard, progress bars, exact metrics, and the final JSON line.
"""
import contextlib
import errno
import json
import math
import os
import random
import shutil
import signal
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
from common.checkpoint import (FORMAT, checkpoint_classes, load_model_weights, load_state_dict_checked, read_checkpoint,
                               save_checkpoint)
from common.cli import check_args
from common.data import DataBundle, make_loader
from common.errors import UserError, one_sentence
from common.stops import Interrupted, RunStopped, StopRequests, resume_command, signal_name


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
    # The model-defining settings an original-layout state dict determines, from its keys and shapes
    # ({'channels': 256, 'T': 4}, say): --resume / --test-only of those files need no model flags.
    infer_model_args: Callable[[dict], dict] | None = None


# Settings of one invocation, not of the run: never taken from a checkpoint.
INVOCATION_ARGS = frozenset({
    "data_dir", "output_dir", "run_name", "workers", "print_freq", "device", "resume", "test_only", "sync_bn",
    "channels_last", "deterministic", "stop_after", "download", "streaming", "cache_dataset", "cache_dir", "tb",
    "load", "explicit", "spike_stats", "compile", "dist_timeout"})
# Every run before --drop-last existed dropped the last partial batch.
LEGACY_ARGS = {"drop_last": True}


# Under DDP, the processes check for a stop request together every this many steps (one small
# all-reduce and host sync): a cluster's warning signal comes a minute or two before the end.
STOP_CHECK_STEPS = 10


class TrainingDiverged(UserError):
    pass


class PeerLost(UserError):
    """A DDP peer died or hung: not the user's doing, but as clear an end."""

    exit_code = 1


def _resume_hint(ctx: "Context") -> str:
    state = ctx.state
    if state is None or not ctx.env.is_main or not (state.run_dir / runlog.LATEST).is_file():
        return ""
    return f" Resume with: {resume_command(state.run_dir / runlog.LATEST)}"


@dataclass
class Context:
    """What one invocation runs with: settings, processes, device, precision, and the run's helpers."""

    args: Namespace
    env: D.DistEnv
    device: torch.device
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None = None
    ema: object | None = None  # timm ModelEmaV3 with --model-ema
    ema_source: nn.Module | None = None  # the model it averages (without DDP's wrapper)
    lock: runlog.RunLock | None = None  # of the run directory (rank 0)
    stops: StopRequests = field(default_factory=StopRequests)
    state: "RunState | None" = None  # where the run stands, once its start is known

    # Epochs this invocation trains after the current one, and the last evaluation's duration:
    # what the run's ETA adds to the current epoch's.
    epochs_after: int = 0
    eval_time_s: float = 0.0

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def bar(self, iterable, total, desc):
        # Rank 0 only, and only on a terminal; elsewhere (clusters, nohup) `progress` prints lines.
        quiet = not (self.env.is_main and sys.stdout.isatty())
        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, disable=quiet)

    def progress(self, epoch: int, step: int, total: int, loss: float, acc1: float, seen: int, done: int,
                 elapsed: float):
        """One line every --print-freq steps when stdout is not a terminal (rank 0): a run's heartbeat.

        `seen` samples in `elapsed` seconds over the steps after `done` (those this invocation ran)."""
        if not self.env.is_main or sys.stdout.isatty():
            return
        per_step = elapsed / max(step - done, 1)
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


@dataclass
class RunState:
    """Where a run stands: every checkpoint holds it, and a resume reads it back."""

    run_dir: Path
    epoch: int = 0  # the next epoch to train, 0-based
    step: int = 0  # batches of that epoch already trained (> 0 after a mid-epoch checkpoint)
    epoch_sums: list | None = None  # that epoch's running [loss * n, correct, samples, seconds] at `step`
    rng: dict | None = None  # the generators' states at `step`, restored when the epoch goes on
    best_acc1: float | None = None
    last_acc1: float | None = None
    resumed_from: str | None = None  # the checkpoint this invocation started from

    def finish_epoch(self, test_acc1: float) -> bool:
        """Record an evaluated epoch; True when it is the best so far."""
        is_best = self.best_acc1 is None or test_acc1 > self.best_acc1
        self.best_acc1 = test_acc1 if is_best else self.best_acc1
        self.last_acc1 = test_acc1
        self.epoch, self.step, self.epoch_sums = self.epoch + 1, 0, None
        return is_best

    @property
    def summary(self) -> dict:
        return {"run_dir": str(self.run_dir), "epochs_done": self.epoch, "best_test_acc1": self.best_acc1,
                "last_test_acc1": self.last_acc1}


def _to_device(batch, ctx: Context):
    images, target = batch
    images = images.to(ctx.device, non_blocking=True)
    if ctx.args.channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, target.to(ctx.device, non_blocking=True)


def _sync_point(ctx: Context, loss_sum: torch.Tensor, epoch: int) -> bool:
    """Where the processes agree, in one collective, that the loss is finite and whether to stop now
    (a stop signal reached any of them). Raises TrainingDiverged on a NaN or infinite loss."""
    flags = torch.tensor([0.0 if math.isfinite(loss_sum.item()) else 1.0, float(ctx.stops.requested)],
                         dtype=torch.float64, device=ctx.device)
    bad, stop = D.all_reduce_sum(ctx.env, flags).tolist()
    if bad > 0:
        raise TrainingDiverged(f"The training loss became NaN or infinite in epoch {epoch + 1}; the run stopped and "
                               "its last good checkpoint is kept (lower --lr, or check the data).")
    if stop > 0 and not ctx.stops.requested:  # another process got the signal: stop with it
        ctx.stops.signum = signal.SIGTERM
    return stop > 0


def train_one_epoch(model: nn.Module, loader, optimizer, task: Task, ctx: Context, epoch: int,
                    batch_transform=None, resume: RunState | None = None) -> dict:
    """Train one epoch (from `resume.step` with its running sums, after a mid-epoch checkpoint).

    A stop request ends it early at a step the processes agree on (every step in one process,
    every --print-freq steps under DDP); the result then holds 'stopped_at' and 'epoch_sums'.
    """
    model.train()
    done = resume.step if resume is not None else 0
    # [loss * n, correct, samples]: a resumed epoch's sums so far count once, on rank 0
    sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)
    seconds_before = 0.0
    if done and resume.epoch_sums is not None:
        seconds_before = resume.epoch_sums[3]
        if ctx.env.is_main:
            sums += torch.tensor(resume.epoch_sums[:3], dtype=torch.float64, device=ctx.device)
    total = done + len(loader)
    seen_here = 0
    start = time.perf_counter()
    stopped_at = None
    bar = ctx.bar(loader, len(loader), f"train {epoch}")
    for step, batch in enumerate(bar, done + 1):
        images, target = _to_device(batch, ctx)
        if batch_transform is not None:
            images, target = batch_transform(images, target)
        with ctx.autocast():
            output = model(images)
            loss = task.train_loss(output, target)
        optimizer.zero_grad(set_to_none=True)
        _backward_and_step(loss, model, optimizer, ctx)
        functional.reset_net(model)
        if ctx.ema is not None:
            ctx.ema.update(ctx.ema_source)

        n = images.shape[0]
        seen_here += n
        with torch.no_grad():
            hard = target.argmax(-1) if target.dim() > 1 else target  # mixed soft labels: the dominant class
            sums += torch.stack([loss.detach().double() * n, (task.scores(output).argmax(-1) == hard).sum().double(),
                                 sums.new_tensor(n)])
        at_print = step % ctx.args.print_freq == 0
        # Host syncs only every --print-freq steps, and under DDP every STOP_CHECK_STEPS to agree
        # on a stop (a cluster gives seconds); one process stops at the first step it can.
        if at_print or (ctx.env.enabled and step % STOP_CHECK_STEPS == 0) or (
                ctx.stops.requested and not ctx.env.enabled):
            stop = _sync_point(ctx, sums[0], epoch)
            if at_print:
                loss_now, acc_now = sums[0].item() / sums[2].item(), 100 * sums[1].item() / sums[2].item()
                bar.set_postfix(loss=f"{loss_now:.4f}", acc1=f"{acc_now:.2f}")
                ctx.progress(epoch, step, total, loss_now, acc_now, seen_here, done, time.perf_counter() - start)
            if stop:
                stopped_at = step
                break
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    elapsed = time.perf_counter() - start + seconds_before
    if stopped_at is None:
        _sync_point(ctx, sums[0], epoch)  # a request now is honoured after this epoch's checkpoint
    loss_total, correct_total, count = D.all_reduce_sum(ctx.env, sums).tolist()
    if stopped_at is not None:
        return {"stopped_at": stopped_at, "epoch_sums": [loss_total, correct_total, count, elapsed]}
    count = max(count, 1.0)
    return {"loss": loss_total / count, "acc1": 100.0 * correct_total / count,
            "images_per_s": count / elapsed, "epoch_time_s": elapsed}


def _backward_and_step(loss: torch.Tensor, model: nn.Module, optimizer, ctx: Context) -> None:
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
            images, target = _to_device(batch, ctx)
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
        run_dir = Path(args.output_dir) / (args.run_name or task.run_name(args))
        found = runlog.resumable_checkpoint(run_dir)
        args.resume = None if found is None else str(found)
        if args.test_only and args.resume is None:
            raise UserError(f"--test-only --resume auto found no checkpoint in {run_dir}.")
    if args.resume:
        ckpt = read_checkpoint(args.resume)
        if ckpt.layout == "ours":
            adopt_checkpoint_settings(args, ckpt, task)
        else:
            adopt_inferred_settings(args, ckpt, task)
        check_args(args)
        task = task_for(args)
    env, device = D.setup(args.device, getattr(args, "dist_timeout", 10.0))
    ctx = _context(args, env, device)
    try:
        with ctx.stops:
            return _run(task, ctx, ckpt)
    except KeyboardInterrupt:  # Ctrl-C: at once, with the checkpoints already written
        raise _stopped(ctx, signal.SIGINT, "") from None
    except Interrupted as e:  # SIGTERM / SIGUSR1 outside the training loop: nothing half-done to save
        raise _stopped(ctx, e.signum, "") from None
    except RuntimeError as e:
        if env.enabled and D.is_peer_failure(e):
            raise PeerLost(f"Another process of this run failed or stopped answering (no reply within "
                           f"--dist-timeout {getattr(args, 'dist_timeout', 10.0):g} min: {str(e).strip().splitlines()[0][:200]}); "
                           f"this one stops too.{_resume_hint(ctx)}") from None
        raise
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"The disk is full ({e.strerror}: {e.filename or 'a run file'}); the run stopped, and "
                            "its checkpoints are as the last save left them.") from None
        raise
    finally:
        if ctx.lock is not None:
            ctx.lock.release()
        D.teardown()


def _context(args: Namespace, env: D.DistEnv, device: torch.device) -> Context:
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device} was asked for, but this machine has no CUDA GPU; use --device cpu.")
    if args.amp is None:
        args.amp = device.type == "cuda"
    amp_dtype = None
    if args.amp:
        amp_dtype = getattr(torch, args.amp_dtype) if args.amp_dtype else (
            torch.float16 if device.type == "cuda" else torch.bfloat16)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not args.deterministic
        torch.backends.cudnn.deterministic = args.deterministic
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return Context(args, env, device, amp_dtype)


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


def adopt_inferred_settings(args: Namespace, ckpt, task: Task) -> list[str]:
    """The model-defining settings that another program's checkpoint determines through its tensors'
    names and shapes (`task.infer_model_args`), taken where the command line did not give them; an
    explicit flag that contradicts them is refused. Returns the names adopted."""
    if task.infer_model_args is None:
        return []
    explicit = getattr(args, "explicit", frozenset())
    inferred = task.infer_model_args(ckpt.state_dict)
    adopted = []
    for key, value in inferred.items():
        current = getattr(args, key)
        if value == current:
            continue
        if key in explicit:
            raise UserError(f"--{key.replace('_', '-')} {current} contradicts checkpoint {ckpt.path}, whose tensors "
                            f"say {key}={value}; leave the flag out to use the file's.")
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


@dataclass
class Training:
    """The objects one invocation trains with."""

    model: nn.Module  # evaluated and saved
    train_model: nn.Module  # what the steps run: `model`, or its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    schedule: "Schedule"
    train_loader: object
    test_loader: object
    data: DataBundle
    num_classes: int  # the model's (a checkpoint's may exceed the data's)
    step_samples: int  # samples per optimizer step over all processes
    writer: object | None = None  # TensorBoard, rank 0


def _run(task: Task, ctx: Context, ckpt) -> dict:
    args, env, device = ctx.args, ctx.env, ctx.device
    batch_size = _per_process_batch(task, args, env)
    seed_epoch(args.seed, -1)
    data = _build_data_once(task, args, env)
    model, num_classes = _build_model(task, ctx, data, ckpt)
    test_loader = make_loader(data.test, batch_size, args.workers, False, env, args.seed,
                              pin_memory=device.type == "cuda")
    if args.test_only:
        return _test_only(model, test_loader, task, ctx, num_classes, ckpt)

    optimizer = _build_optimizer(args, model)
    if ctx.amp_dtype == torch.float16:
        ctx.scaler = torch.amp.GradScaler(device.type)
    state = _starting_point(task, model, optimizer, ctx, ckpt, batch_size * env.world_size)
    if state.epoch >= args.epochs:
        return _finish(state, ctx, f"{state.run_dir}: all {args.epochs} epochs are done; nothing to train.")
    _start_ema(ctx, model, ckpt)
    t = Training(model, _training_model(model, ctx), optimizer, Schedule(optimizer, args, state.epoch),
                 _train_loader(data, batch_size, ctx), test_loader, data, num_classes, batch_size * env.world_size)
    if env.is_main:
        runlog.write_args(state.run_dir, args, state.resumed_from, task.name)
        t.writer = runlog.open_writer(state.run_dir, state.epoch)
        runlog.truncate_metrics(state.run_dir, state.epoch)  # a resumed run rewrites the epochs it replays
        where = f", step {state.step + 1}" if state.step else ""
        print(f"run directory: {state.run_dir} (epoch {state.epoch + 1}{where} of {args.epochs})", flush=True)
    stop_at = args.epochs if args.stop_after is None else min(args.epochs, state.epoch + args.stop_after)
    extra = {}
    ctx.stops.deferred = True  # from here a stop signal waits for a step's end (and a checkpoint)
    try:
        while state.epoch < stop_at:
            ctx.epochs_after = stop_at - state.epoch - 1
            extra = _train_epoch(t, state, task, ctx)
            if state.epoch < stop_at and _agree_to_stop(ctx):  # a signal during evaluation or the save
                raise _stopped(ctx, ctx.stops.signum, f"after epoch {state.epoch}")
    except UserError as e:  # bad data met mid-run (an unreadable image, say): say how to go on
        latest = state.run_dir / runlog.LATEST
        how = (f"its last checkpoint is intact: fix the cause, then continue with --resume {latest}"
               if latest.is_file() else "no epoch had finished, so there is no checkpoint yet")
        raise type(e)(f"{one_sentence(e)} The run stopped in epoch {state.epoch + 1}; {how}.") from None
    finally:
        ctx.stops.deferred = False
        if t.writer is not None:
            t.writer.close()
    return _finish(state, ctx, extra=extra)


def _train_epoch(t: Training, state: RunState, task: Task, ctx: Context) -> dict:
    """Train, evaluate, log and save epoch `state.epoch`; returns the summary's extra fields."""
    args, env, epoch = ctx.args, ctx.env, state.epoch
    seed_epoch(args.seed, epoch)
    t.train_loader.sampler.set_epoch(epoch)
    task_scalars = task.on_epoch_start(t.model, epoch, args) if task.on_epoch_start else {}
    t.schedule.at_epoch_start(epoch)
    lr = t.optimizer.param_groups[0]["lr"]
    resume = None
    if state.step:  # a mid-epoch checkpoint: its generators' states, and on past the batches it trained
        _set_rng_state(state.rng, ctx)
        t.train_loader.sampler.skip(state.step * t.step_samples // env.world_size)
        resume = state
    train = train_one_epoch(t.train_model, t.train_loader, t.optimizer, task, ctx, epoch, t.data.batch_transform,
                            resume)
    if "stopped_at" in train:
        state.step, state.epoch_sums = train["stopped_at"], train["epoch_sums"]
        if env.is_main:
            _save(t, state, ctx, best=False)
        D.barrier(env)
        raise _stopped(ctx, ctx.stops.signum, f"in epoch {epoch + 1} after step {state.step}", mid_epoch=True)

    D.broadcast_buffers(env, t.model)  # evaluate, on every rank, the model rank 0 saves
    eval_start = time.perf_counter()
    test = evaluate(t.model, t.test_loader, task, ctx, t.num_classes, spike_stats=args.spike_stats)
    ctx.eval_time_s = time.perf_counter() - eval_start
    ema_test = None
    if ctx.ema is not None:
        D.broadcast_buffers(env, ctx.ema.module)
        ema_test = evaluate(ctx.ema.module, t.test_loader, task, ctx, t.num_classes)
    t.schedule.after_epoch()
    is_best = state.finish_epoch(test["acc1"])
    if env.is_main:
        _log_epoch(t, epoch, {"train/loss": train["loss"], "train/acc1": train["acc1"], "test/loss": test["loss"],
                              "test/acc1": test["acc1"], "lr": lr, "train/images_per_s": train["images_per_s"],
                              "train/epoch_time_s": train["epoch_time_s"], **task_scalars}, test, ema_test, args)
        _save(t, state, ctx, best=is_best)
        print(f"epoch {epoch + 1}/{args.epochs}  train loss {train['loss']:.4f} acc1 {train['acc1']:.2f}  "
              f"test loss {test['loss']:.4f} acc1 {test['acc1']:.2f} (best {state.best_acc1:.2f})  "
              f"{train['images_per_s']:.0f} img/s  {train['epoch_time_s']:.1f} s", flush=True)
    D.barrier(env)
    return {} if ema_test is None else {"last_test_ema_acc1": ema_test["acc1"]}


def _log_epoch(t: Training, epoch: int, scalars: dict, test: dict, ema_test: dict | None, args: Namespace) -> None:
    """TensorBoard and metrics.jsonl: the same scalars, one step per epoch."""
    if "acc5" in test:
        scalars["test/acc5"] = test["acc5"]
    if ema_test is not None:
        scalars.update({f"test_ema/{k}": v for k, v in ema_test.items() if k != "samples"})
    if args.spike_stats:
        scalars.update(_spike_scalars(test))
        for name, image in spike_stats_mod.psn_weight_images(t.model, args.T).items():
            t.writer.add_image(f"psn_weight/{name}", image, epoch)
    for tag, value in scalars.items():
        t.writer.add_scalar(tag, value, epoch)
    t.writer.flush()
    runlog.append_metrics(t.writer.log_dir, strict_json({"epoch": epoch, **scalars}))


def _save(t: Training, state: RunState, ctx: Context, best: bool) -> None:
    """The run's checkpoints (rank 0). The best one first: a kill between the two saves must not lose it."""
    record = _checkpoint_state(t, state, ctx)
    if best:
        save_checkpoint(record, state.run_dir / runlog.BEST)
    save_checkpoint(record, state.run_dir / runlog.LATEST)


def _finish(state: RunState, ctx: Context, note: str | None = None, extra: dict | None = None) -> dict:
    summary = {**state.summary, **(extra or {})}
    if ctx.env.is_main:
        if note:
            print(note, flush=True)
        _print_json(summary)
        runlog.write_summary(state.run_dir, strict_json(summary))
    return summary


def _agree_to_stop(ctx: Context) -> bool:
    if not ctx.env.enabled:
        return ctx.stops.requested
    return _sync_point(ctx, torch.zeros((), dtype=torch.float64), -1)


def _stopped(ctx: Context, signum: int, where: str, mid_epoch: bool = False) -> RunStopped:
    """The exception that ends a stopped run, its message saying what is saved and how to go on (rank 0)."""
    state = ctx.state
    if not ctx.env.is_main:
        return RunStopped(signum, "")
    name = signal_name(signum)
    if state is None:
        return RunStopped(signum, f"{name}: stopped before training began; nothing was written.")
    latest = state.run_dir / runlog.LATEST
    if mid_epoch:
        saved = f"a mid-epoch checkpoint is in {latest}"
    elif latest.is_file():
        saved = f"the checkpoints in {state.run_dir} are intact"
    else:
        return RunStopped(signum, f"{name}: stopped in epoch {state.epoch + 1} before any checkpoint was written; "
                                  "run the same command again to start over.")
    where = where or f"in epoch {state.epoch + 1}"
    runlog.write_summary(state.run_dir, strict_json({**state.summary, "stopped": name}))
    return RunStopped(signum, f"{name}: stopped {where}; {saved}. Resume with:\n  {resume_command(latest)}")


def _build_model(task: Task, ctx: Context, data: DataBundle, ckpt):
    """The task's model, with the checkpoint's number of classes where it has more than the data
    (the data's labels index the checkpoint's classes). Returns (model, number of classes)."""
    args, classes = ctx.args, data.num_classes
    model = task.build_model(args, classes)
    if ckpt is not None:
        found = checkpoint_classes(model, ckpt, classes)
        if found < classes:
            raise UserError(f"Checkpoint {ckpt.path} classifies {found} classes, but the data has {classes}; "
                            "it cannot score them all.")
        if found > classes:
            if ctx.env.is_main:
                print(f"the checkpoint has {found} classes and the data {classes}: the data's labels "
                      f"0..{classes - 1} are read as the checkpoint's first {classes} classes.", flush=True)
            with torch.random.fork_rng(devices=[]):  # the weights come from the file: draw nothing new
                model, classes = task.build_model(args, found), found
    model = model.to(ctx.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, classes


def _start_ema(ctx: Context, model: nn.Module, ckpt) -> None:
    if not ctx.args.model_ema:
        return
    from timm.utils import ModelEmaV3  # timm takes seconds to import: only when used

    ctx.ema, ctx.ema_source = ModelEmaV3(model, decay=ctx.args.model_ema_decay), model
    if ckpt is not None and ckpt.layout == "ours" and ckpt.model_ema is not None:
        load_state_dict_checked(ctx.ema.module, ckpt.model_ema, ckpt.path, "model_ema")


def _training_model(model: nn.Module, ctx: Context) -> nn.Module:
    """What the training steps run: DDP around the model, maybe compiled; `model` stays what is saved."""
    if ctx.args.sync_bn and ctx.env.enabled:
        model = D.convert_sync_batchnorm(model)
    if ctx.env.enabled:
        model = DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
    if ctx.args.compile:
        model = torch.compile(model)
    return model


def _train_loader(data: DataBundle, batch_size: int, ctx: Context):
    args, env = ctx.args, ctx.env
    loader = make_loader(data.train, batch_size, args.workers, True, env, args.seed,
                         pin_memory=ctx.device.type == "cuda", drop_last=args.drop_last)
    if len(loader) == 0:
        raise UserError(f"The training set ({len(data.train)} samples over {env.world_size} processes) is "
                        f"smaller than one batch of {batch_size}; lower --batch-size.")
    return loader


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


def _starting_point(task: Task, model, optimizer, ctx: Context, ckpt, step_samples: int) -> RunState:
    """Where this invocation starts, with the run directory claimed (rank 0 decides).

    --resume of one of our checkpoints continues in its run directory (from the middle of an
    epoch for a mid-epoch checkpoint), or forks a new one when --run-name / --output-dir name
    another; any other file (the original layouts, bare weights) starts a new run from its weights.
    """
    args, env = ctx.args, ctx.env
    named = Path(args.output_dir) / (args.run_name or task.run_name(args))
    state = RunState(named)
    continuing = False
    if ckpt is not None:
        load_model_weights(model, ckpt)
        state.epoch, state.step = ckpt.position
        state.best_acc1, state.last_acc1, state.resumed_from = ckpt.best_acc1, ckpt.last_acc1, str(ckpt.path)
        if state.step:
            if ckpt.step_samples != step_samples:
                raise UserError(f"Checkpoint {ckpt.path} stopped in the middle of epoch {state.epoch + 1} with "
                                f"{ckpt.step_samples} samples per step (batch size times processes), this run takes "
                                f"{step_samples}: resume it with the same --batch-size and number of processes.")
            state.epoch_sums, state.rng = ckpt.epoch_sums, ckpt.rng
        if state.epoch < args.epochs:
            _restore_training_state(ckpt, optimizer, ctx)
        forked = {"output_dir", "run_name"} & getattr(args, "explicit", frozenset()) and named.resolve() != ckpt.path.parent.resolve()
        continuing = ckpt.layout == "ours" and not forked
        if continuing:
            state.run_dir = ckpt.path.parent
    elif task.init_weights is not None:
        task.init_weights(model, args, env.is_main)
    ctx.state = state
    _claim_run_dir(state, ckpt, ctx, continuing)
    if ckpt is not None and ckpt.layout == "ours" and not continuing and env.is_main:
        print(f"forking a new run in {state.run_dir} from {ckpt.path} ({_where(ckpt)})", flush=True)
    return state


def _claim_run_dir(state: RunState, ckpt, ctx: Context, continuing: bool) -> None:
    """Rank 0 takes the run directory's lock (a new run's must hold no checkpoints) and tidies it;
    every rank learns the outcome."""
    problem = None
    if ctx.env.is_main:
        try:
            if not continuing:
                runlog.claim_new_run_dir(state.run_dir)
            ctx.lock = runlog.RunLock(state.run_dir).claim()
            if continuing:
                _check_no_rewind(ckpt, state.run_dir)
                _restore_missing_best(ckpt, state.run_dir)
            runlog.remove_stray_temporaries(state.run_dir)
        except UserError as e:
            problem = str(e)
        except OSError as e:
            problem = (f"The run directory {state.run_dir} cannot be made or written ({e.strerror or e}); "
                       "choose another --output-dir.")
    problem = D.broadcast_object(ctx.env, problem)
    if problem:
        raise UserError(problem)


def _where(ckpt) -> str:
    epoch, step = ckpt.position
    return f"epoch {epoch + 1}, step {step}" if step else f"end of epoch {epoch}"


def _check_no_rewind(ckpt, run_dir: Path) -> None:
    """Continuing in a run directory from a checkpoint older than its latest one would overwrite the
    later epochs (checkpoint_latest, TensorBoard, metrics.jsonl): refused, with the way to fork."""
    latest = run_dir / runlog.LATEST
    if ckpt.path.resolve() == latest.resolve() or not latest.is_file():
        return
    newer = read_checkpoint(latest)
    if newer.position > ckpt.position:
        raise UserError(f"Checkpoint {ckpt.path} is from the {_where(ckpt)}, but its run's {latest.name} is at the "
                        f"{_where(newer)}: continuing there would rewind the run. Resume {latest}, or give "
                        "--run-name (or --output-dir) to start a new run from this checkpoint.")


def _restore_missing_best(ckpt, run_dir: Path) -> None:
    """A kill between the two saves of a new best epoch can leave no checkpoint_max: when the checkpoint
    resumed from holds the best epoch itself (not a mid-epoch one), it becomes checkpoint_max again."""
    best = run_dir / runlog.BEST
    if best.exists() or ckpt.step or ckpt.best_acc1 is None or ckpt.last_acc1 != ckpt.best_acc1:
        return
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
    problem = D.broadcast_object(env, problem, patient=True)
    if problem:
        raise UserError(problem)
    if not env.is_main:
        data = task.build_data(args)
    return data


def _checkpoint_state(t: Training, state: RunState, ctx: Context) -> dict:
    return {
        "format": FORMAT,
        "model": t.model.state_dict(),
        "optimizer": t.optimizer.state_dict(),
        "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else None,
        "model_ema": ctx.ema.module.state_dict() if ctx.ema is not None else None,
        "epoch": state.epoch - 1,  # the last finished one
        "step": state.step,
        "epoch_sums": state.epoch_sums,
        "step_samples": t.step_samples,
        "best_acc1": state.best_acc1,
        "args": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
                 for k, v in vars(ctx.args).items() if k != "explicit"},
        "task_state": {"last_acc1": state.last_acc1},
        "rng": _rng_state(ctx),
    }


def _rng_state(ctx: Context) -> dict:
    """Every generator a training step may draw from; a mid-epoch resume continues from them."""
    _, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    rng = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss_next],
           "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                     "gauss": float(gauss)}}
    if ctx.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(ctx.device)
    return rng


def _set_rng_state(rng: dict | None, ctx: Context) -> None:
    if not rng:
        return
    try:
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and ctx.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], ctx.device)
        if "python" in rng:
            version, internal, gauss_next = rng["python"]
            random.setstate((version, tuple(internal), gauss_next))
        if "numpy" in rng:
            n = rng["numpy"]
            np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    except (RuntimeError, ValueError, TypeError, KeyError) as e:
        raise UserError(f"The generator states of checkpoint {ctx.state.resumed_from} cannot be restored ({e}).") from None


def _restore_training_state(ckpt, optimizer, ctx: Context) -> None:
    """Optimizer state (momenta) and AMP scaler of a checkpoint; foreign layouts give what they have."""
    try:
        if ckpt.optimizer:
            optimizer.load_state_dict(ckpt.optimizer)
    except (ValueError, KeyError, RuntimeError, TypeError, AttributeError, IndexError) as e:
        message = f"the optimizer state in {ckpt.path} does not fit this run's optimizer (--opt {ctx.args.opt}): {e}"
        if ckpt.layout == "ours":
            raise UserError(message[0].upper() + message[1:] + ".") from None
        # Another program's file: its weights and epoch are what matter; say what is lost.
        if ctx.env.is_main:
            print(f"warning: {message}; continuing with a fresh optimizer.", file=sys.stderr, flush=True)
    if ctx.scaler is not None and ckpt.scaler:
        ctx.scaler.load_state_dict(ckpt.scaler)

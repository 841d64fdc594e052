"""Fit: the epochs of one invocation, each trained, evaluated, logged and saved; clean stops.

`Fit` owns what a run writes while it trains: the TensorBoard writer, metrics.jsonl, the
checkpoints (the run state with the training objects; the best first, then the latest: a kill
between the two loses neither), and the message a stopped run ends with (what is saved, and the
command that resumes). What the run says at its start and end is `common.report`'s.
"""
import contextlib
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import distributed as D
from . import neuron_registry, runlog, spike_stats
from .checkpoint import Checkpoint, save_checkpoint
from .context import Context
from .engine import EpochResult, evaluate, sync_point, train_one_epoch
from .errors import UserError, one_sentence
from .progress import Progress
from .report import Report, summary
from .rng import rng_state, seed_epoch, set_rng_state
from .run_dir import resumable_checkpoint
from .run_state import RunState
from .runlog import strict_json
from .stops import RunStopped, resume_command, signal_name
from .task import Task
from .training import Training


@dataclass(frozen=True)
class Loaders:
    train: object
    test: object
    batch_transform: object | None
    num_classes: int  # the model's (a checkpoint's may exceed the data's)
    step_samples: int  # samples per optimizer step over all processes and accumulated micro-batches


class Fit:
    def __init__(self, task: Task, ctx: Context, training: Training, state: RunState, loaders: Loaders,
                 run_dir: Path, resumed_from: str | None, report: Report):
        self.task, self.ctx, self.t, self.state, self.loaders = task, ctx, training, state, loaders
        self.run_dir, self.resumed_from, self.report = run_dir, resumed_from, report
        settings = ctx.settings
        self.train_loss, self.test_loss = task.train_loss(settings), task.test_loss(settings)
        self.progress = Progress(ctx.env, settings.epochs)
        self.writer = None
        self.first_epoch = state.epoch  # the first this invocation trains: its progress lines start at once

    # --- the loop --------------------------------------------------------------------------------

    def run(self) -> dict:
        settings, state, ctx = self.ctx.settings, self.state, self.ctx
        where = f", step {state.step + 1}" if state.step else ""
        accumulating = [] if settings.accum_steps == 1 else [
            f"one optimizer step: {settings.accum_steps} accumulated micro-batches of "
            f"{self.loaders.step_samples // settings.accum_steps // ctx.env.world_size} per process x "
            f"{ctx.env.world_size} process(es) = {self.loaders.step_samples} samples"]
        self.report.opening(f"run directory: {self.run_dir} (epoch {state.epoch + 1} of {settings.epochs}{where})",
                            *accumulating)
        self.report.record_start(state, self.run_dir, self.resumed_from)
        if ctx.is_main:
            self.writer = runlog.open_writer(self.run_dir, state.epoch)
            runlog.truncate_metrics(self.run_dir, state.epoch)  # a resumed run rewrites the epochs it replays
        stop_at = settings.epochs if settings.stop_after is None else min(settings.epochs,
                                                                           state.epoch + settings.stop_after)
        extra = {}
        ctx.stops.deferred = True  # from here a stop signal waits for a step's end (and a checkpoint)
        try:
            while state.epoch < stop_at:
                self.progress.epochs_after = stop_at - state.epoch - 1
                extra = self.epoch()
                if state.epoch < stop_at and self._agree_to_stop():  # a signal during evaluation or the save
                    raise self.stopped(ctx.stops.signum, f"after epoch {state.epoch}")
        except KeyboardInterrupt:  # Ctrl-C: at once, with the checkpoints already written
            raise self.stopped(signal.SIGINT, "") from None
        except UserError as e:  # bad data met mid-run (an unreadable image, say): say how to go on
            found = resumable_checkpoint(self.run_dir)
            how = (f"its last checkpoint is intact: fix the cause, then continue with --resume {found}"
                   if found is not None else "no epoch had finished, so there is no checkpoint yet")
            raise type(e)(f"{one_sentence(e)} The run stopped in epoch {state.epoch + 1}; {how}.") from None
        finally:
            ctx.stops.deferred = False
            if self.writer is not None:
                self.writer.close()
        return self.report.closing({**summary(state, self.run_dir), **extra}, self.run_dir)

    def epoch(self) -> dict:
        """Train, evaluate, log and save epoch `state.epoch`; returns the summary's extra fields."""
        ctx, t, state, loaders, settings = self.ctx, self.t, self.state, self.loaders, self.ctx.settings
        epoch = state.epoch
        seed_epoch(settings.seed, epoch)
        loaders.train.sampler.set_epoch(epoch)
        extra_scalars = neuron_registry.start_epoch(t.model, epoch, settings.epochs)
        t.schedule.at_epoch_start(epoch)
        lr = t.lr
        start_step, resumed = 0, None
        if state.step:  # a mid-epoch checkpoint: its generators' states, and on past the batches it trained
            set_rng_state(state.rng, ctx.device, self.resumed_from)
            loaders.train.sampler.skip(state.step * loaders.step_samples // ctx.env.world_size)
            start_step, resumed = state.step, state.epoch_sums
        # The first epoch an invocation trains is watched for layers that never fire (a silent network learns
        # nothing, and says nothing about it otherwise).
        watch = spike_stats.SilenceWatch(t.model) if epoch == self.first_epoch else contextlib.nullcontext()
        with watch:
            train = train_one_epoch(t, loaders.train, self.train_loss, self.task.scores, ctx, self.progress, epoch,
                                    loaders.batch_transform, resumed, start_step, early_lines=epoch == self.first_epoch)
        if train.stopped_at is None and isinstance(watch, spike_stats.SilenceWatch):
            silent = watch.silent(ctx.env)
            if silent and ctx.is_main:
                print(spike_stats.silence_warning(silent, len(watch.layers), epoch + 1), file=sys.stderr, flush=True)
        if train.stopped_at is not None:
            state.step, state.epoch_sums = train.stopped_at, train.sums
            if ctx.is_main:
                self.save(best=False)
            D.barrier(ctx.env)
            raise self.stopped(ctx.stops.signum, f"in epoch {epoch + 1} after step {state.step}", mid_epoch=True)

        D.broadcast_buffers(ctx.env, t.model)  # evaluate, on every rank, the model rank 0 saves
        eval_start = time.perf_counter()
        test = self.evaluate(t.model, with_spike_stats=settings.spike_stats)
        self.progress.eval_time_s = time.perf_counter() - eval_start
        ema_test = None
        if t.ema is not None:
            D.broadcast_buffers(ctx.env, t.ema.module)
            ema_test = self.evaluate(t.ema.module)
        t.schedule.after_epoch()
        is_best = state.finish_epoch(test["acc1"])
        if ctx.is_main:
            self.log(epoch, train, test, ema_test, lr, extra_scalars)
            self.save(best=is_best)
            self.progress.epoch(epoch, train, test, state.best_acc1)
        D.barrier(ctx.env)
        return {} if ema_test is None else {"last_test_ema_acc1": ema_test["acc1"]}

    def evaluate(self, model, with_spike_stats: bool = False) -> dict:
        return evaluate(model, self.loaders.test, self.test_loss, self.task.scores, self.ctx, self.progress,
                        self.loaders.num_classes, with_spike_stats)

    # --- what the run writes ---------------------------------------------------------------------

    def log(self, epoch: int, train: EpochResult, test: dict, ema_test: dict | None, lr: float,
            extra_scalars: dict) -> None:
        """TensorBoard and metrics.jsonl: the same scalars, one step per epoch, numbered from 1 as the console
        counts them (epoch 1 is the first)."""
        number = epoch + 1
        scalars = {"train/loss": train.loss, "train/acc1": train.acc1, "test/loss": test["loss"],
                   "test/acc1": test["acc1"], "lr": lr, "train/images_per_s": train.images_per_s,
                   "train/epoch_time_s": train.epoch_time_s, **extra_scalars}
        if "acc5" in test:
            scalars["test/acc5"] = test["acc5"]
        if ema_test is not None:
            scalars.update({f"test_ema/{k}": v for k, v in ema_test.items() if k != "samples"})
        if self.ctx.settings.spike_stats:
            scalars.update(spike_stats.scalars(test))
            for name, image in spike_stats.psn_weight_images(self.t.model, self.ctx.settings.T).items():
                self.writer.add_image(f"psn_weight/{name}", image, number)
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, number)
        self.writer.flush()
        runlog.append_metrics(self.writer.log_dir, strict_json({"epoch": number, **scalars}))

    def checkpoint(self) -> Checkpoint:
        """The run state (with the generators' states now) and the training objects, as a checkpoint keeps them."""
        self.state.rng = rng_state(self.ctx.device)
        return Checkpoint(None, "ours", self.t.model.state_dict(), self.state, **self.t.state())

    def save(self, best: bool) -> None:
        """The run's checkpoints (rank 0). The best one first: a kill between the two saves must not lose it."""
        record = self.checkpoint().to_dict()
        if best:
            save_checkpoint(record, self.run_dir / runlog.BEST)
        save_checkpoint(record, self.run_dir / runlog.LATEST)

    # --- stops -----------------------------------------------------------------------------------

    def _agree_to_stop(self) -> bool:
        if not self.ctx.env.enabled:
            return self.ctx.stops.requested
        return sync_point(self.ctx, self.t.model, torch.zeros((), dtype=torch.float64), -1)

    def stopped(self, signum: int, where: str, mid_epoch: bool = False) -> RunStopped:
        """The exception that ends a stopped run, its message saying what is saved and how to go on (rank 0)."""
        self.ctx.stops.ending()
        state = self.state
        if not self.ctx.is_main:
            return RunStopped(signum, "")
        name = signal_name(signum)
        latest = self.run_dir / runlog.LATEST
        if mid_epoch:
            saved = f"a mid-epoch checkpoint is in {latest}"
        elif latest.is_file():
            saved = f"the checkpoints in {self.run_dir} are intact"
        else:
            return RunStopped(signum, f"{name}: stopped in epoch {state.epoch + 1} before any checkpoint was written; "
                                      "run the same command again to start over.")
        where = where or f"in epoch {state.epoch + 1}"
        runlog.write_summary(self.run_dir, strict_json({**summary(state, self.run_dir), "stopped": name}))
        return RunStopped(signum, f"{name}: stopped {where}; {saved}. Resume with:\n  {resume_command(latest)}")

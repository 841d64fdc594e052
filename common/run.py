"""One invocation of a task, from its command line to its last line of output.

    start    = run directory claimed, checkpoint read, settings      common.start (run_dir, settings)
               resolved once (command line + checkpoint), frozen
    context  = processes, device, precision                          common.context
    data, model, loaders                                             the task's hooks
    --test-only: evaluate and print one JSON line                    common.engine.evaluate
    otherwise:   the run state, Training (optimizer, scaler, EMA,    common.start, common.training,
                 schedule) + Fit                                     common.fit
    what it says at its start and end                                common.report

A task's train.py calls `run(TASK, argv)` and nothing else.
"""
import errno

import torch
import torch.nn as nn

from . import distributed as D
from . import runlog, spike_stats
from .context import Context, make_context
from .data import DataBundle, make_loader
from .engine import evaluate
from .errors import UserError
from .fit import Fit, Loaders
from .progress import Progress
from .report import Report, made_here, summary
from .rng import seed_epoch
from .run_dir import resumable_checkpoint
from .settings import Settings
from .start import Start, open_run, starting_state
from .stops import Interrupted, RunStopped, StopRequests, resume_command, signal_name
from .task import Task
from .training import Training
from .weights import checkpoint_classes, load_model_weights


class PeerLost(UserError):
    """A DDP peer died or hung: not the user's doing, but as clear an end."""

    exit_code = 1


def run(task: Task, argv=None) -> dict:
    """Train (or with --test-only, evaluate) as the command line says; returns what the final JSON line prints."""
    cli = task.parse(argv)
    env, device = D.setup(cli.device, cli.dist_timeout)
    stops = StopRequests()
    start = None
    try:
        with stops:
            start = open_run(task, cli, env)
            ctx = make_context(start.settings, env, device, stops)
            return _invoke(task, start, ctx, Report(ctx, start.notes, made_here(ctx)))
    except (KeyboardInterrupt, Interrupted) as e:  # before the epochs began (data, model) or with --test-only
        stops.ending()
        signum = getattr(e, "signum", 2)
        raise RunStopped(signum, f"{signal_name(signum)}: stopped before training began; nothing was written."
                         if env.is_main else "") from None
    except RuntimeError as e:
        if env.enabled and D.is_peer_failure(e):
            raise PeerLost(f"Another process of this run failed or stopped answering (no reply within "
                           f"--dist-timeout {cli.dist_timeout:g} min: {str(e).strip().splitlines()[0][:200]}); "
                           f"this one stops too.{_resume_hint(start, env)}") from None
        raise
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"The disk is full ({e.strerror}: {e.filename or 'a run file'}); the run stopped, and "
                            "its checkpoints are as the last save left them.") from None
        raise
    finally:
        if start is not None and start.lock is not None:
            start.lock.release()
        D.teardown()


def _resume_hint(start: Start | None, env: D.DistEnv) -> str:
    if start is None or start.run_dir is None or not env.is_main:
        return ""
    found = resumable_checkpoint(start.run_dir)
    return f" Resume with: {resume_command(found)}" if found is not None else ""


def _invoke(task: Task, start: Start, ctx: Context, report: Report) -> dict:
    settings, env = ctx.settings, ctx.env
    batch_size = _per_process_batch(task, settings, env)
    seed_epoch(settings.seed, -1)
    data = _build_data_once(task, settings, env)
    model, num_classes = _build_model(task, ctx, data, start)
    pin = ctx.device.type == "cuda"
    test_loader = make_loader(data.test, batch_size, settings.workers, False, env, settings.seed, pin_memory=pin)
    if settings.test_only:
        return _test_only(task, ctx, model, test_loader, num_classes, start, report)

    step_samples = batch_size * env.world_size * settings.accum_steps
    state = starting_state(task, start, step_samples)
    if start.ckpt is not None:
        load_model_weights(model, start.ckpt)
    elif task.init_weights is not None:
        task.init_weights(model, settings, env.is_main)
    train_loader = make_loader(data.train, batch_size, settings.workers, True, env, settings.seed, pin_memory=pin,
                               drop_last=settings.drop_last)
    if len(train_loader) < (settings.accum_steps if settings.drop_last else 1):
        raise UserError(f"The training set ({len(data.train)} samples over {env.world_size} processes) is "
                        f"smaller than one optimizer step of {settings.accum_steps} x {batch_size} samples per "
                        "process; lower --batch-size or --accum-steps.")
    loaders = Loaders(train_loader, test_loader, data.batch_transform, num_classes, step_samples)
    if state.epoch >= settings.epochs:  # a finished run, or a file with nothing left to train: its summary
        state.best_acc1, state.last_acc1 = start.ckpt.state.best_acc1, start.ckpt.state.last_acc1
        report.opening()
        return report.closing(summary(state, start.run_dir), start.run_dir,
                              f"{start.run_dir}: all {settings.epochs} epochs are done; nothing to train.")
    training = Training(model, ctx, state.epoch, start.ckpt)
    resumed_from = str(start.ckpt.path) if start.ckpt is not None else None
    return Fit(task, ctx, training, state, loaders, start.run_dir, resumed_from, report).run()


def _per_process_batch(task: Task, settings: Settings, env: D.DistEnv) -> int:
    """The micro-batch each process's loader gives (what BatchNorm sees): --batch-size, or for a task whose
    --batch-size is the total per optimizer step, its share of one process and one accumulated micro-batch."""
    if not task.global_batch:
        return settings.batch_size
    parts = env.world_size * settings.accum_steps
    if settings.batch_size % parts:
        raise UserError(f"--batch-size {settings.batch_size} is the total per optimizer step here and must divide "
                        f"evenly among {env.world_size} processes x {settings.accum_steps} accumulated micro-batches.")
    return settings.batch_size // parts


def _build_data_once(task: Task, settings: Settings, env: D.DistEnv) -> DataBundle:
    """Rank 0 builds (and maybe downloads) first; the others follow once the files are there."""
    problem = None
    if env.is_main:
        try:
            data = task.build_data(settings)
        except UserError as e:
            problem = str(e)
    problem = D.broadcast_object(env, problem, patient=True)
    if problem:
        raise UserError(problem)
    if not env.is_main:
        data = task.build_data(settings)
    return data


def _build_model(task: Task, ctx: Context, data: DataBundle, start: Start) -> tuple[nn.Module, int]:
    """The task's model, with the checkpoint's number of classes where it has more than the data
    (the data's labels index the checkpoint's classes). Returns (model, number of classes)."""
    settings, classes, ckpt = ctx.settings, data.num_classes, start.ckpt
    model = task.build_model(settings, classes)
    if ckpt is not None:
        found = checkpoint_classes(model, ckpt, classes)
        if found < classes:
            raise UserError(f"Checkpoint {ckpt.path} classifies {found} classes, but the data has {classes}; "
                            "it cannot score them all.")
        if found > classes:
            if ctx.is_main:
                print(f"the checkpoint has {found} classes and the data {classes}: the data's labels "
                      f"0..{classes - 1} are read as the checkpoint's first {classes} classes.", flush=True)
            with torch.random.fork_rng(devices=[]):  # the weights come from the file: draw nothing new
                model, classes = task.build_model(settings, found), found
    model = model.to(ctx.device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, classes


def _test_only(task: Task, ctx: Context, model: nn.Module, test_loader, num_classes: int, start: Start,
               report: Report) -> dict:
    settings = ctx.settings
    load_model_weights(model, start.ckpt)
    mode = task.evaluation_mode(settings) if task.evaluation_mode is not None else None
    report.opening(f"test set: {len(test_loader.dataset)} samples, the model scores {num_classes} classes"
                   + (f"; evaluated {mode}" if mode else ""))
    if task.check_loaded is not None:
        task.check_loaded(model, settings)
    metrics = evaluate(model, test_loader, task.test_loss(settings), task.scores, ctx, Progress(ctx.env, 0),
                       num_classes, with_spike_stats=settings.spike_stats)
    record = {"test_acc1": metrics["acc1"], "test_loss": metrics["loss"], "samples": metrics["samples"]}
    if mode:
        record["evaluation"] = mode
    if "acc5" in metrics:
        record["test_acc5"] = metrics["acc5"]
    if settings.spike_stats:
        record.update({k: metrics[k] for k in ("synops_per_sample", "macs_per_sample", "energy_uJ_per_sample")
                       if k in metrics})
        record["firing_rates"] = metrics["firing_rates"]
        if ctx.is_main:
            written = runlog.write_test_only_scalars(start.ckpt, spike_stats.scalars(metrics))
            if written is not None:
                print(f"spike statistics written to {written} (TensorBoard, beside the run's curves)", flush=True)
    return report.closing(record)


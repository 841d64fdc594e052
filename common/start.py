"""Where an invocation starts: its settings, its checkpoint, its run directory and its run state.

Training: rank 0 claims the run directory (`common.run_dir`) and reads the checkpoint to continue
from under the lock; every process learns the claim (one `Claim` object) and reads the same file;
the settings are the command line merged with that file (`common.settings.resolve`). --test-only
claims nothing: it reads the file it is given and writes no run.
"""
from dataclasses import dataclass, field
from pathlib import Path

from . import distributed as D
from .checkpoint import Checkpoint, read_checkpoint
from .cli import MODEL
from .errors import UserError
from .run_dir import RunLock, claim, named_run_dir, resumable_checkpoint
from .run_state import RunState
from .settings import Settings, resolve
from .task import Task


@dataclass
class Start:
    """What an invocation starts from, decided once: its settings, checkpoint and run directory."""

    settings: Settings
    ckpt: Checkpoint | None = None
    run_dir: Path | None = None  # None with --test-only, which writes no run
    continuing: bool = False  # in the checkpoint's own run directory
    lock: RunLock | None = None  # rank 0's, while the run lives
    notes: list = field(default_factory=list)  # what rank 0 prints once the run starts


def open_run(task: Task, cli: Settings, env: D.DistEnv) -> Start:
    """Decide what this invocation starts from (every process returns the same)."""
    if cli.test_only:
        path = cli.resume
        if path == "auto":
            path = resumable_checkpoint(named_run_dir(task, cli))
            if path is None:
                raise UserError(f"--test-only --resume auto found no checkpoint in {named_run_dir(task, cli)}.")
        ckpt = read_checkpoint(path)
        told = []
        settings = resolve(task, cli.replace(resume=str(path)), ckpt, told)
        return Start(settings, ckpt, notes=[_evaluating(ckpt, told)])
    decided, problem, locks, ckpt = None, None, [], None
    if env.is_main:
        try:
            decided, ckpt = claim(task, cli, locks)
        except UserError as e:
            problem = str(e)
        except OSError as e:
            problem = (f"The run directory cannot be made or written ({e.strerror or e}: {e.filename}); "
                       "choose another --output-dir.")
        finally:
            if problem is not None or decided is None:
                for lock in locks:
                    lock.release()
    decided, problem = D.broadcast_object(env, (decided, problem))
    if problem:
        raise UserError(problem)
    lock = locks[0] if locks else None
    try:
        if ckpt is None and decided.checkpoint is not None:  # the other processes read the file rank 0 chose
            ckpt = read_checkpoint(decided.checkpoint)
        settings = resolve(task, cli.replace(resume=decided.resume), ckpt)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return Start(settings, ckpt, decided.run_dir, decided.continuing, lock, decided.notes)


def _evaluating(ckpt: Checkpoint, told: list) -> str:
    """What --test-only evaluates: the file, its layout and position, and the settings it gave."""
    layout = "this project's" if ckpt.layout == "ours" else f"the original {ckpt.layout}" \
        if ckpt.layout != "state_dict" else "a bare state dict"
    where = f", {ckpt.state.where()}" if ckpt.epoch_known else ""
    best = f", best {ckpt.state.best_acc1:.2f} %" if ckpt.state.best_acc1 is not None else ""
    model = "; model: " + ", ".join(told) if told else "; model settings from the command line"
    return f"evaluating {ckpt.path} ({layout} layout{where}{best}){model}"


def starting_state(task: Task, start: Start, step_samples: int) -> RunState:
    """The run state training begins with: a continued run's position and records, or a new run's (a fork of a
    checkpoint keeps its position, and starts its own records of accuracy and provenance); this invocation's
    settings in either case."""
    settings = start.settings
    state = RunState(task=task.name, settings=settings.record(), model_settings=settings.record(MODEL),
                     step_samples=step_samples)
    ckpt = start.ckpt
    if ckpt is None:
        return state
    saved = ckpt.state
    state.epoch, state.step = saved.position
    if start.continuing:
        state.best_acc1, state.last_acc1, state.provenance = saved.best_acc1, saved.last_acc1, list(saved.provenance)
    if state.step:
        if saved.step_samples != step_samples:
            raise UserError(f"Checkpoint {ckpt.path} stopped in the middle of epoch {state.epoch + 1} with "
                            f"{saved.step_samples} samples per step (batch size times processes times --accum-steps), this "
                            f"run takes {step_samples}: resume it with the same --batch-size, --accum-steps and "
                            "number of processes.")
        state.epoch_sums, state.rng = saved.epoch_sums, saved.rng
    return state

"""The run lifecycle: where an invocation starts, in which run directory, from which checkpoint.

The run directory is claimed (its lock taken) before any checkpoint of it is read, so what the
run continues from is the directory's state now, not a moment ago (another run may have been
stopping there). Continuing from any checkpoint older than the directory's latest is refused
(it would rewind the run); a damaged latest next to a readable best gives way to the best, with
a warning naming what is lost. Each epoch reseeds every generator from (seed, epoch), and a
mid-epoch checkpoint carries the generators' states.
"""
import json
import os
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import distributed as D
from . import runlog
from .checkpoint import Checkpoint, read_checkpoint
from .cli import INVOCATION, MODEL
from .errors import UserError
from .settings import LEGACY, Settings, adopt_inferred, adopt_recorded, check
from .task import Task


def seed_epoch(seed: int, epoch: int) -> None:
    """Reseed every generator from (seed, epoch): shuffling, augmentation and mixing of an
    epoch depend on nothing else, so a resumed run replays exactly the epochs it missed."""
    s = (seed * 1_000_003 + epoch) % 2**63
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)


def rng_state(device: torch.device) -> dict:
    """Every generator a training step may draw from; a mid-epoch resume continues from them."""
    _, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    rng = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss_next],
           "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                     "gauss": float(gauss)}}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def set_rng_state(rng: dict | None, device: torch.device, source) -> None:
    if not rng:
        return
    try:
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], device)
        if "python" in rng:
            version, internal, gauss_next = rng["python"]
            random.setstate((version, tuple(internal), gauss_next))
        if "numpy" in rng:
            n = rng["numpy"]
            np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    except (RuntimeError, ValueError, TypeError, KeyError, OverflowError) as e:
        raise UserError(f"The generator states of checkpoint {source} cannot be restored ({e}).") from None


@dataclass
class RunState:
    """Where a run stands: every checkpoint holds it, and a resume reads it back."""

    run_dir: Path
    epoch: int = 0  # the next epoch to train, 0-based
    step: int = 0  # batches of that epoch already trained (> 0 after a mid-epoch checkpoint)
    epoch_sums: list | None = None  # that epoch's running [loss * n, correct, samples, seconds] at `step`
    rng: dict | None = None  # the generators' states at `step`, restored when the epoch goes on
    best_acc1: float | None = None  # of the epochs this run evaluated (a fork starts its own record)
    last_acc1: float | None = None
    resumed_from: str | None = None  # the checkpoint this invocation started from
    provenance: list = field(default_factory=list)  # the records of the run's earlier segments

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
                "last_test_acc1": self.last_acc1, "provenance": self.provenance}


@dataclass
class Start:
    """What an invocation starts from, decided once: its settings, checkpoint and run directory."""

    settings: Settings
    ckpt: Checkpoint | None = None
    run_dir: Path | None = None  # None with --test-only, which writes no run
    continuing: bool = False  # in the checkpoint's own run directory
    lock: runlog.RunLock | None = None  # rank 0's, while the run lives
    notes: list = field(default_factory=list)  # what rank 0 prints once the run starts


def resolve(task: Task, cli: Settings, ckpt: Checkpoint | None, told: list | None = None) -> Settings:
    """The command line merged with a checkpoint's settings: recorded (ours) or told by its tensors (others).

    `told`, when given, collects one phrase per setting taken from the file (for --test-only's report)."""
    told = told if told is not None else []
    if ckpt is None:
        settings = cli
    elif ckpt.layout == "ours":
        if ckpt.task is not None and ckpt.task != task.name:
            raise UserError(f"Checkpoint {ckpt.path} is of the {ckpt.task} task, not {task.name}; use "
                            f"{ckpt.task}/train.py.")
        recorded = dict(ckpt.recorded_settings)
        if task.upgrade_recorded is not None:
            recorded = task.upgrade_recorded(recorded, ckpt.state_dict)
        settings, taken = adopt_recorded(cli, {**_legacy_settings(task), **recorded}, str(ckpt.path))
        told += [f"{k}={settings[k]}" for k in settings.flags if settings.flags[k].kind == MODEL and k in recorded]
        told[-1:] = [f"{told[-1]} (recorded in it)"] if told else []
    else:
        inferred = task.infer_settings(ckpt.state_dict) if task.infer_settings is not None else {}
        settings, taken = adopt_inferred(cli, inferred, str(ckpt.path))
        told += [f"{k}={settings[k]}" for k in inferred]
        told[-1:] = [f"{told[-1]} (from its tensors)"] if told else []
        settings = _settings_the_file_cannot_tell(task, settings, ckpt, told)
    if settings is not cli:
        check(settings)
    if task.check_settings is not None:
        task.check_settings(settings)
    return settings


def _settings_the_file_cannot_tell(task: Task, settings: Settings, ckpt: Checkpoint, told: list) -> Settings:
    """A setting another program's file cannot tell (a CIFAR10-DVS file's T): from the command line, or from the
    manifest.json that scripts/download_checkpoints.py wrote beside the file; never guessed."""
    missing = [k for k in task.file_cannot_tell if k not in settings.explicit]
    if not missing:
        return settings
    known = _manifest_settings(ckpt.path)
    found = {k: known[k] for k in missing if k in known}
    if found:
        settings, _ = adopt_inferred(settings, found, f"{ckpt.path} (its manifest.json)")
        told += [f"{k}={v} (from manifest.json beside it)" for k, v in found.items()]
    for key in missing:
        if key not in found:
            flag = settings.flags[key]
            choices = task.file_cannot_tell[key]
            raise UserError(f"Checkpoint {ckpt.path} ({ckpt.layout} layout) cannot tell its {key}; give {flag.name} "
                            f"(the paper's runs: {', '.join(map(str, choices))}), or fetch the file with "
                            "scripts/download_checkpoints.py, whose manifest.json records it.")
    return settings


def _manifest_settings(path: Path | None) -> dict:
    """The settings scripts/download_checkpoints.py recorded for a file in the manifest.json beside it."""
    if path is None:
        return {}
    try:
        with (Path(path).parent / "manifest.json").open("rb") as f:
            files = json.loads(f.read(1 << 20)).get("files", {})
        entry = files.get(Path(path).name, {}) if isinstance(files, dict) else {}
        settings = entry.get("settings", {}) if isinstance(entry, dict) else {}
    except (OSError, ValueError, RecursionError, AttributeError):
        return {}
    return settings if isinstance(settings, dict) else {}


def _legacy_settings(task: Task) -> dict:
    """The values our checkpoints from before a setting existed were trained with."""
    return {**LEGACY, **task.legacy_settings}


def named_run_dir(task: Task, settings: Settings) -> Path:
    return Path(settings.output_dir) / (settings.run_name or task.run_name(settings))


def open_run(task: Task, cli: Settings, env: D.DistEnv) -> Start:
    """Decide what this invocation starts from. Training: rank 0 claims the run directory first, then
    reads its checkpoint; every process learns the outcome and reads the same file."""
    if cli.test_only:
        path = cli.resume
        if path == "auto":
            path = runlog.resumable_checkpoint(named_run_dir(task, cli))
            if path is None:
                raise UserError(f"--test-only --resume auto found no checkpoint in {named_run_dir(task, cli)}.")
        ckpt = read_checkpoint(path)
        told = []
        settings = resolve(task, cli.replace(resume=str(path)), ckpt, told)
        return Start(settings, ckpt, notes=[_loaded(ckpt, told)])
    decision, problem, locks, ckpt = None, None, [], None
    if env.is_main:
        try:
            decision, ckpt = _claim(task, cli, locks)
        except UserError as e:
            problem = str(e)
        except OSError as e:
            problem = (f"The run directory cannot be made or written ({e.strerror or e}: {e.filename}); "
                       "choose another --output-dir.")
        finally:
            if problem is not None or decision is None:
                for lock in locks:
                    lock.release()
    decision, problem = D.broadcast_object(env, (decision, problem))
    if problem:
        raise UserError(problem)
    path, resume, run_dir, continuing, notes = decision
    lock = locks[0] if locks else None
    try:
        if ckpt is None and path is not None:  # the other processes read the file rank 0 chose
            ckpt = read_checkpoint(path)
        settings = resolve(task, cli.replace(resume=resume), ckpt)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return Start(settings, ckpt, Path(run_dir), continuing, lock, notes)


def _claim(task: Task, cli: Settings, locks: list):
    """Rank 0: the directory's lock taken (appended to `locks` at once), then the checkpoint to continue from
    read under it. Returns ((path, resume setting, run directory, continuing, notes), checkpoint)."""
    notes = []

    def lock(run_dir: Path) -> None:
        locks.append(runlog.RunLock(run_dir).claim())
        runlog.check_run_files(run_dir)

    if cli.resume == "auto":  # the same command line for every restart of a cluster job
        run_dir = named_run_dir(task, cli)
        lock(run_dir)
        ckpt = _usable_checkpoint(run_dir, notes)
        if ckpt is None:
            runlog.claim_new_run_dir(run_dir)
        else:
            _check_no_rewind(ckpt, run_dir, notes)
            _restore_missing_best(ckpt, run_dir, notes)
        runlog.remove_stray_temporaries(run_dir)
        path = str(ckpt.path) if ckpt is not None else None
        return (path, path, str(run_dir), ckpt is not None, notes), ckpt
    if cli.resume:
        peek = _read_or_point_to_best(Path(cli.resume))
        named = named_run_dir(task, resolve(task, cli, peek))
        forked = {"output_dir", "run_name"} & cli.explicit and named.resolve() != peek.path.parent.resolve()
        continuing = peek.layout == "ours" and not forked
        run_dir = peek.path.parent if continuing else named
        lock(run_dir)
        if continuing:
            ckpt = read_checkpoint(peek.path)  # as it is now, under the lock
            _check_no_rewind(ckpt, run_dir, notes)
            _restore_missing_best(ckpt, run_dir, notes)
        else:
            runlog.claim_new_run_dir(run_dir)
            ckpt = peek
            if peek.layout == "ours":
                notes.append(f"forking a new run in {run_dir} from {peek.path} ({peek.where()})")
        runlog.remove_stray_temporaries(run_dir)
        return (str(ckpt.path), cli.resume, str(run_dir), continuing, notes), ckpt
    run_dir = named_run_dir(task, cli)
    lock(run_dir)
    finished = _finished_run_of(task, cli, run_dir)
    if finished is not None:  # the same command again: its summary, nothing trained or overwritten
        notes.append(f"{run_dir} holds a finished run of these settings; a new run of them needs another "
                     "--run-name (or --output-dir).")
        return (str(finished.path), str(finished.path), str(run_dir), True, notes), finished
    runlog.claim_new_run_dir(run_dir)
    runlog.remove_stray_temporaries(run_dir)
    return (None, None, str(run_dir), False, notes), None


def _finished_run_of(task: Task, cli: Settings, run_dir: Path) -> Checkpoint | None:
    """The checkpoint of a finished run in `run_dir` made with exactly these settings, or None."""
    path = runlog.resumable_checkpoint(run_dir)
    try:
        ckpt = read_checkpoint(path) if path is not None else None
    except UserError:
        return None
    if ckpt is None or ckpt.layout != "ours" or ckpt.task not in (None, task.name) or ckpt.step \
            or ckpt.position[0] < cli.epochs:
        return None
    recorded = {**_legacy_settings(task), **ckpt.recorded_settings}
    same = all(recorded[k] == v for k, v in cli.items()
               if k in recorded and k in cli.flags and cli.flags[k].kind != INVOCATION)
    return ckpt if same else None


def _loaded(ckpt: Checkpoint, told: list) -> str:
    """What --test-only evaluates: the file, its layout and position, and the settings it gave."""
    layout = "this project's" if ckpt.layout == "ours" else f"the original {ckpt.layout}" \
        if ckpt.layout != "state_dict" else "a bare state dict"
    where = f", {ckpt.where()}" if ckpt.epoch is not None else ""
    best = f", best {ckpt.best_acc1:.2f} %" if ckpt.best_acc1 is not None else ""
    model = "; model: " + ", ".join(told) if told else "; model settings from the command line"
    return f"evaluating {ckpt.path} ({layout} layout{where}{best}){model}"


def _read_or_point_to_best(path: Path) -> Checkpoint:
    """A checkpoint asked for by name; a damaged checkpoint_latest says how to go on from its run's best."""
    try:
        return read_checkpoint(path)
    except UserError as e:
        best = path.parent / runlog.BEST
        if path.name != runlog.LATEST or not best.is_file():
            raise
        raise UserError(f"{e} Its run's {best.name} may still be whole: continue from it with --resume {best} "
                        f"(the damaged file is then kept aside, and what was trained after the best epoch is "
                        f"trained again), or start a new run from it with --resume {best} --run-name NEW.") from None


def _usable_checkpoint(run_dir: Path, notes: list) -> Checkpoint | None:
    """The checkpoint `--resume auto` continues from: checkpoint_latest, or checkpoint_max where the latest is
    missing (a kill between the two saves of a new best epoch) or damaged (kept aside, with a warning)."""
    damaged = []
    for name in (runlog.LATEST, runlog.BEST):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            ckpt = read_checkpoint(path)
        except UserError as e:
            damaged.append((path, e))
            continue
        for bad, error in damaged:
            _set_aside(bad, error, ckpt, notes)
        return ckpt
    if damaged:
        path, error = damaged[0]
        raise UserError(f"{error} No other checkpoint of {run_dir} is readable, so the run cannot go on there; "
                        f"start it anew with another --run-name (or --output-dir).")
    return None


def _set_aside(bad: Path, error: UserError, used: Checkpoint, notes: list) -> None:
    """A damaged checkpoint of the run: renamed out of the way (kept, never deleted), with a warning."""
    aside = bad.with_name(bad.name + ".damaged")
    n = 1
    while aside.exists():
        n += 1
        aside = bad.with_name(f"{bad.name}.damaged{n}")
    os.replace(bad, aside)
    print(f"warning: {error} Continuing from {used.path.name} ({used.where()}): what was trained after it is "
          f"lost and trained again. The damaged file is kept as {aside}.", file=sys.stderr, flush=True)
    notes.append(f"continuing from {used.path} after setting aside the damaged {bad.name}")


def _check_no_rewind(ckpt: Checkpoint, run_dir: Path, notes: list) -> None:
    """Continuing in a run directory from a checkpoint older than its latest would overwrite the later
    epochs (checkpoint_latest, TensorBoard, metrics.jsonl): refused, with the way to fork. A damaged
    latest gives way to the checkpoint asked for."""
    latest = run_dir / runlog.LATEST
    if not latest.exists():
        return
    same = ckpt.path.resolve() == latest.resolve()
    try:
        newer = ckpt if same else read_checkpoint(latest)
    except UserError as e:
        _set_aside(latest, e, ckpt, notes)
        return
    if newer.position > ckpt.position:
        raise UserError(f"Checkpoint {ckpt.path} is from the {ckpt.where()}, but its run's {latest.name} is at the "
                        f"{newer.where()}: continuing there would rewind the run. Resume {latest}, or give "
                        "--run-name (or --output-dir) to start a new run from this checkpoint.")


def _restore_missing_best(ckpt: Checkpoint, run_dir: Path, notes: list) -> None:
    """A kill between the two saves of a new best epoch can leave no checkpoint_max: when the checkpoint
    resumed from holds the best epoch itself (not a mid-epoch one), it becomes checkpoint_max again."""
    best = run_dir / runlog.BEST
    if best.exists() or ckpt.step or ckpt.best_acc1 is None or ckpt.last_acc1 != ckpt.best_acc1:
        return
    tmp = run_dir / f".{best.name}.restore.tmp"
    shutil.copyfile(ckpt.path, tmp)
    os.replace(tmp, best)
    print(f"restored {best} from {ckpt.path} (it holds the best epoch)", flush=True)


def starting_state(start: Start, step_samples: int) -> RunState:
    """Where training begins: a continued run's position and records, or a new run (a fork of a checkpoint
    keeps its position, and starts its own records of accuracy)."""
    state = RunState(start.run_dir)
    ckpt = start.ckpt
    if ckpt is None:
        return state
    state.epoch, state.step = ckpt.position
    state.resumed_from = str(ckpt.path)
    if start.continuing:
        state.best_acc1, state.last_acc1, state.provenance = ckpt.best_acc1, ckpt.last_acc1, list(ckpt.provenance)
    if state.step:
        if ckpt.step_samples != step_samples:
            raise UserError(f"Checkpoint {ckpt.path} stopped in the middle of epoch {state.epoch + 1} with "
                            f"{ckpt.step_samples} samples per step (batch size times processes), this run takes "
                            f"{step_samples}: resume it with the same --batch-size and number of processes.")
        state.epoch_sums, state.rng = ckpt.epoch_sums, ckpt.rng
    return state

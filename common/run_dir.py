"""The run directory: claimed by one run at a time, never rewound, recovered after a kill.

One run owns its directory (`RunLock`: a lock file created exclusively, a stale one taken over).
The directory is claimed before any checkpoint of it is read, so what a run continues from is the
directory's state now, not a moment ago (another run may have been stopping there). Continuing from
a checkpoint older than the directory's latest is refused (it would rewind the run); a damaged
latest next to a readable best gives way to the best, with a warning naming what is lost; a kill
between the two saves of a new best epoch leaves nothing missing; half-written temporaries of
killed saves are removed by the run that holds the lock.
"""
import os
import shutil
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import Checkpoint, read_checkpoint
from .cli import INVOCATION
from .errors import UserError
from .runlog import BEST, LATEST, LOCK, RUN_FILES
from .settings import Settings, legacy_settings, resolve
from .task import Task


def named_run_dir(task: Task, settings: Settings) -> Path:
    return Path(settings.output_dir) / (settings.run_name or task.run_name(settings))


@dataclass
class Claim:
    """Rank 0's decision, which every process learns: the run directory and the checkpoint to start from."""

    run_dir: Path
    checkpoint: Path | None = None  # the file to read (every process reads it)
    resume: str | None = None  # the --resume setting the run continues with
    continuing: bool = False  # in the checkpoint's own run directory
    notes: list = field(default_factory=list)  # what rank 0 prints once the run starts


def claim(task: Task, cli: Settings, locks: list) -> tuple[Claim, Checkpoint | None]:
    """Rank 0: the directory's lock taken (appended to `locks` at once), then the checkpoint to continue from
    read under it. Returns the claim and that checkpoint, read."""
    notes = []

    def lock(run_dir: Path) -> None:
        locks.append(RunLock(run_dir).claim())
        check_run_files(run_dir)

    if cli.resume == "auto":  # the same command line for every restart of a cluster job
        run_dir = named_run_dir(task, cli)
        lock(run_dir)
        ckpt = _usable_checkpoint(run_dir, notes)
        if ckpt is None:
            claim_new_run_dir(run_dir)
        else:
            _check_no_rewind(ckpt, run_dir, notes)
            _restore_missing_best(ckpt, run_dir, notes)
        remove_stray_temporaries(run_dir)
        path = ckpt.path if ckpt is not None else None
        return Claim(run_dir, path, str(path) if path is not None else None, ckpt is not None, notes), ckpt
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
            claim_new_run_dir(run_dir)
            ckpt = peek
            if peek.layout == "ours":
                notes.append(f"forking a new run in {run_dir} from {peek.path} ({peek.state.where()})")
        remove_stray_temporaries(run_dir)
        return Claim(run_dir, ckpt.path, cli.resume, continuing, notes), ckpt
    run_dir = named_run_dir(task, cli)
    lock(run_dir)
    finished = _finished_run_of(task, cli, run_dir)
    if finished is not None:  # the same command again: its summary, nothing trained or overwritten
        notes.append(f"{run_dir} holds a finished run of these settings; a new run of them needs another "
                     "--run-name (or --output-dir).")
        return Claim(run_dir, finished.path, str(finished.path), True, notes), finished
    claim_new_run_dir(run_dir)
    remove_stray_temporaries(run_dir)
    return Claim(run_dir, notes=notes), None


def _finished_run_of(task: Task, cli: Settings, run_dir: Path) -> Checkpoint | None:
    """The checkpoint of a finished run in `run_dir` made with exactly these settings, or None."""
    path = resumable_checkpoint(run_dir)
    try:
        ckpt = read_checkpoint(path) if path is not None else None
    except UserError:
        return None
    if ckpt is None or ckpt.layout != "ours" or ckpt.state.task not in (None, task.name) or ckpt.state.step \
            or ckpt.state.epoch < cli.epochs:
        return None
    recorded = {**legacy_settings(task), **ckpt.state.recorded_settings}
    same = all(cli.flags[k].normalize(recorded[k]) == v for k, v in cli.items()
               if k in recorded and k in cli.flags and cli.flags[k].kind != INVOCATION)
    return ckpt if same else None


def _read_or_point_to_best(path: Path) -> Checkpoint:
    """A checkpoint asked for by name; a damaged checkpoint_latest says how to go on from its run's best."""
    try:
        return read_checkpoint(path)
    except UserError as e:
        best = path.parent / BEST
        if path.name != LATEST or not best.is_file():
            raise
        raise UserError(f"{e} Its run's {best.name} may still be whole: continue from it with --resume {best} "
                        f"(the damaged file is then kept aside, and what was trained after the best epoch is "
                        f"trained again), or start a new run from it with --resume {best} --run-name NEW.") from None


def _usable_checkpoint(run_dir: Path, notes: list) -> Checkpoint | None:
    """The checkpoint `--resume auto` continues from: checkpoint_latest, or checkpoint_max where the latest is
    missing (a kill between the two saves of a new best epoch) or damaged (kept aside, with a warning)."""
    damaged = []
    for name in (LATEST, BEST):
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
    print(f"warning: {error} Continuing from {used.path.name} ({used.state.where()}): what was trained after it "
          f"is lost and trained again. The damaged file is kept as {aside}.", file=sys.stderr, flush=True)
    notes.append(f"continuing from {used.path} after setting aside the damaged {bad.name}")


def _check_no_rewind(ckpt: Checkpoint, run_dir: Path, notes: list) -> None:
    """Continuing in a run directory from a checkpoint older than its latest would overwrite the later
    epochs (checkpoint_latest, TensorBoard, metrics.jsonl): refused, with the way to fork. A damaged
    latest gives way to the checkpoint asked for."""
    latest = run_dir / LATEST
    if not latest.exists():
        return
    same = ckpt.path.resolve() == latest.resolve()
    try:
        newer = ckpt if same else read_checkpoint(latest)
    except UserError as e:
        _set_aside(latest, e, ckpt, notes)
        return
    if newer.state.position > ckpt.state.position:
        raise UserError(f"Checkpoint {ckpt.path} is from the {ckpt.state.where()}, but its run's {latest.name} is "
                        f"at the {newer.state.where()}: continuing there would rewind the run. Resume {latest}, or "
                        "give --run-name (or --output-dir) to start a new run from this checkpoint.")


def _restore_missing_best(ckpt: Checkpoint, run_dir: Path, notes: list) -> None:
    """A kill between the two saves of a new best epoch can leave no checkpoint_max: when the checkpoint
    resumed from holds the best epoch itself (not a mid-epoch one), it becomes checkpoint_max again."""
    best = run_dir / BEST
    state = ckpt.state
    if best.exists() or state.step or state.best_acc1 is None or state.last_acc1 != state.best_acc1:
        return
    tmp = run_dir / f".{best.name}.restore.tmp"
    shutil.copyfile(ckpt.path, tmp)
    os.replace(tmp, best)
    print(f"restored {best} from {ckpt.path} (it holds the best epoch)", flush=True)


def check_run_files(run_dir: Path) -> None:
    """Refuse a run directory where one of the run's files is a folder, a link or another odd thing:
    writing through it would fail halfway through the run, or land outside the directory."""
    for name in RUN_FILES:
        path = Path(run_dir) / name
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a link" if stat.S_ISLNK(mode) else "not a regular file"
            raise UserError(f"{path} is {kind}, where the run keeps its {name}; move it away, or choose another "
                            "--output-dir or --run-name.")


def checkpoints_in(run_dir: Path) -> list[str]:
    return sorted(p.name for p in Path(run_dir).glob("checkpoint_*.pth"))


def resumable_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a run directory continues from: checkpoint_latest, or, where a kill came between
    the two saves of a new best epoch (checkpoint_max is written first), checkpoint_max."""
    for name in (LATEST, BEST):
        if (Path(run_dir) / name).is_file():
            return Path(run_dir) / name
    return None


def claim_new_run_dir(run_dir: Path) -> Path:
    """The directory of a new run; one that already holds checkpoints is refused, never overwritten."""
    run_dir = Path(run_dir)
    found = checkpoints_in(run_dir) if run_dir.is_dir() else []
    if found:
        resume = resumable_checkpoint(run_dir) or run_dir / found[0]
        raise UserError(f"Run directory {run_dir} already holds {', '.join(found)}; continue it with "
                        f"--resume {resume} (or --resume auto), or choose another --output-dir or --run-name.")
    return run_dir


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def holder_is_gone(holder: str) -> bool:
    """Whether a lock's 'host pid' names a process of this host that no longer runs (another host's
    processes cannot be asked: they count as alive)."""
    import socket

    host, _, pid = holder.partition(" ")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    # A number no process can have (a damaged or crafted lock) names no running process.
    return len(pid) > 10 or not 0 < int(pid) <= 2**31 - 1 or not _process_alive(int(pid))


class RunLock:
    """One run per directory: a lock file created exclusively (host and PID inside), removed at exit.

    A lock left by a process that is gone (killed -9, a crashed node on this host) is taken
    over with a warning; a live one, or one from another host, makes the claim fail. A run that
    ends before writing anything (missing data, say) leaves no directory behind.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.held = False
        self.created: list[Path] = []  # the folders the claim made, innermost first

    def claim(self) -> "RunLock":
        import socket

        missing = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.created = missing
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                host, _, pid = holder.partition(" ")
                if holder_is_gone(holder):
                    print(f"warning: {self.path} was left by process {pid}, which is gone; taking it over.",
                          file=sys.stderr, flush=True)
                    self.path.unlink(missing_ok=True)
                    continue
                raise UserError(f"Run directory {self.path.parent} is in use by process {pid or '?'} on "
                                f"{host or '?'} ({self.path}); wait for that run to end, or choose another "
                                "--output-dir or --run-name.") from None
            with os.fdopen(fd, "w") as f:
                f.write(me + "\n")
            self.held = True
            return self
        raise UserError(f"Could not claim {self.path}; another run is starting there.")

    def _holder(self) -> str:
        try:
            with self.path.open("rb") as f:  # 'host pid': a few dozen bytes, whatever the file holds
                return f.read(512).decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
            for folder in self.created:  # still empty: the run wrote nothing
                try:
                    folder.rmdir()
                except OSError:
                    break


def remove_stray_temporaries(run_dir: Path) -> list[str]:
    """Half-written checkpoints of killed saves (`.checkpoint_*.tmp`): only the run holding the lock calls this."""
    removed = []
    for tmp in Path(run_dir).glob(".checkpoint_*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp.name)
    return removed

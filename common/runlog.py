"""Run directories: one per run, holding args.txt, TensorBoard events, metrics.jsonl, summary.json
and the checkpoints; one run owns its directory at a time (RunLock)."""
import json
import math
import os
import shlex
import stat
import sys
from pathlib import Path

from .errors import UserError

LATEST = "checkpoint_latest.pth"
BEST = "checkpoint_max.pth"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
ARGS = "args.txt"
LOCK = ".run.lock"
# The files a run writes by these names: each must be a regular file where it exists.
RUN_FILES = (ARGS, METRICS, SUMMARY, LATEST, BEST, "code.diff")


def strict_json(record: dict) -> str:
    """JSON that every parser reads: NaN and infinities become null (with a warning on stderr)."""
    bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        print(f"warning: {', '.join(bad)} not finite; written as null.", file=sys.stderr, flush=True)
        record = {k: (None if k in bad else v) for k, v in record.items()}
    return json.dumps(record)


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


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in sys.argv)


def write_args(run_dir: Path, settings: dict, resumed_from: str | None, task: str,
               provenance: dict | None = None) -> None:
    """args.txt: the task and settings as JSON, the command line, and a `# provenance: {...}` line (code,
    libraries, machine); a resume appends its own three lines."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ARGS
    record = json.dumps({"task": task, **settings}, sort_keys=True, default=str)
    made = f"# provenance: {json.dumps(provenance, sort_keys=True)}\n" if provenance is not None else ""
    if resumed_from is None or not path.exists():
        origin = f"# started from {resumed_from}\n" if resumed_from is not None else ""
        path.write_text(f"{origin}{record}\n{command_line()}\n{made}")
    else:
        with path.open("a") as f:
            f.write(f"# resumed from {resumed_from}\n{record}\n{command_line()}\n{made}")


def write_code_diff(run_dir: Path, diff: str, segment: int) -> Path:
    """The uncommitted changes the run's code had: code.diff for its first segment, code.<n>.diff for later ones."""
    path = Path(run_dir) / ("code.diff" if segment == 1 else f"code.{segment}.diff")
    _atomic_write(path, diff)
    return path


def open_writer(run_dir: Path, epochs_done: int):
    """A TensorBoard writer whose steps are epochs numbered from 1; on resume, the steps after the checkpoint's
    epoch (those replayed) are purged on reading."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir), purge_step=epochs_done + 1 if epochs_done > 0 else None)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def truncate_metrics(run_dir: Path, epochs_done: int) -> None:
    """Keep the metrics of the first `epochs_done` epochs (numbered from 1): a resumed run appends from there,
    never twice."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("epoch", epochs_done + 1) <= epochs_done:
                kept.append(line)
        except (ValueError, AttributeError):
            continue  # a line cut by a kill: the epoch is replayed
    _atomic_write(path, "".join(f"{line}\n" for line in kept))


def append_metrics(run_dir: Path, line: str) -> None:
    """metrics.jsonl: one JSON object per epoch with every scalar logged to TensorBoard."""
    with (Path(run_dir) / METRICS).open("a") as f:
        f.write(line + "\n")


def write_summary(run_dir: Path, text: str) -> None:
    """summary.json: the run's final JSON line, written atomically."""
    _atomic_write(Path(run_dir) / SUMMARY, text + "\n")


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
    return host == socket.gethostname() and pid.isdigit() and not _process_alive(int(pid))


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
            return self.path.read_text().strip()
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

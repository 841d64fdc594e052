"""The files a run writes into its directory: args.txt (settings, command line, provenance), the code
diff, TensorBoard events, metrics.jsonl and summary.json. (The checkpoints are `common.checkpoint`'s;
who may write into a directory is `common.run_dir`'s.)"""
import json
import math
import os
import shlex
import sys
from pathlib import Path

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


def shell_word(text: str) -> str:
    """`text` as one shell word on one line: quoted as usual, or, where it holds a newline or another character
    that is not printable, in bash's $'...' form with that character escaped (it cannot start a line of its
    own in a run file, nor forge one)."""
    if text.isprintable():
        return shlex.quote(text)
    out = []
    for c in text:
        if c in "\\'":
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        else:
            code = ord(c)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "$'" + "".join(out) + "'"


def command_line() -> str:
    return " ".join(shell_word(a) for a in sys.argv)


def write_args(run_dir: Path, settings: dict, resumed_from: str | None, task: str,
               provenance: dict | None = None) -> None:
    """args.txt: the task and settings as JSON, the command line, and a `# provenance: {...}` line (code,
    libraries, machine); a resume appends its own three lines. Each is one line whatever the values hold
    (JSON escapes, the command line is shell-quoted with $'...' where needed)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / ARGS
    record = json.dumps({"task": task, **settings}, sort_keys=True, default=str)
    made = f"# provenance: {json.dumps(provenance, sort_keys=True)}\n" if provenance is not None else ""
    source = shell_word(str(resumed_from)) if resumed_from is not None and not str(resumed_from).isprintable() \
        else resumed_from
    if resumed_from is None or not path.exists():
        origin = f"# started from {source}\n" if resumed_from is not None else ""
        path.write_text(f"{origin}{record}\n{command_line()}\n{made}")
    else:
        with path.open("a") as f:
            f.write(f"# resumed from {source}\n{record}\n{command_line()}\n{made}")


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


def write_test_only_scalars(ckpt, scalars: dict) -> Path | None:
    """--test-only's scalars (--spike-stats) in the TensorBoard events of the run the checkpoint belongs to, at
    its epoch (numbered from 1, as the run's own steps), in an events file of their own; None (nothing written)
    for a file outside a run directory, such as a released checkpoint."""
    if ckpt.path is None or not scalars:
        return None
    run_dir = Path(ckpt.path).parent
    if not (run_dir / ARGS).is_file() or not any(run_dir.glob("events.out.tfevents.*")):
        return None
    from torch.utils.tensorboard import SummaryWriter

    step = ckpt.state.epoch if ckpt.epoch_known else 0
    with SummaryWriter(log_dir=str(run_dir), filename_suffix=".test_only") as writer:
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, step)
    return run_dir


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



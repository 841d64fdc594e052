"""Run directories: one per run, holding args.txt, TensorBoard events and the checkpoints."""
import json
import os
import shlex
import sys
from argparse import Namespace
from pathlib import Path

from common.errors import UserError

LATEST = "checkpoint_latest.pth"
BEST = "checkpoint_max.pth"


def checkpoints_in(run_dir: Path) -> list[str]:
    return sorted(p.name for p in Path(run_dir).glob("checkpoint_*.pth"))


def claim_new_run_dir(run_dir: Path) -> Path:
    """The directory of a new run; one that already holds checkpoints is refused, never overwritten."""
    run_dir = Path(run_dir)
    found = checkpoints_in(run_dir) if run_dir.is_dir() else []
    if found:
        raise UserError(f"Run directory {run_dir} already holds {', '.join(found)}; continue it with "
                        f"--resume {run_dir / LATEST}, or choose another --output-dir or --run-name.")
    return run_dir


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in sys.argv)


def write_args(run_dir: Path, args: Namespace, resumed_from: str | None, task: str) -> None:
    """args.txt: the task and parsed arguments as JSON, then the command line; a resume appends its own."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "args.txt"
    settings = {k: v for k, v in vars(args).items() if k != "explicit"}
    record = json.dumps({"task": task, **settings}, sort_keys=True, default=str)
    if resumed_from is None or not path.exists():
        path.write_text(f"{record}\n{command_line()}\n")
    else:
        with path.open("a") as f:
            f.write(f"# resumed from {resumed_from}\n{record}\n{command_line()}\n")


def open_writer(run_dir: Path, start_epoch: int):
    """A TensorBoard writer; on resume, events after the checkpoint's epoch are purged on reading."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir), purge_step=start_epoch if start_epoch > 0 else None)


METRICS = "metrics.jsonl"
SUMMARY = "summary.json"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def truncate_metrics(run_dir: Path, start_epoch: int) -> None:
    """Keep the metrics of epochs before `start_epoch`: a resumed run appends from there, never twice."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("epoch", start_epoch) < start_epoch:
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

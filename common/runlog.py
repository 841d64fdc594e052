"""Run directories: one per run, holding args.txt, TensorBoard events and the checkpoints."""
import json
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

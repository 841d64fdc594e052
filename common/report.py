"""What an invocation says and records at its start and its end: training and --test-only alike, rank 0 only.

At the start: the notes of how the starting point was found (a fork, a damaged file set aside, a
finished run, the file --test-only evaluates), the lines saying where it starts, and for training
the record of what made this segment (its provenance joins the run's, args.txt gets its lines,
uncommitted changes are kept as code.diff, other code or libraries than the last segment's are
said). At the end: one JSON line, the last line of the output, kept as summary.json in a run
directory.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

from . import provenance, runlog
from .context import Context
from .run_state import RunState
from .runlog import strict_json


@dataclass(frozen=True)
class Made:
    """What made this invocation (rank 0): its provenance record and, with a modified tree, the diff."""

    record: dict | None = None
    diff: str | None = None


def made_here(ctx: Context) -> Made:
    if not ctx.is_main:
        return Made()
    code, diff = provenance.code_state()
    return Made(provenance.segment(ctx.device, ctx.env.world_size, code), diff)


def summary(state: RunState, run_dir: Path) -> dict:
    """A training run's summary: where it is, how far, its accuracies and what made each segment."""
    return {"run_dir": str(run_dir), "epochs_done": state.epoch, "epochs": state.settings.get("epochs"),
            "best_test_acc1": state.best_acc1,
            "last_test_acc1": state.last_acc1, "provenance": state.provenance}


class Report:
    def __init__(self, ctx: Context, notes: list[str], made: Made):
        self.ctx, self.notes, self.made = ctx, notes, made

    def opening(self, *lines: str) -> None:
        """The starting point's notes, then `lines`."""
        if self.ctx.is_main:
            for line in (*self.notes, *lines):
                print(line, flush=True)

    def record_start(self, state: RunState, run_dir: Path, resumed_from: str | None) -> None:
        """This segment's provenance joins the run's (a change of code or libraries is said), its diff is kept,
        and args.txt gets the settings, the command line and the provenance."""
        if not self.ctx.is_main:
            return
        made = self.made
        if state.provenance:
            changed = provenance.changes(state.provenance[-1], made.record)
            if changed:
                print(f"warning: resuming {resumed_from} with other code or libraries than its last segment "
                      f"ran with: {', '.join(changed)}.", file=sys.stderr, flush=True)
        state.provenance = [*state.provenance, made.record]
        if made.diff:
            path = runlog.write_code_diff(run_dir, made.diff, len(state.provenance))
            print(f"the code has uncommitted changes: they are kept in {path}", flush=True)
        runlog.write_args(run_dir, state.settings, resumed_from, state.task, made.record)

    def closing(self, record: dict, run_dir: Path | None = None, note: str | None = None) -> dict:
        """The last line: `record` as JSON (after `note`), kept as run_dir/summary.json where there is one.
        --test-only's record gets this invocation's provenance."""
        if run_dir is None:
            record = {**record, "provenance": self.made.record}
        if self.ctx.is_main:
            if note:
                print(note, flush=True)
            print(strict_json(record), flush=True)
            if run_dir is not None:
                runlog.write_summary(run_dir, strict_json(record))
        return record

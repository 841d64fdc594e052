"""Reproduce the paper row by row: its commands, cluster jobs for them, and where your runs stand.

    python scripts/reproduce.py list                          # every row: tables, the order sweep
    python scripts/reproduce.py command scifar10_psn          # its exact command, on one GPU
    python scripts/reproduce.py command imagenet_sew_resnet18 --gpus 8 --data-root /datasets
    python scripts/reproduce.py slurm 'cifar10dvs_*' --gpus 2 > dvs.sh && sbatch dvs.sh
    python scripts/reproduce.py status runs                   # not started / running / stopped / finished
    python scripts/reproduce.py table sequential_cifar        # the table of rows that task's README holds

Rows come from paper/experiments.toml (common/experiments.py). Commands from `slurm` and
`command --runs DIR` put each row's run in DIR/<task>/<id> with `--resume auto`, so the same
line continues a run that a job's time limit or a requeue stopped (SIGUSR1 two minutes before
the limit writes a mid-epoch checkpoint).
"""
import argparse
import json
import math
import os
import re
import shlex
import stat
import sys
from pathlib import Path

from common import runlog
from common.experiments import TASKS, RegistryError, Row, load, select
from common.run_dir import checkpoints_in, holder_is_gone

MAX_FILE = 1 << 20  # metrics.jsonl and summary.json of a run: far below a MiB


def fmt(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def list_rows(rows: list[Row]) -> str:
    out = ["| id | table | neuron | order | T | GPUs (authors') | paper |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r.id} | {r.table} | {r.neuron} | {r.order or '—'} | {r.T} | {r.gpus} | {fmt(r.paper)} |")
    return "\n".join(out)


def readme_table(rows: list[Row], task: str) -> str:
    """The rows of one task's README: a row per experiment of the paper's tables (the order sweep is listed by
    `list`), with its exact single-GPU command over datasets under D."""
    out = ["| row | what | paper | command |", "| --- | --- | --- | --- |"]
    for r in rows:
        if r.task != task or (r.sweep and r.order != 32):
            continue
        what = f"{r.table}: {r.neuron}" + (f", order {r.order}" if r.order else "") + f", T = {r.T}"
        out.append(f"| {r.id} | {what} | {fmt(r.paper)} | `{shlex.join(r.command(1, 'D', 'W'))}` |")
    return "\n".join(out)


def slurm_script(rows: list[Row], gpus: int, runs: str, data_root: str, weights_dir: str, time_limit: str,
                 partition: str | None) -> str:
    """One SLURM array job, an element per row: a signal two minutes before the limit, requeued, --resume auto."""
    commands = [shlex.join(r.command(gpus, data_root, weights_dir, runs, stops=True)) for r in rows]
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name=psn-repro --gres=gpu:{gpus} --time={time_limit} --signal=USR1@120 --requeue",
             f"#SBATCH --array=0-{len(rows) - 1} --output=slurm-%A_%a.out"]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    lines += ["# Rows of paper/experiments.toml (python scripts/reproduce.py list). Each element continues its run",
              f"# directory ({runs}/<task>/<id>) where an earlier job of the chain stopped: the same command every time.",
              f"cd {shlex.quote(str(Path(__file__).resolve().parents[1]))}", "rows=("]
    lines += [f"  {shlex.quote(c)}  # {r.id}" for r, c in zip(rows, commands)]
    lines += [")", 'eval "srun ${rows[$SLURM_ARRAY_TASK_ID]}"', ""]
    return "\n".join(lines)


def _check_script_values(args) -> None:
    """Values that go into the batch script's lines: each must stay on its line and mean what it says."""
    if not re.fullmatch(r"[0-9]{1,4}(-[0-9]{1,2})?(:[0-9]{1,2}){0,2}", args.time):
        raise RegistryError(f"--time {args.time!r} is not a SLURM time limit (minutes, HH:MM:SS, D-HH:MM:SS).")
    if args.partition is not None and not re.fullmatch(r"[A-Za-z0-9_.,-]{1,64}", args.partition):
        raise RegistryError(f"--partition {args.partition!r} is not a partition name (letters, digits, _ . , -).")
    for flag, value in (("--runs", args.runs), ("--data-root", args.data_root), ("--weights-dir", args.weights_dir)):
        if not value or not value.isprintable():
            raise RegistryError(f"{flag} {value!r} must be a printable path (no newline).")


# --- status ------------------------------------------------------------------------------------

def _read_small(path: Path) -> str | None:
    """A regular file's text, at most MAX_FILE bytes; None when absent, odd or unreadable."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with path.open("rb") as f:
            return f.read(MAX_FILE).decode("utf-8", "replace")
    except OSError:
        return None


def _metrics(run_dir: Path) -> list[dict]:
    records = []
    for line in (_read_small(run_dir / runlog.METRICS) or "").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue  # a line cut by a kill
        epoch = record.get("epoch") if isinstance(record, dict) else None
        if isinstance(epoch, int) and not isinstance(epoch, bool) and 0 <= epoch <= 10**6:
            records.append({k: v for k, v in record.items() if not isinstance(v, float) or math.isfinite(v)})
    return records


def _lock_holder(run_dir: Path) -> str | None:
    """'host pid' of a live run holding the directory; None when no run holds it (or its process is gone)."""
    holder = (_read_small(run_dir / runlog.LOCK) or "").strip()
    return holder if holder and not holder_is_gone(holder) else None


def row_status(row: Row, runs: Path) -> dict:
    run_dir = runs / row.task / row.id
    metrics = _metrics(run_dir)
    accuracies = [m["test/acc1"] for m in metrics if isinstance(m.get("test/acc1"), (int, float))
                  and 0 <= m["test/acc1"] <= 100]
    done = max((m["epoch"] for m in metrics), default=0)
    best = max(accuracies) if accuracies else None
    holder = _lock_holder(run_dir)
    status = {"id": row.id, "run_dir": str(run_dir), "epochs_done": done, "epochs": row.epochs, "best": best,
              "paper": row.paper, "difference": None if best is None else best - row.paper}
    if holder is not None:
        times = [m["train/epoch_time_s"] for m in metrics if isinstance(m.get("train/epoch_time_s"), (int, float))
                 and 0 <= m["train/epoch_time_s"] <= 10**7]  # a damaged line's 1e308 would make the ETA infinite
        eta = (sum(times) / len(times)) * (row.epochs - done) if times else None
        status.update(state="running", where=holder, eta_s=eta)
    elif not run_dir.is_dir() or not checkpoints_in(run_dir):
        status.update(state="not started" if not metrics else "stopped")
    elif done >= row.epochs:
        status.update(state="finished")
    else:
        status.update(state="stopped")
    return status


def status_table(statuses: list[dict]) -> str:
    out = ["| row | state | epochs | best | paper | best - paper | run |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in statuses:
        state = s["state"]
        if state == "running":
            eta = s.get("eta_s")
            state += f" ({s['where']}" + (f", ETA {int(eta // 3600)}:{int(eta // 60 % 60):02d})" if eta else ")")
        diff = "—" if s["difference"] is None else f"{s['difference']:+.2f}"
        out.append(f"| {s['id']} | {state} | {s['epochs_done']}/{s['epochs']} | {fmt(s['best'])} | {fmt(s['paper'])} | "
                   f"{diff} | {s['run_dir']} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True)
    sub.add_parser("list", help="every row of the paper's tables and sweep")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-root", default="./data", help="datasets below it: CIFAR10, CIFAR100, CIFAR10DVS, ImageNet")
    common.add_argument("--weights-dir", default="./checkpoints/torchvision",
                        help="torchvision's ImageNet ResNet weights for the ImageNet rows' --load")
    command = sub.add_parser("command", parents=[common], help="a row's exact command",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    command.add_argument("row")
    command.add_argument("--gpus", type=int, default=1, help="processes on this machine (torchrun when above 1)")
    command.add_argument("--runs", default=None, help="put the run in RUNS/<task>/<id>, with --resume auto")
    slurm = sub.add_parser("slurm", parents=[common], help="a SLURM array job script for rows (ids, tables, patterns)",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    slurm.add_argument("rows", nargs="+")
    slurm.add_argument("--gpus", type=int, default=None, help="GPUs per job (default: the authors' count, which the "
                                                              "rows must share)")
    slurm.add_argument("--runs", default="runs", help="run directories: RUNS/<task>/<id>")
    slurm.add_argument("--time", default="24:00:00", help="time limit of each job; a chain of jobs continues the run")
    slurm.add_argument("--partition", default=None)
    table = sub.add_parser("table", help="a task's rows as the Markdown table its README holds")
    table.add_argument("task", choices=TASKS)
    status = sub.add_parser("status", help="where each row's run stands, beside the paper",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    status.add_argument("runs_dir")
    status.add_argument("rows", nargs="*", help="rows to show (default: every row that has a run, or all with --all)")
    status.add_argument("--all", action="store_true", help="also the rows not started")
    status.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    args = p.parse_args(argv)
    try:
        rows = load()
        if args.verb == "list":
            print(list_rows(rows))
        elif args.verb == "table":
            print(readme_table(rows, args.task))
        elif args.verb == "command":
            row = select(rows, [args.row])
            if len(row) != 1:
                raise RegistryError(f"{args.row!r} names {len(row)} rows; give one id.")
            if args.gpus < 1:
                raise RegistryError("--gpus must be at least 1.")
            print(shlex.join(row[0].command(args.gpus, args.data_root, args.weights_dir, args.runs,
                                            stops=args.gpus > 1)))
        elif args.verb == "slurm":
            _check_script_values(args)
            chosen = select(rows, args.rows)
            gpus = args.gpus if args.gpus is not None else chosen[0].gpus
            if args.gpus is None and len({r.gpus for r in chosen}) > 1:
                raise RegistryError("These rows ran on different numbers of GPUs "
                                    f"({', '.join(sorted({f'{r.id}: {r.gpus}' for r in chosen}))}); give --gpus, or "
                                    "write one script per group.")
            if gpus < 1:
                raise RegistryError("--gpus must be at least 1.")
            print(slurm_script(chosen, gpus, args.runs, args.data_root, args.weights_dir, args.time, args.partition))
        else:
            runs = Path(args.runs_dir)
            if not runs.is_dir():
                raise RegistryError(f"{runs} is not a folder.")
            chosen = select(rows, args.rows) if args.rows else rows
            statuses = [row_status(r, runs) for r in chosen]
            if not args.rows and not args.all:
                statuses = [s for s in statuses if s["state"] != "not started"]
            if args.json:
                for s in statuses:
                    print(json.dumps(s))
            else:
                print(status_table(statuses) if statuses else f"No run of a paper row under {runs} yet "
                      "(--all lists every row).")
    except RegistryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

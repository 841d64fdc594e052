"""Reproduce the paper row by row: its commands, cluster jobs for them, and where your runs stand.

    python scripts/reproduce.py list                          # every row: tables, the order sweep
    python scripts/reproduce.py command scifar10_psn          # its exact command, on the authors' GPU count
    python scripts/reproduce.py command imagenet_sew_resnet18 --gpus 2 --data-root /datasets   # 2 GPUs x 4 steps
    python scripts/reproduce.py slurm 'cifar10dvs_*' > dvs.sh && sbatch dvs.sh
    python scripts/reproduce.py slurm imagenet_sew_resnet34 --nodes 2 --gpus 4 > in34.sh && sbatch in34.sh
    python scripts/reproduce.py status runs                   # not started / running / stopped / finished
    python scripts/reproduce.py table sequential_cifar        # the table of rows that task's README holds

Rows come from paper/experiments.toml (common/experiments.py). Every command keeps its row's recipe on any
number of GPUs and nodes: the authors' global batch, per-BatchNorm batch and learning rate. Fewer processes
than the authors' accumulate gradients (--accum-steps); more are refused unless --accept-bn-batch says that
smaller BatchNorm batches are wanted. What was chosen is said on stderr, one line per row.

Commands from `slurm` and `command --runs DIR` put each row's run in DIR/<task>/<id> with `--resume auto`, so
the same line continues a run that a job's time limit stopped: SIGUSR1 three minutes before the limit writes
a mid-epoch checkpoint, and the job requeues itself (`scontrol requeue`, at most --max-requeues times) when
its run stopped before its end; a finished or failed run is not requeued.
"""
import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from common import runlog
from common.experiments import ROOT, TASKS, Launch, RegistryError, Row, launcher, load, plan, select
from common.run_dir import checkpoints_in
from common.run_logs import live_lock_holder, read_small, summary_of

MAX_REQUEUES = 100  # requeues of one job: room for months of 24-hour jobs; a loop of stops ends there
SIGNAL_BEFORE_LIMIT_S = 180  # the stop (10 steps at most under DDP), the save, the requeue
RENDEZVOUS_PORTS = (20000, 20000)  # a multi-node job's c10d port: the first + its job id modulo the second


def fmt(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def list_rows(rows: list[Row]) -> str:
    out = ["| id | table | neuron | order | T | GPUs (authors') | paper |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r.id} | {r.table} | {r.neuron} | {r.order or '—'} | {r.T} | {r.gpus} | {fmt(r.paper)} |")
    return "\n".join(out)


def readme_table(rows: list[Row], task: str) -> str:
    """The rows of one task's README: a row per experiment of the paper's tables (the order sweep is listed by
    `list`), with its exact command on the authors' GPU count over datasets under D."""
    out = ["| row | what | paper | command |", "| --- | --- | --- | --- |"]
    for r in rows:
        if r.task != task or (r.sweep and r.order != 32):
            continue
        what = f"{r.table}: {r.neuron}" + (f", order {r.order}" if r.order else "") + f", T = {r.T}"
        out.append(f"| {r.id} | {what} | {fmt(r.paper)} | `{shlex.join(r.command(None, 'D', 'W'))}` |")
    return "\n".join(out)


def slurm_script(launches: list[Launch], runs: str, data_root: str, weights_dir: str, time_limit: str,
                 partition: str | None, max_requeues: int = MAX_REQUEUES, extra: tuple[str, ...] = ()) -> str:
    """One SLURM array job, an element per row: a signal three minutes before the limit, --resume auto, and a
    requeue of the element while its run stopped before its end (at most `max_requeues` times)."""
    first = launches[0]
    nodes, gpus = first.nodes, first.gpus
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name=psn-repro --nodes={nodes} --ntasks-per-node=1 --gres=gpu:{gpus} --time={time_limit}",
             f"#SBATCH --signal=USR1@{SIGNAL_BEFORE_LIMIT_S} --requeue --array=0-{len(launches) - 1} "
             "--output=slurm-%A_%a.out"]
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    lines += ["# Rows of paper/experiments.toml (python scripts/reproduce.py list), one per array element, each with",
              "# its authors' global batch, per-BatchNorm batch and lr. An element continues its run directory",
              f"# ({runs}/<task>/<id>) where the chain's last job stopped: the same command every time. When the",
              "# time limit's signal stopped the run before its end, the element requeues itself (at most",
              f"# {max_requeues} times); a finished or failed run is not requeued.",
              "set -u",
              f"cd {shlex.quote(str(ROOT))}",
              'case "$SLURM_ARRAY_TASK_ID" in']
    for i, launch in enumerate(launches):
        words = launch.row.training(launch, data_root, weights_dir, runs, extra)
        lines += [f"  {i}) id={launch.row.id}; row=({shlex.join(words)}) ;;",
                  f"     # {launch.describe()}"]
    lines += ['  *) echo "psn-repro: no row for array element $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;', "esac"]
    if nodes > 1:
        lines += ["# One torchrun per node; they meet at the first node (c10d), which gives each its node rank.",
                  'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                  f"port=$(({RENDEZVOUS_PORTS[0]} + SLURM_JOB_ID % {RENDEZVOUS_PORTS[1]}))",
                  f"launch=({shlex.join(launcher(first, True, ('HEAD', 'ID')))})"
                  .replace("--rdzv-endpoint=HEAD", '--rdzv-endpoint="$head:$port"')
                  .replace("--rdzv-id=ID", '--rdzv-id="psn-$SLURM_JOB_ID"')]
    else:
        lines.append(f"launch=({shlex.join(launcher(first, True))})")
    lines += ["started=$(date +%s)",
              f'srun --nodes={nodes} --ntasks-per-node=1 "${{launch[@]}}" "${{row[@]}}"',
              f'ended=$(python scripts/reproduce.py ended "$id" --runs {shlex.quote(runs)} --since "$started")',
              "segment=$((${SLURM_RESTART_COUNT:-0} + 1))",
              'case "$ended" in',
              '  finished) echo "psn-repro: $id is finished (job segment $segment)." ;;',
              f'  stopped) if [ "$segment" -le {max_requeues} ]; then',
              '             echo "psn-repro: $id stopped before its end (job segment $segment): requeued to continue."',
              '             scontrol requeue "$SLURM_JOB_ID"',
              "           else",
              f'             echo "psn-repro: $id stopped before its end, but this job was requeued {max_requeues} '
              'times already (--max-requeues): submit it again to go on." >&2; exit 1',
              "           fi ;;",
              '  *) echo "psn-repro: $id ${ended:-could not be checked}: not requeued (its output above says why)."'
              " >&2; exit 1 ;;",
              "esac", ""]
    return "\n".join(lines)


def ended(row: Row, runs: Path, since: float) -> str:
    """How a job's run of `row` ended, from its run directory: 'finished' (all its epochs done), 'stopped' (a
    signal stopped it before its end, after a checkpoint, in this job: summary.json written since `since`),
    or 'failed' (anything else: a crash, a stop before any checkpoint, nothing written in this job)."""
    run_dir = runs / row.task / row.id
    try:
        if os.stat(run_dir / runlog.SUMMARY).st_mtime < since:
            return "failed"
    except OSError:
        return "failed"
    summary = summary_of(run_dir) or {}
    done, epochs = _count(summary.get("epochs_done")), _count(summary.get("epochs", row.epochs))
    if done is None or epochs is None:
        return "failed"
    if done >= epochs and "stopped" not in summary:
        return "finished"
    return "stopped" if "stopped" in summary and done < epochs else "failed"


def _check_script_values(args) -> None:
    """Values that go into the batch script's lines: each must stay on its line and mean what it says."""
    if not re.fullmatch(r"[0-9]{1,4}(-[0-9]{1,2})?(:[0-9]{1,2}){0,2}", args.time):
        raise RegistryError(f"--time {args.time!r} is not a SLURM time limit (minutes, HH:MM:SS, D-HH:MM:SS).")
    if args.partition is not None and not re.fullmatch(r"[A-Za-z0-9_.,-]{1,64}", args.partition):
        raise RegistryError(f"--partition {args.partition!r} is not a partition name (letters, digits, _ . , -).")
    if not 0 <= args.max_requeues <= 10**4:
        raise RegistryError(f"--max-requeues {args.max_requeues} must lie in 0..10000.")
    for flag, value in (("--runs", args.runs), ("--data-root", args.data_root), ("--weights-dir", args.weights_dir)):
        if not value or not value.isprintable():
            raise RegistryError(f"{flag} {value!r} must be a printable path (no newline).")


# --- status ------------------------------------------------------------------------------------

def _metrics(run_dir: Path) -> list[dict]:
    records = []
    for line in (read_small(run_dir / runlog.METRICS) or "").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue  # a line cut by a kill
        epoch = record.get("epoch") if isinstance(record, dict) else None
        if isinstance(epoch, int) and not isinstance(epoch, bool) and 0 <= epoch <= 10**6:
            records.append({k: v for k, v in record.items() if not isinstance(v, float) or math.isfinite(v)})
    return records


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10**6 else None


def _segments(run_dir: Path) -> int:
    """How many invocations trained the run: args.txt has a `# provenance:` line for each."""
    return sum(line.startswith("# provenance: ") for line in (read_small(run_dir / runlog.ARGS) or "").splitlines())


def row_status(row: Row, runs: Path) -> dict:
    run_dir = runs / row.task / row.id
    metrics = _metrics(run_dir)
    accuracies = [m["test/acc1"] for m in metrics if isinstance(m.get("test/acc1"), (int, float))
                  and 0 <= m["test/acc1"] <= 100]
    done = max((m["epoch"] for m in metrics), default=0)
    epochs = _count((summary_of(run_dir) or {}).get("epochs")) or row.epochs  # the run's own (--extra: --epochs)
    best = max(accuracies) if accuracies else None
    holder = live_lock_holder(run_dir)
    status = {"id": row.id, "run_dir": str(run_dir), "epochs_done": done, "epochs": epochs,
              "segments": _segments(run_dir), "best": best, "paper": row.paper,
              "difference": None if best is None else best - row.paper}
    if holder is not None:
        times = [m["train/epoch_time_s"] for m in metrics if isinstance(m.get("train/epoch_time_s"), (int, float))
                 and 0 <= m["train/epoch_time_s"] <= 10**7]  # a damaged line's 1e308 would make the ETA infinite
        eta = (sum(times) / len(times)) * (epochs - done) if times else None
        status.update(state="running", where=holder, eta_s=eta)
    elif not run_dir.is_dir() or not checkpoints_in(run_dir):
        status.update(state="not started" if not metrics else "stopped")
    elif done >= epochs:
        status.update(state="finished")
    else:
        status.update(state="stopped")
    return status


def status_table(statuses: list[dict]) -> str:
    out = ["| row | state | epochs | segments | best | paper | best - paper | run |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in statuses:
        state = s["state"]
        if state == "running":
            eta = s.get("eta_s")
            state += f" ({s['where']}" + (f", ETA {int(eta // 3600)}:{int(eta // 60 % 60):02d})" if eta else ")")
        diff = "—" if s["difference"] is None else f"{s['difference']:+.2f}"
        out.append(f"| {s['id']} | {state} | {s['epochs_done']}/{s['epochs']} | {s['segments']} | {fmt(s['best'])} | "
                   f"{fmt(s['paper'])} | "
                   f"{diff} | {s['run_dir']} |")
    return "\n".join(out)


def _slurm_head(nodes: int) -> tuple[str, str]:
    """The c10d rendezvous (endpoint, id) of a multi-node command run inside this SLURM allocation: its first
    node, a port from its job id."""
    job, nodelist = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_JOB_NODELIST")
    if not job or not nodelist:
        raise RegistryError(f"--nodes {nodes} reads the head node from SLURM, and this shell is not in a SLURM "
                            "allocation (no SLURM_JOB_ID / SLURM_JOB_NODELIST): run it inside salloc or sbatch, or "
                            "write a batch script with `slurm --nodes`.")
    if not job.isdigit():
        raise RegistryError(f"SLURM_JOB_ID {job!r} is not a job id.")
    have = os.environ.get("SLURM_JOB_NUM_NODES", os.environ.get("SLURM_NNODES", ""))
    if have.isdigit() and int(have) < nodes:
        raise RegistryError(f"--nodes {nodes} asks for more nodes than this allocation has ({have}).")
    try:
        shown = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                               timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RegistryError(f"scontrol could not name this allocation's nodes ({e}).") from None
    hosts = shown.stdout.split()
    if shown.returncode != 0 or not hosts or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,253}", hosts[0]):
        raise RegistryError(f"scontrol could not name this allocation's nodes ({shown.stderr.strip()[:200]}).")
    port = RENDEZVOUS_PORTS[0] + int(job) % RENDEZVOUS_PORTS[1]
    return f"{hosts[0]}:{port}", f"psn-{job}"


def _gpus_per_node(rows: list[Row], gpus: int | None, nodes: int) -> int:
    """--gpus, or the authors' count spread over the nodes, which the rows must share."""
    if gpus is not None:
        return gpus
    counts = {r.gpus for r in rows}
    if len(counts) > 1:
        raise RegistryError("These rows ran on different numbers of GPUs "
                            f"({', '.join(sorted({f'{r.id}: {r.gpus}' for r in rows}))}); give --gpus, or write one "
                            "script per group.")
    authors = counts.pop()
    if authors % nodes:
        raise RegistryError(f"The authors ran these rows on {authors} GPUs, which {nodes} nodes do not share "
                            "evenly; give --gpus (per node).")
    return max(authors // nodes, 1)


def _extra(text: str) -> tuple[str, ...]:
    if not text.isprintable():
        raise RegistryError("--extra must be printable (no newline).")
    try:
        return tuple(shlex.split(text))
    except ValueError as e:
        raise RegistryError(f"--extra {text!r} is not a list of shell words ({e}).") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="verb", required=True)
    sub.add_parser("list", help="every row of the paper's tables and sweep")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-root", default="./data", help="datasets below it: CIFAR10, CIFAR100, CIFAR10DVS, ImageNet")
    common.add_argument("--weights-dir", default="./checkpoints/torchvision",
                        help="torchvision's ImageNet ResNet weights for the ImageNet rows' --load")
    common.add_argument("--gpus", type=int, default=None, help="GPUs per node (default: the authors' count, over "
                                                              "the nodes)")
    common.add_argument("--nodes", type=int, default=1, help="machines: one torchrun each, meeting at the first "
                                                             "(c10d), all read from SLURM")
    common.add_argument("--accept-bn-batch", action="store_true",
                        help="with more processes than the authors', split the global batch into smaller "
                             "per-process (BatchNorm) batches instead of refusing")
    common.add_argument("--extra", default="", help="more flags for every row's command, e.g. '--workers 8 "
                                                    "--channels-last' (given last, they win)")
    command = sub.add_parser("command", parents=[common], help="a row's exact command",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    command.add_argument("row")
    command.add_argument("--runs", default=None, help="put the run in RUNS/<task>/<id>, with --resume auto")
    slurm = sub.add_parser("slurm", parents=[common], help="a SLURM array job script for rows (ids, tables, patterns)",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    slurm.add_argument("rows", nargs="+")
    slurm.add_argument("--runs", default="runs", help="run directories: RUNS/<task>/<id>")
    slurm.add_argument("--time", default="24:00:00", help="time limit of each job; a chain of jobs continues the run")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--max-requeues", type=int, default=MAX_REQUEUES,
                       help="how many times a job requeues itself to continue a stopped run")
    table = sub.add_parser("table", help="a task's rows as the Markdown table its README holds")
    table.add_argument("task", choices=TASKS)
    status = sub.add_parser("status", help="where each row's run stands, beside the paper",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    status.add_argument("runs_dir")
    status.add_argument("rows", nargs="*", help="rows to show (default: every row that has a run, or all with --all)")
    status.add_argument("--all", action="store_true", help="also the rows not started")
    status.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    end = sub.add_parser("ended", help="how a job's run of a row ended (finished, stopped, failed): what a "
                                       "SLURM script asks before it requeues")
    end.add_argument("row")
    end.add_argument("--runs", required=True)
    end.add_argument("--since", type=float, required=True, help="the job's start (seconds since 1970)")
    args = p.parse_args(argv)
    try:
        rows = load()
        if args.verb == "list":
            print(list_rows(rows))
        elif args.verb == "table":
            print(readme_table(rows, args.task))
        elif args.verb in ("command", "ended"):
            row = select(rows, [args.row])
            if len(row) != 1:
                raise RegistryError(f"{args.row!r} names {len(row)} rows; give one id.")
            if args.verb == "ended":
                print(ended(row[0], Path(args.runs), args.since))
                return 0
            extra = _extra(args.extra)
            launch = plan(row[0], _gpus_per_node(row, args.gpus, args.nodes), args.nodes, args.accept_bn_batch)
            rendezvous = _slurm_head(args.nodes) if args.nodes > 1 else None
            words = row[0].command(launch, args.data_root, args.weights_dir, args.runs, stops=launch.processes > 1,
                                   rendezvous=rendezvous, extra=extra)
            if args.nodes > 1:
                words = ["srun", f"--nodes={args.nodes}", "--ntasks-per-node=1", *words]
            print(launch.describe(), file=sys.stderr)
            print(shlex.join(words))
        elif args.verb == "slurm":
            _check_script_values(args)
            chosen = select(rows, args.rows)
            gpus = _gpus_per_node(chosen, args.gpus, args.nodes)
            launches = [plan(r, gpus, args.nodes, args.accept_bn_batch) for r in chosen]
            for launch in launches:
                print(launch.describe(), file=sys.stderr)
            print(slurm_script(launches, args.runs, args.data_root, args.weights_dir, args.time, args.partition,
                               args.max_requeues, _extra(args.extra)))
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

"""Rebuild the paper's tables from TensorBoard runs, ours and the original repository's.

    python scripts/paper_tables.py paper/logs                     # the authors' own logs
    python scripts/paper_tables.py paper/logs runs --plots plots  # beside yours, with accuracy curves
    python scripts/paper_tables.py paper/logs --export-tb paper_tb  # the authors' curves as TensorBoard runs
    tensorboard --logdir_spec paper:paper_tb,ours:runs             # ... drawn with yours: same tags and units

Every directory below the given roots that holds TensorBoard events is a run, in any
of the layouts this meets: ours (`test/acc1`, percent), the original CIFAR-10 and
sequential CIFAR scripts (`test_acc`, a fraction; a resumed run has several event
files in one directory), the original ImageNet script (`<run>_logs/te/` with
`test_acc1`/`test_acc5` in percent), and the original CIFAR10-DVS script
(`<run>/logs/`, `test_acc` in percent). Events are read with TensorBoard's own reader,
so a resumed run shows what TensorBoard shows. Each run's best and final test accuracy
is printed beside the paper's number, in tables laid out like the paper's.

Other people's run folders are input from outside: a run that cannot be read (damaged
events, an args.txt that is empty, not UTF-8, not what it claims, or holds odd values) is
reported in one line on stderr and skipped, and the rest of the report is printed. Runs
of the original scripts without args.txt are described from their folder names
(`lif_e256_...`, `if5pmd8_..._P32`, `T4_..._method_PSN_...`, `sew_resnet18_..._T4_...`).
"""
import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from common.neuron_registry import NEURON_NAMES
from common.run_logs import NEURON_LABELS, PAPER_TASKS, PAPER_TOP5, ROWS, Run, find_runs


def fmt(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def final_of(run: Run) -> str:
    """The last accuracy, and for a run not finished where it stands ('in progress: 1 of 5 epochs')."""
    return fmt(run.final) + (f" ({run.progress})" if run.progress else "")


def short(path: str, roots: list[Path]) -> str:
    for root in roots:
        try:
            return str(Path(path).relative_to(root))
        except ValueError:
            pass
    return path


def neuron_label(run: Run) -> str:
    label = NEURON_LABELS.get(run.neuron, run.neuron)
    if run.order is not None and run.neuron in ("masked_psn", "sliding_psn"):
        label += f", order {run.order}"
    return label + (f" ({run.variant})" if run.variant else "")


def tables(runs: list[Run], roots: list[Path], commits: bool = False) -> str:
    out = []

    def where_of(r: Run) -> str:
        return short(r.path, roots) + (f" ({r.code})" if commits else "")

    by_task = {task: [r for r in runs if r.task == task] for task in PAPER_TASKS}
    if by_task["cifar10"]:
        out += ["## CIFAR-10", "", "| dataset | neuron | T | paper | best | final | run |", "| --- | --- | --- | --- | --- | --- | --- |"]
        out += [f"| {r.dataset} | {neuron_label(r)} | {r.T} | {fmt(r.paper)} | {fmt(r.best)} | {final_of(r)} | "
                f"{where_of(r)} |" for r in by_task["cifar10"]]
        out.append("")
    main = [r for r in by_task["sequential_cifar"] if not in_order_sweep(r)]
    if main:
        out += ["## Sequential CIFAR (T = 32)", ""]
        rows = {}  # (neuron, order, variant, n) -> {dataset: run}; n > 0 for further runs of one row
        for r in main:
            n = 0
            while r.dataset in rows.setdefault((r.neuron, r.order, r.variant, n), {}):
                n += 1
            rows[(r.neuron, r.order, r.variant, n)][r.dataset] = r
        datasets = [d for d in ("cifar10", "cifar100", "digits") if any(d in cols for cols in rows.values())]
        header = "| neuron |" + "".join(f" {d} paper | {d} best | {d} final |" for d in datasets) + " runs |"
        out += [header, "| --- |" + " --- | --- | --- |" * len(datasets) + " --- |"]
        order_key = list(NEURON_NAMES)
        for key in sorted(rows, key=lambda k: (k[1] is not None and k[1] not in (32,),
                                               order_key.index(k[0]) if k[0] in order_key else 99,
                                               k[1] or 0, k[2], k[3])):
            cols = rows[key]
            label = neuron_label(next(iter(cols.values())))
            cells = "".join(f" {fmt(cols[d].paper) if d in cols else '—'} | {fmt(cols[d].best) if d in cols else '—'} | "
                            f"{final_of(cols[d]) if d in cols else '—'} |" for d in datasets)
            where = ", ".join(where_of(cols[d]) for d in datasets if d in cols)
            out.append(f"| {label} |{cells} {where} |")
        out.append("")
    sweep = [r for r in by_task["sequential_cifar"] if in_order_sweep(r)]
    if sweep:
        out += sweep_table(sweep, where_of)
    if by_task["cifar10dvs"]:
        out += ["## CIFAR10-DVS", "", "| neuron | T | paper | best | final | run |", "| --- | --- | --- | --- | --- | --- |"]
        out += [f"| {neuron_label(r)} | {r.T} | {fmt(r.paper)} | {fmt(r.best)} | {final_of(r)} | {where_of(r)} |"
                for r in sorted(by_task["cifar10dvs"], key=lambda r: r.T)]
        out.append("")
    if by_task["imagenet"]:
        out += ["## ImageNet", "", "| model | neuron | T | paper top-1 | best top-1 | final top-1 | paper top-5 | "
                "best top-5 | run |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in by_task["imagenet"]:
            best5 = max((v for _, v in r.top5), default=None)
            out.append(f"| {r.dataset} | {neuron_label(r)} | {r.T} | {fmt(r.paper)} | {fmt(r.best)} | {final_of(r)} | "
                       f"{fmt(PAPER_TOP5.get(r.dataset))} | {fmt(best5)} | {where_of(r)} |")
        out.append("")
    for task in sorted({r.task for r in runs} - set(PAPER_TASKS)):  # tasks the paper has no table for
        out += [f"## {task}", "", "| dataset | neuron | T | best | final | run |", "| --- | --- | --- | --- | --- | --- |"]
        out += [f"| {r.dataset} | {neuron_label(r)} | {r.T or '—'} | {fmt(r.best)} | {final_of(r)} | "
                f"{where_of(r)} |" for r in runs if r.task == task]
        out.append("")
    return "\n".join(out)


def sweep_table(sweep: list[Run], where_of) -> list[str]:
    """The order sweep as the paper plots it: a row per order k, the masked and the sliding PSN side by side
    (order 32 is in the main table)."""
    columns = sorted({(r.dataset, r.neuron) for r in sweep})
    out = ["## Order sweep of the masked and sliding PSN (sequential CIFAR)", "",
           "| k |" + "".join(f" {NEURON_LABELS.get(n, n)}, {d} paper | best |" for d, n in columns) + " runs |",
           "| --- |" + " --- | --- |" * len(columns) + " --- |"]
    for k in sorted({r.order for r in sweep}):
        at = {(r.dataset, r.neuron): r for r in sweep if r.order == k}
        cells = "".join(f" {fmt(at[c].paper) if c in at else '—'} | {fmt(at[c].best) if c in at else '—'} |"
                        for c in columns)
        out.append(f"| {k} |{cells} {', '.join(where_of(at[c]) for c in columns if c in at)} |")
    return out + [""]


def in_order_sweep(run: Run) -> bool:
    return run.task == "sequential_cifar" and run.neuron in ("masked_psn", "sliding_psn") and run.order not in (None, 32)


def curve_label(run: Run) -> str:
    """A legend entry that tells two curves of one figure apart: model, neuron, T (and the run's folder when
    two runs share all three)."""
    model = {"sew_resnet18": "SEW ResNet-18", "sew_resnet34": "SEW ResNet-34"}.get(run.dataset, run.dataset)
    head = f"{model}, " if run.task == "imagenet" else ""
    return f"{head}{neuron_label(run)}, T={run.T} ({Path(run.path).name})"


def plot_group(run: Run) -> str:
    """Curves drawn together: one figure per task and dataset (the order sweep is drawn apart)."""
    return run.task if run.task in ("cifar10dvs", "imagenet") else f"{run.task}_{run.dataset}"


def plot_order_sweep(runs: list[Run], folder: Path, plt) -> Path | None:
    """Best test accuracy against the order k, a line per dataset and neuron (the paper's figure)."""
    sweep = [r for r in runs if r.task == "sequential_cifar" and r.neuron in ("masked_psn", "sliding_psn")
             and r.order is not None and r.best is not None]
    if len({r.order for r in sweep}) < 2:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for dataset, neuron in sorted({(r.dataset, r.neuron) for r in sweep}):
        points = sorted((r.order, r.best) for r in sweep if (r.dataset, r.neuron) == (dataset, neuron))
        if len(points) < 2:  # a single order is no sweep; its curve is in the dataset's figure
            continue
        line, = ax.plot([k for k, _ in points], [v for _, v in points], marker="o", markersize=3,
                        label=f"{NEURON_LABELS[neuron]}, {dataset}")
        paper = sorted((row.order, row.paper) for row in ROWS if row.sweep and (row.dataset, row.neuron) ==
                       (dataset, neuron))
        if paper:
            ax.plot([k for k, _ in paper], [v for _, v in paper], linestyle=":", color=line.get_color(),
                    linewidth=0.8, label=f"{NEURON_LABELS[neuron]}, {dataset}: the paper")
    ax.set(title="Sequential CIFAR: best test accuracy against the order k (dotted: the paper's)", xlabel="order k",
           ylabel="best test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    path = folder / "sequential_cifar_order_sweep.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot(runs: list[Run], folder: Path, roots: list[Path]) -> list[Path]:
    """One PNG per group of runs: each run's test-accuracy curve, the paper's number as a dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    sweep = plot_order_sweep(runs, folder, plt)
    if sweep is not None:
        written.append(sweep)
    curves = [r for r in runs if not in_order_sweep(r)]
    for group in sorted({plot_group(r) for r in curves}):
        members = [r for r in curves if plot_group(r) == group]
        fig, ax = plt.subplots(figsize=(8, 5))
        dotted = False
        for r in members:
            label = f"{curve_label(r)}: best {fmt(r.best)}"
            label += f" ({r.progress})" if r.progress else ""
            # A run with one epoch so far is a point: drawn as a marker, not an invisible line.
            line, = ax.plot([s for s, _ in r.curve], [v for _, v in r.curve], linewidth=1, label=label,
                            marker="o" if len(r.curve) < 2 else None, markersize=4)
            if r.paper is not None:
                ax.axhline(r.paper, color=line.get_color(), linestyle=":", linewidth=0.8)
                dotted = True
        title = f"{group}: test accuracy" + (" (dotted: the paper's best)" if dotted else "")
        ax.set(title=title, xlabel="epoch (1 = the first)", ylabel="test accuracy (%)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no tick at 1.5
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6 if len(members) <= 12 else 4, loc="lower right", ncol=1 if len(members) <= 12 else 2)
        path = folder / f"{group}_test_acc.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def export_tensorboard(runs: list[Run], folder: Path, roots: list[Path]) -> list[Path]:
    """Each run's test accuracy as this project logs its own: tags test/acc1 (and test/acc5), in percent, steps
    numbered from 1, one folder per run under `folder` (its path below its root), so that TensorBoard draws the
    authors' curves and yours in one chart (`tensorboard --logdir_spec paper:EXPORT,ours:runs`)."""
    from torch.utils.tensorboard import SummaryWriter

    written = []
    for r in runs:
        target = folder / short(r.path, roots)
        with SummaryWriter(log_dir=str(target), filename_suffix=".export") as writer:
            for step, value in r.curve:
                writer.add_scalar("test/acc1", value, step)
            for step, value in r.top5:
                writer.add_scalar("test/acc5", value, step)
        written.append(target)
    return written


def export_problem(folder: str | None, runs_below: list[Path]) -> str | None:
    """Why --export-tb cannot be written (an export must not add to runs already there); None when it can."""
    if folder is None:
        return None
    path = Path(folder)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        return f"--export-tb {path} exists and is not an empty folder; give a new one (an export adds to nothing)."
    if any(path.resolve() == root.resolve() or root.resolve() in path.resolve().parents for root in runs_below):
        return f"--export-tb {path} lies inside a folder being read; give one outside it."
    return None


def output_problem(json_path: str | None, plots: str | None) -> str | None:
    """Why --json or --plots cannot be written, checked before any work; None when both can."""
    if json_path:
        path = Path(json_path)
        if path.is_dir():
            return f"--json {path} is a folder; give a file name."
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            return f"--json {path}: its folder {path.parent} does not exist or is not writable."
        if path.exists() and not os.access(path, os.W_OK):
            return f"--json {path} is not writable."
    if plots:
        folder = Path(plots)
        if folder.exists() and not folder.is_dir():
            return f"--plots {folder} exists and is not a folder."
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return f"--plots {folder} cannot be created ({e.strerror})."
        if not os.access(folder, os.W_OK):
            return f"--plots {folder} is not writable."
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("roots", nargs="+", help="folders holding TensorBoard runs")
    p.add_argument("--plots", default=None, help="write PNG accuracy curves into this folder")
    p.add_argument("--json", default=None, help="also write every run's numbers as JSON")
    p.add_argument("--export-tb", default=None, metavar="DIR",
                   help="write every run's test accuracy into DIR as TensorBoard runs with this project's tags and "
                        "units (test/acc1 in percent, epochs from 1): the authors' curves beside yours")
    p.add_argument("--commits", action="store_true",
                   help="show beside each run the commit it was made with (from its args.txt; +dirty: modified tree)")
    args = p.parse_args(argv)
    roots = [Path(r) for r in args.roots]
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        print(f"error: no such folder: {', '.join(missing)}.", file=sys.stderr)
        return 2
    problem = output_problem(args.json, args.plots) or export_problem(args.export_tb, roots)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    runs = find_runs(roots)
    if not runs:
        print(f"error: no TensorBoard run with test accuracy under {', '.join(map(str, roots))}.", file=sys.stderr)
        return 2
    print(tables(runs, roots, args.commits))
    if args.json:
        Path(args.json).write_text(json.dumps([{**asdict(r), "best": r.best, "final": r.final, "paper": r.paper}
                                               for r in runs], indent=1))
    if args.export_tb:
        written = export_tensorboard(runs, Path(args.export_tb), roots)
        print(f"TensorBoard export: {len(written)} runs in {args.export_tb}", file=sys.stderr)
    if args.plots:  # stdout stays Markdown (`> tables.md`); what was written goes to stderr
        for path in plot(runs, Path(args.plots), roots):
            print(f"plot: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

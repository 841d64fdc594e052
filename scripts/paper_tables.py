"""Rebuild the paper's tables from TensorBoard runs, ours and the original repository's.

    python scripts/paper_tables.py paper/logs                     # the authors' own logs
    python scripts/paper_tables.py paper/logs runs --plots plots  # beside yours, with accuracy curves

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
import ast
import json
import math
import os
import re
import stat
import struct
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.neuron_registry import NEURON_ALIASES, NEURON_NAMES, NEURONS  # noqa: E402
from scripts.experiments import load as load_rows, paper_numbers  # noqa: E402

# The paper's numbers (test accuracy, %): the registry of its experiments, read from the authors' logs.
ROWS = load_rows()
PAPER = paper_numbers(ROWS)
PAPER_TOP5 = {row.dataset: row.paper_top5 for row in ROWS if row.paper_top5 is not None}

NEURON_LABELS = {name: entry.label for name, entry in NEURONS.items()}
# The paper's four experiments, each with a table laid out like the paper's; any other task gets a plain one.
PAPER_TASKS = ("cifar10", "sequential_cifar", "cifar10dvs", "imagenet")
TEST_TAGS = ("test/acc1", "test_acc1", "test_acc")
TOP5_TAGS = ("test/acc5", "test_acc5")


@dataclass
class Run:
    path: str
    task: str
    dataset: str
    neuron: str
    order: int | None
    T: int | None
    variant: str = ""  # what tells two runs of one row apart (e.g. plif_torch)
    curve: list = field(default_factory=list)  # [(epoch, accuracy %)]
    top5: list = field(default_factory=list)
    code: str = "-"  # the commit(s) the run was made with, from args.txt's provenance lines

    @property
    def best(self):
        return max(v for _, v in self.curve) if self.curve else None

    @property
    def final(self):
        return self.curve[-1][1] if self.curve else None

    @property
    def paper(self):
        return PAPER.get((self.task, self.dataset, self.neuron, self.order, self.T))


EVENTS_PREFIX = "events.out.tfevents"
MAX_EVENT_FILE = 1 << 30  # far beyond a training run's scalars and images
MAX_RECORD = 64 << 20


class Damaged(Exception):
    pass


def verified_prefix(path: Path) -> tuple[bytes, str | None]:
    """The bytes of an event file up to its first damaged record, and what is wrong there (None: intact).

    Each record is [length (8 bytes), masked CRC-32C of the length, data, masked CRC-32C of the data]:
    TensorBoard's own format and checksums. Only a regular file is opened (a FIFO would block forever)."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise Damaged(f"{path.name} cannot be opened ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise Damaged(f"{path.name} is not a regular file")
        data = f.read(MAX_EVENT_FILE + 1)
    if len(data) > MAX_EVENT_FILE:
        raise Damaged(f"{path.name} is larger than {MAX_EVENT_FILE} bytes")
    pos = 0
    while pos < len(data):
        header = data[pos:pos + 12]
        if len(header) < 12:
            return data[:pos], f"truncated at byte {pos}"
        length, crc = struct.unpack("<QI", header)
        if masked_crc32c(header[:8]) != crc or length > MAX_RECORD:
            return data[:pos], f"a damaged record at byte {pos}"
        record = data[pos + 12:pos + 12 + length + 4]
        if len(record) < length + 4:
            return data[:pos], f"truncated at byte {pos}"
        if masked_crc32c(record[:length]) != struct.unpack("<I", record[length:])[0]:
            return data[:pos], f"a damaged record at byte {pos}"
        pos += 12 + length + 4
    return data, None


def read_scalars(event_dir: Path, warn=lambda message: None) -> dict:
    """{tag: [(step, value), ...]} of the event files in `event_dir`, read by TensorBoard's own reader (so a
    resumed run shows what TensorBoard shows) from their records up to the first damaged one; `warn` is told
    of every file that is damaged, cut short or not a regular file."""
    import logging
    import tempfile

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # A resumed run's purged steps are expected here, not news: keep the reader quiet about them.
    logging.getLogger("tensorboard").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as verified:
        for name in sorted(os.listdir(event_dir)):
            if not name.startswith(EVENTS_PREFIX):
                continue
            try:
                data, problem = verified_prefix(event_dir / name)
            except Damaged as e:
                warn(f"{e}; left out")
                continue
            if problem is not None:
                warn(f"{name} has {problem}: the records after it are left out")
            (Path(verified) / name).write_bytes(data)
        acc = EventAccumulator(verified, size_guidance={"scalars": 0})
        acc.Reload()
        return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def as_percent(curve: list) -> list:
    """The original CIFAR scripts logged fractions; everything else percent."""
    if curve and max(v for _, v in curve) <= 1.0:
        return [(s, 100.0 * v) for s, v in curve]
    return curve


class UnreadableRun(Exception):
    pass


MAX_ARGS_BYTES = 1 << 16  # a run's settings fit in a few kB
_SIMPLE_VALUE = re.compile(r"-?[0-9]{1,18}(\.[0-9]{1,18})?([eE][-+]?[0-9]{1,3})?|True|False|None|'[^']{0,200}'|\"[^\"]{0,200}\"")


def read_args(run_dir: Path) -> dict:
    """args.txt as a dict: ours is JSON; the original's first line is an argparse.Namespace repr.

    Other people's files: only a regular file is read, only its first 64 kB, and a value is taken only
    when it is a short plain literal."""
    path = run_dir / "args.txt"
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return {}
    if not stat.S_ISREG(mode):
        raise UnreadableRun("its args.txt is not a regular file")
    try:
        with path.open("rb") as f:
            text = f.read(MAX_ARGS_BYTES).decode("utf-8")
    except UnicodeDecodeError:
        raise UnreadableRun("its args.txt is not UTF-8 text") from None
    except OSError as e:
        raise UnreadableRun(f"its args.txt cannot be read ({e.strerror})") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]  # "# started from"
    if not lines:
        raise UnreadableRun("its args.txt is empty")
    first = lines[0].strip()
    if first.startswith("{"):
        try:
            args = json.loads(first)
        except (ValueError, RecursionError):
            raise UnreadableRun("its args.txt does not start with valid JSON") from None
        if not isinstance(args, dict):
            raise UnreadableRun("its args.txt does not hold a JSON object")
        return args
    if not first.startswith("Namespace("):
        raise UnreadableRun("its args.txt is neither JSON nor an argparse Namespace")
    args = {}
    for key, value in re.findall(r"(\w+)=('[^']*'|\"[^\"]*\"|[^,()]+)", first):
        value = value.strip()
        args[key] = ast.literal_eval(value) if _SIMPLE_VALUE.fullmatch(value) else value
    return args


def _number(pattern: str, text: str):
    match = re.search(pattern, text)
    return int(match.group(1)) if match else None


def _int_or_none(value, what: str):
    """An integer setting read from args.txt (0 to a million, digits 0-9 only); anything else makes the run
    unreadable."""
    if value is None:
        return None
    ok = (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10**6) or (
        isinstance(value, str) and re.fullmatch(r"[0-9]{1,7}", value) and int(value) <= 10**6)
    if not ok:
        raise UnreadableRun(f"its args.txt gives {what} = {str(value)[:40]!r}")
    return int(value)


def name_neuron(name: str) -> str | None:
    """The neuron an original run folder is named after: `<neu>_e256_...` or `<neu>_T4_e1024_...`."""
    match = re.match(r"^([a-z][a-z0-9_]*?)_(?:T\d+_)?e\d+_", name)
    return match.group(1) if match else None


def describe(run_dir: Path, args: dict, layout: str | None) -> tuple:
    """(task, dataset, neuron, order, T, variant) of a run, from its args.txt, its layout and its name.

    `layout` is 'imagenet' for the original ImageNet script's te/ + train/ folders and
    'cifar10dvs' for the original CIFAR10-DVS script's logs/ folder.
    """
    name = run_dir.name
    raw_neuron = args.get("neuron", args.get("neu")) or name_neuron(name) or "psn"
    if not isinstance(raw_neuron, str):
        raise UnreadableRun(f"its args.txt gives neuron = {raw_neuron!r}")
    neuron = NEURON_ALIASES.get(raw_neuron, raw_neuron)
    variant = raw_neuron if raw_neuron == "plif_torch" else ""
    T = _int_or_none(args.get("T"), "T") or _number(r"(?:^|_)T(\d+)(?:_|$)", name)
    task = args.get("task")
    if task is not None and not (isinstance(task, str) and re.fullmatch(r"[a-z][a-z0-9_]{0,63}", task)):
        raise UnreadableRun(f"its args.txt names the task {task!r}")
    if task is None:
        if layout == "imagenet" or "model" in args or name.endswith("_logs"):
            task = "imagenet"
        elif layout == "cifar10dvs" or "method" in args or "method_" in name:
            task = "cifar10dvs"
        elif "class_num" in args or "scf" in str(args.get("out_dir", "")) or "scf" in str(run_dir):
            task = "sequential_cifar"
        else:
            task = "cifar10"
    if task == "imagenet":
        model = args.get("model")
        if model is None:
            match = re.search(r"(sew_resnet\d+)", name)
            model = match.group(1) if match else name
        if not isinstance(model, str):
            raise UnreadableRun(f"its args.txt gives model = {model!r}")
        return task, model, neuron, _int_or_none(args.get("order"), "order"), T, variant
    if task == "cifar10dvs":
        return task, "cifar10dvs", "sliding_psn", _int_or_none(args.get("order", 2), "order"), T, variant
    if task == "sequential_cifar":
        if args.get("dataset") == "digits":
            dataset = "digits"
        else:
            classes = _int_or_none(args.get("num_classes", args.get("class_num")), "num_classes")
            if classes is None:
                classes = 100 if "100" in str(args.get("data_dir", "")) + str(run_dir.parent) else 10
            dataset = f"cifar{classes}"
        order = None
        if neuron in ("masked_psn", "sliding_psn"):
            order = (_int_or_none(args.get("order", args.get("P")), "order")
                     or _number(r"_P(\d+)(?:_|$)", name))
        return task, dataset, neuron, order, 32, variant
    dataset = args.get("dataset", "cifar10" if task == "cifar10" else task)
    if not isinstance(dataset, str):
        raise UnreadableRun(f"its args.txt gives dataset = {dataset!r}")
    order = _int_or_none(args.get("order"), "order") if task != "cifar10" else None
    return task, dataset, neuron, order, T or (4 if task == "cifar10" else None), variant


def find_runs(roots: list[Path]) -> list[Run]:
    """Every run below `roots`; one line on stderr for each run left out, and for each damaged file."""
    runs, silent = {}, {}

    def warn(message: str) -> None:
        print(f"warning: {message}.", file=sys.stderr, flush=True)

    for root in roots:
        for folder, _, files in os.walk(root):
            if not any(f.startswith(EVENTS_PREFIX) for f in files):
                continue
            event_dir = Path(folder)
            # The original ImageNet script: <run>_logs/{train,te}; CIFAR10-DVS: <run>/logs.
            layout = {"te": "imagenet", "train": "imagenet", "logs": "cifar10dvs"}.get(event_dir.name)
            if (event_dir / "args.txt").exists():
                layout = None  # a run of ours that happens to carry such a name
            run_dir = event_dir.parent if layout else event_dir
            try:
                run = read_run(run_dir, event_dir, layout, lambda m: warn(f"{event_dir}: {m}"))
            except UnreadableRun as e:
                warn(f"skipped {run_dir}: {e}")
                silent.pop(str(run_dir), None)
                continue
            if run is not None:
                runs[str(run_dir)] = run
            elif str(run_dir) not in runs:
                silent[str(run_dir)] = run_dir  # unless another of its folders (ImageNet's te/) holds it
    for key, run_dir in silent.items():
        if key not in runs:
            warn(f"skipped {run_dir}: its TensorBoard events hold no test accuracy (yet)")
    return sorted(runs.values(), key=lambda r: (r.task, r.dataset, r.neuron, r.order or 0, r.T or 0, r.path))


def read_run(run_dir: Path, event_dir: Path, layout: str | None, warn=lambda message: None) -> Run | None:
    """One run, or None if it logged no test accuracy; UnreadableRun says why it cannot be read."""
    try:
        scalars = read_scalars(event_dir, warn)
    except Exception as e:  # noqa: BLE001 - a record with a valid checksum can still fail to parse
        raise UnreadableRun(f"its TensorBoard events cannot be read ({type(e).__name__})") from None
    tag = next((t for t in TEST_TAGS if t in scalars), None)
    if tag is None:
        return None
    args = read_args(run_dir)
    task, dataset, neuron, order, T, variant = describe(run_dir, args, layout)
    top5_tag = next((t for t in TOP5_TAGS if t in scalars), None)
    # Epochs are numbered from 1 (ours); the original scripts logged them from 0.
    shift = 0 if "task" in args else 1
    curve = [(step + shift, value) for step, value in scalars[tag] if math.isfinite(value)]
    top5 = [(step + shift, value) for step, value in scalars[top5_tag]] if top5_tag else []
    return Run(str(run_dir), task, dataset, neuron, order, T, variant, as_percent(curve), top5, read_code(run_dir))


def read_code(run_dir: Path) -> str:
    """The commits of a run's segments from args.txt's `# provenance:` lines: 'abc1234', 'abc1234+dirty',
    'abc1234 > def5678' when a resume ran other code; '-' when args.txt has none (the original runs)."""
    path = run_dir / "args.txt"
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return "-"
        with path.open("rb") as f:
            lines = f.read(MAX_ARGS_BYTES * 16).decode("utf-8", "replace").splitlines()
    except OSError:
        return "-"
    commits = []
    for line in lines:
        if not line.startswith("# provenance: "):
            continue
        try:
            code = json.loads(line[len("# provenance: "):]).get("code") or {}
            commit = code.get("commit")
        except (ValueError, RecursionError, AttributeError):
            continue
        label = "-" if not isinstance(commit, str) or not re.fullmatch(r"[0-9a-f]{7,64}", commit) else (
            commit[:7] + ("+dirty" if code.get("dirty") is True else ""))
        if not commits or commits[-1] != label:
            commits.append(label)
    return " > ".join(commits) if commits else "-"


def fmt(value) -> str:
    return "—" if value is None else f"{value:.2f}"


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
        out += [f"| {r.dataset} | {neuron_label(r)} | {r.T} | {fmt(r.paper)} | {fmt(r.best)} | {fmt(r.final)} | "
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
                            f"{fmt(cols[d].final) if d in cols else '—'} |" for d in datasets)
            where = ", ".join(where_of(cols[d]) for d in datasets if d in cols)
            out.append(f"| {label} |{cells} {where} |")
        out.append("")
    sweep = [r for r in by_task["sequential_cifar"] if in_order_sweep(r)]
    if sweep:
        out += sweep_table(sweep, where_of)
    if by_task["cifar10dvs"]:
        out += ["## CIFAR10-DVS", "", "| neuron | T | paper | best | final | run |", "| --- | --- | --- | --- | --- | --- |"]
        out += [f"| {neuron_label(r)} | {r.T} | {fmt(r.paper)} | {fmt(r.best)} | {fmt(r.final)} | {where_of(r)} |"
                for r in sorted(by_task["cifar10dvs"], key=lambda r: r.T)]
        out.append("")
    if by_task["imagenet"]:
        out += ["## ImageNet", "", "| model | neuron | T | paper top-1 | best top-1 | final top-1 | paper top-5 | "
                "best top-5 | run |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in by_task["imagenet"]:
            best5 = max((v for _, v in r.top5), default=None)
            out.append(f"| {r.dataset} | {neuron_label(r)} | {r.T} | {fmt(r.paper)} | {fmt(r.best)} | {fmt(r.final)} | "
                       f"{fmt(PAPER_TOP5.get(r.dataset))} | {fmt(best5)} | {where_of(r)} |")
        out.append("")
    for task in sorted({r.task for r in runs} - set(PAPER_TASKS)):  # tasks the paper has no table for
        out += [f"## {task}", "", "| dataset | neuron | T | best | final | run |", "| --- | --- | --- | --- | --- | --- |"]
        out += [f"| {r.dataset} | {neuron_label(r)} | {r.T or '—'} | {fmt(r.best)} | {fmt(r.final)} | "
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
            line, = ax.plot([s for s, _ in r.curve], [v for _, v in r.curve], linewidth=1, label=label)
            if r.paper is not None:
                ax.axhline(r.paper, color=line.get_color(), linestyle=":", linewidth=0.8)
                dotted = True
        title = f"{group}: test accuracy" + (" (dotted: the paper's best)" if dotted else "")
        ax.set(title=title, xlabel="epoch (1 = the first)", ylabel="test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6 if len(members) <= 12 else 4, loc="lower right", ncol=1 if len(members) <= 12 else 2)
        path = folder / f"{group}_test_acc.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


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
    p.add_argument("--commits", action="store_true",
                   help="show beside each run the commit it was made with (from its args.txt; +dirty: modified tree)")
    args = p.parse_args(argv)
    roots = [Path(r) for r in args.roots]
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        print(f"error: no such folder: {', '.join(missing)}.", file=sys.stderr)
        return 2
    problem = output_problem(args.json, args.plots)
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
    if args.plots:  # stdout stays Markdown (`> tables.md`); what was written goes to stderr
        for path in plot(runs, Path(args.plots), roots):
            print(f"plot: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

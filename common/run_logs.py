"""A run's logs as the table tool reads them: TensorBoard events (checked record by record) and args.txt.

Every directory below the given roots that holds TensorBoard events is a run, in any of the
layouts this meets: ours (`test/acc1`, percent), the original CIFAR-10 and sequential CIFAR
scripts (`test_acc`, a fraction; a resumed run has several event files in one directory), the
original ImageNet script (`<run>_logs/te/` with `test_acc1`/`test_acc5` in percent), and the
original CIFAR10-DVS script (`<run>/logs/`, `test_acc` in percent). Events are read with
TensorBoard's own reader from their records up to the first damaged one, so a resumed run shows
what TensorBoard shows.

Other people's run folders are input from outside: a run that cannot be read (damaged events, an
args.txt that is empty, not UTF-8, not what it claims, or holds odd values) raises UnreadableRun,
which `find_runs` reports in one line on stderr before it goes on. Runs of the original scripts
without args.txt are described from their folder names (`lif_e256_...`, `if5pmd8_..._P32`,
`T4_..._method_PSN_...`, `sew_resnet18_..._T4_...`).
"""
import ast
import json
import math
import os
import re
import stat
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .experiments import load as load_rows
from .experiments import paper_numbers
from .neuron_registry import NEURON_ALIASES, NEURONS

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
    progress: str = ""  # ours not yet finished: 'in progress: 3 of 200 epochs' or 'stopped: ...'; '' when done

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
    return Run(str(run_dir), task, dataset, neuron, order, T, variant, as_percent(curve), top5, read_code(run_dir),
               progress_of(run_dir, args, len(curve)) if "task" in args else "")


MAX_RUN_FILE = 1 << 20  # metrics.jsonl, summary.json, args.txt, the lock of a run: far below a MiB


def read_small(path: Path) -> str | None:
    """A run file's text, at most MAX_RUN_FILE bytes; None when absent, not a regular file, or unreadable."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with path.open("rb") as f:
            return f.read(MAX_RUN_FILE).decode("utf-8", "replace")
    except OSError:
        return None


def summary_of(run_dir: Path) -> dict | None:
    """A run's summary.json (its last invocation's final line); None when absent or damaged."""
    from .runlog import SUMMARY

    try:
        summary = json.loads(read_small(run_dir / SUMMARY) or "null")
    except (ValueError, RecursionError):
        return None
    return summary if isinstance(summary, dict) else None


def live_lock_holder(run_dir: Path) -> str | None:
    """'host pid' of a live run holding the directory; None when no run holds it (or its process is gone)."""
    from .run_dir import holder_is_gone
    from .runlog import LOCK

    holder = (read_small(run_dir / LOCK) or "").strip()
    return holder if holder and not holder_is_gone(holder) else None


def progress_of(run_dir: Path, args: dict, done: int) -> str:
    """Where a run of ours stands when it is not finished: in progress (its directory's lock is held by a live
    process, or it has written no summary.json yet) or stopped, with its epochs; '' for a finished run."""
    summary = summary_of(run_dir)
    epochs = (summary or {}).get("epochs", args.get("epochs"))
    epochs = epochs if isinstance(epochs, int) and not isinstance(epochs, bool) and 0 < epochs <= 10**6 else None
    of = f"{done} of {epochs} epochs" if epochs else f"{done} epochs"
    if summary is None or live_lock_holder(run_dir) is not None:
        return f"in progress: {of}"
    if "stopped" in summary or (epochs is not None and done < epochs):
        return f"stopped: {of}"
    return ""


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

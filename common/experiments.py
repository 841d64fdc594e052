"""The paper's experiments (paper/experiments.toml) as rows: read, checked, and turned into commands.

One registry serves `scripts/reproduce.py` (commands, SLURM scripts, status of your runs), the
paper's numbers in `scripts/paper_tables.py`, and the command tables of the READMEs (tested
against it).
"""
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = ROOT / "paper" / "experiments.toml"
TASKS = ("cifar10", "sequential_cifar", "cifar10dvs", "imagenet")
# torchrun forwards SIGUSR1 to its workers only when told (without it, SIGUSR1 ends torchrun itself), and
# waits --shutdown-timeout seconds for them to save their mid-epoch checkpoints and leave.
# Tasks whose -b is the total over every process, not one process's batch (their Task.global_batch).
TOTAL_BATCH_TASKS = ("cifar10dvs",)
TORCHRUN_STOPS = ["--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1", "--shutdown-timeout=90"]


@dataclass(frozen=True)
class Row:
    id: str
    table: str
    task: str
    dataset: str
    neuron: str
    T: int
    args: str
    data: str
    gpus: int
    hardware: str
    paper: float
    log: str
    order: int | None = None
    sweep: str | None = None
    paper_top5: float | None = None

    @property
    def key(self) -> tuple:
        """What a run of this row is, as the table tool describes runs: (task, dataset, neuron, order, T)."""
        return (self.task, self.dataset, self.neuron, self.order, self.T)

    @property
    def epochs(self) -> int:
        words = shlex.split(self.args)
        return int(words[words.index("--epochs") + 1])

    def arguments(self, data_root: str = "./data", weights_dir: str = "./checkpoints/torchvision") -> list[str]:
        return [w.replace("{data}", str(Path(data_root) / self.data)).replace("{weights}", str(weights_dir))
                for w in shlex.split(self.args)]

    def _value(self, flag: str) -> str:
        words = shlex.split(self.args)
        return words[words.index(flag) + 1]

    @property
    def batch(self) -> int:
        """The row's -b: per process, or for a task in TOTAL_BATCH_TASKS the total over its processes."""
        return int(self._value("-b"))

    @property
    def lr(self) -> float:
        return float(self._value("--lr"))

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step in the authors' run."""
        return self.batch if self.task in TOTAL_BATCH_TASKS else self.batch * self.gpus

    @property
    def bn_batch(self) -> int:
        """Samples each BatchNorm normalised over in the authors' run: one process's batch."""
        return self.global_batch // self.gpus

    def command(self, launch: "Launch | None" = None, data_root: str = "./data",
                weights_dir: str = "./checkpoints/torchvision", runs: str | None = None, stops: bool = False,
                rendezvous: tuple[str, str] | None = None, extra: tuple[str, ...] = ()) -> list[str]:
        """The row's command on `launch`'s processes (default: the authors' GPUs on one machine): python for one,
        torchrun --standalone on one machine, torchrun with a c10d rendezvous (`rendezvous`: endpoint and id)
        on several. With `runs`, its run directory is runs/<task>/<id> and --resume auto continues it (the same
        command for every job of a chain)."""
        launch = launch if launch is not None else plan(self, self.gpus)
        return launcher(launch, stops, rendezvous) + self.training(launch, data_root, weights_dir, runs, extra)

    def training(self, launch: "Launch", data_root: str = "./data", weights_dir: str = "./checkpoints/torchvision",
                 runs: str | None = None, extra: tuple[str, ...] = ()) -> list[str]:
        """The script and its arguments, with the -b and --accum-steps that keep the recipe on `launch`."""
        args = self.arguments(data_root, weights_dir)
        args[args.index("-b") + 1] = str(launch.batch_flag)
        if launch.accum > 1:
            args += ["--accum-steps", str(launch.accum)]
        if runs is not None:
            args += ["--output-dir", f"{runs}/{self.task}", "--run-name", self.id, "--resume", "auto"]
        return [f"{self.task}/train.py", *args, *extra]


@dataclass(frozen=True)
class Launch:
    """A row on `nodes` machines with `gpus` processes each: the -b and --accum-steps that keep its recipe.

    The recipe is the authors' global batch (samples per optimizer step), per-BatchNorm batch (one
    process's micro-batch) and learning rate. Fewer processes than the authors' keep the micro-batch
    and accumulate gradients over the missing processes' share; more processes split the global batch
    into smaller micro-batches, which `plan` allows only when told (`bn_batch_changes`).
    """

    row: Row
    nodes: int
    gpus: int  # per node
    micro: int  # samples per process and micro-batch: what each BatchNorm sees
    accum: int  # micro-batches per optimizer step

    @property
    def processes(self) -> int:
        return self.nodes * self.gpus

    @property
    def global_batch(self) -> int:
        return self.processes * self.micro * self.accum

    @property
    def batch_flag(self) -> int:
        """The command's -b: one process's micro-batch, or the total for a task whose -b is the total."""
        return self.global_batch if self.row.task in TOTAL_BATCH_TASKS else self.micro

    @property
    def bn_batch_changes(self) -> bool:
        return self.micro != self.row.bn_batch

    def describe(self) -> str:
        """One line: what this launch runs, against the authors' run."""
        row, gpus = self.row, "GPU" if self.row.gpus == 1 else "GPUs"
        where = f"{self.nodes} nodes x {self.gpus}" if self.nodes > 1 else f"{self.processes}"
        bn = f"; each BatchNorm sees {self.micro} samples, not the authors' {row.bn_batch}" \
            if self.bn_batch_changes else ""
        accumulated = f" x {self.accum} accumulated micro-batches" if self.accum > 1 else ""
        return (f"{row.id}: global batch {self.global_batch} = {where} process{'es' if self.processes > 1 else ''} "
                f"x {self.micro}{accumulated}, lr {row.lr:g}{bn} (the authors': {row.gpus} {gpus} x {row.bn_batch}).")


def plan(row: Row, gpus: int, nodes: int = 1, accept_bn_batch: bool = False) -> Launch:
    """How `row` runs on nodes x gpus processes with its global batch, per-BatchNorm batch and lr; a
    RegistryError (one sentence) where that is impossible, or changes the per-BatchNorm batch unasked."""
    if gpus < 1 or nodes < 1:
        raise RegistryError(f"--gpus and --nodes must be at least 1 (got --gpus {gpus}, --nodes {nodes}).")
    processes = gpus * nodes
    authors = f"{row.id} ran on {row.gpus} GPU{'s' if row.gpus > 1 else ''} with a global batch of " \
              f"{row.global_batch} and {row.bn_batch} samples per BatchNorm"
    if processes <= row.gpus:
        if row.gpus % processes:
            fits = [str(d) for d in range(1, row.gpus + 1) if row.gpus % d == 0]
            fits = ", ".join(fits[:-1]) + f" or {fits[-1]}" if len(fits) > 1 else fits[0]
            raise RegistryError(f"{authors}; {processes} processes cannot keep both (gradients accumulate over a whole "
                                f"number of micro-batches): use {fits} processes.")
        return Launch(row, nodes, gpus, row.bn_batch, row.gpus // processes)
    if row.global_batch % processes:
        raise RegistryError(f"{authors}; its global batch does not split evenly over {processes} processes.")
    launch = Launch(row, nodes, gpus, row.global_batch // processes, 1)
    if not accept_bn_batch:
        raise RegistryError(f"{authors}; on {processes} processes the global batch and lr stay, but each BatchNorm "
                            f"would see {launch.micro} samples: use at most {row.gpus} process"
                            f"{'es' if row.gpus > 1 else ''} (fewer accumulate gradients, exactly), or add "
                            "--accept-bn-batch to run so.")
    return launch


def launcher(launch: Launch, stops: bool = False, rendezvous: tuple[str, str] | None = None) -> list[str]:
    """What starts the processes: python for one, torchrun on one machine, torchrun with a c10d rendezvous
    (endpoint host:port, id) on several (each machine's node rank comes from the rendezvous)."""
    if launch.nodes > 1:
        if rendezvous is None:
            raise ValueError("several nodes need a rendezvous endpoint and id")
        endpoint, run_id = rendezvous
        return ["torchrun", f"--nnodes={launch.nodes}", f"--nproc_per_node={launch.gpus}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}", *(TORCHRUN_STOPS if stops else [])]
    if launch.processes == 1:
        return ["python"]
    return ["torchrun", "--standalone", f"--nproc_per_node={launch.gpus}", *(TORCHRUN_STOPS if stops else [])]


class RegistryError(Exception):
    pass


def load(path: Path = REGISTRY) -> list[Row]:
    """Every row, each field checked for its type; ids unique."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise RegistryError(f"{path} cannot be read ({e}).") from None
    rows, seen = [], set()
    fields = Row.__dataclass_fields__
    for entry in raw.get("row", []):
        unknown = set(entry) - set(fields)
        if unknown:
            raise RegistryError(f"{path}: a row has unknown fields {sorted(unknown)}.")
        try:
            row = Row(**entry)
        except TypeError as e:
            raise RegistryError(f"{path}: a row lacks a field ({e}).") from None
        if row.id in seen or row.task not in TASKS:
            raise RegistryError(f"{path}: row {row.id!r} is repeated or names an unknown task.")
        seen.add(row.id)
        rows.append(row)
    return rows


def select(rows: list[Row], names: list[str]) -> list[Row]:
    """Rows by id, by table (e.g. 'CIFAR10-DVS'), by sweep, or by a shell-style pattern of ids ('scifar100_*')."""
    import fnmatch

    chosen = []
    for name in names:
        found = [r for r in rows if fnmatch.fnmatch(r.id, name) or name in (r.table, r.sweep)]
        if not found:
            raise RegistryError(f"No row matches {name!r}; `python scripts/reproduce.py list` shows them.")
        chosen += [r for r in found if r not in chosen]
    return chosen


def paper_numbers(rows: list[Row] | None = None) -> dict:
    """{(task, dataset, neuron, order, T): the paper's top-1 %} for the table tool."""
    return {row.key: row.paper for row in (rows if rows is not None else load())}

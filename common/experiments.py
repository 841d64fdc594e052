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

    def command(self, gpus: int = 1, data_root: str = "./data", weights_dir: str = "./checkpoints/torchvision",
                runs: str | None = None, stops: bool = False) -> list[str]:
        """The row's command: python on one GPU, torchrun --standalone on `gpus`; with `runs`, its run directory
        is runs/<task>/<id> and --resume auto continues it (the same command for every job of a chain)."""
        script = f"{self.task}/train.py"
        args = self.arguments(data_root, weights_dir)
        if runs is not None:
            args += ["--output-dir", f"{runs}/{self.task}", "--run-name", self.id, "--resume", "auto"]
        if gpus <= 1:
            return ["python", script, *args]
        return ["torchrun", "--standalone", f"--nproc_per_node={gpus}", *(TORCHRUN_STOPS if stops else []), script,
                *args]


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

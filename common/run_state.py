"""A run's state: where it stands and what it has recorded, one object with one serializer.

Every checkpoint of ours holds one `RunState` beside the weights, the optimizer, the AMP scaler
and the EMA (`common.checkpoint.Checkpoint`); a resume reads it back and training goes on from it.
Its position has one convention everywhere in the code: `epoch` is the next epoch to train
(0-based) and `step` the batches of it already trained.

Each field declares, where it is declared, its key in the file, the check its value in the file
must pass, and how the file's convention converts to the field and back (the file keeps the
last finished epoch, -1 before the first; the running sums as a list; the last accuracy under
'task_state'). `to_record` and `from_record` follow the fields by name, so adding what a
checkpoint keeps is one field here:

    samples_seen: int = stored(0, check=is_count, what="samples_seen must be a count")

Files written before a field existed load with its default.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from .checkpoint_checks import MAX_EPOCH, MAX_SAMPLES, MAX_STEP, is_int, is_number, plain_tree, rng_ok, show

_ABSENT = object()  # a key the file does not have


def stored(default=None, *, check: Callable[[object], bool], what: str, key: str | None = None,
           required: bool = False, factory: Callable | None = None, to_file: Callable | None = None,
           from_file: Callable | None = None):
    """A field of the run state that checkpoints keep.

    `check` is applied to the value as the file holds it (before `from_file`), and `what` is the
    clause naming what it must be; `key` is the file's name for it (the field's name by default);
    `required`: a file of ours without it is damaged (otherwise it loads with the default)."""
    meta = {"stored": True, "check": check, "what": what, "key": key, "required": required,
            "to_file": to_file, "from_file": from_file}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class EpochSums:
    """An epoch's running training sums over every process: what a mid-epoch checkpoint keeps."""

    loss_n: float = 0.0  # sum of loss * batch size
    correct: float = 0.0
    samples: float = 0.0
    seconds: float = 0.0

    def as_list(self) -> list[float]:
        return [self.loss_n, self.correct, self.samples, self.seconds]

    @classmethod
    def from_list(cls, values) -> "EpochSums":
        return cls(*(float(v) for v in values))


# --- what each field's value in the file must be --------------------------------------------------

def _name(value) -> bool:
    return value is None or isinstance(value, str) and 0 < len(value) <= 100


def _epoch_in_file(value) -> bool:  # the last finished epoch; -1 before the first
    return is_int(value) and -1 <= value < MAX_EPOCH


def _step(value) -> bool:
    return is_int(value) and 0 <= value < MAX_STEP


def _sums(value) -> bool:
    return value is None or isinstance(value, (list, tuple)) and len(value) == 4 and all(
        is_number(x) and 0 <= x <= 1e18 for x in value)


def _step_samples(value) -> bool:
    return value is None or is_int(value) and 0 < value <= MAX_SAMPLES


def _percent(value) -> bool:
    return value is None or is_number(value) and 0 <= value <= 100


def _plain(value) -> bool:
    """A setting's recorded value: a primitive, or a list of primitives (a flag with nargs)."""
    primitive = (bool, int, float, str, type(None))
    return isinstance(value, primitive) or isinstance(value, list) and len(value) <= 4096 and all(
        isinstance(v, primitive) for v in value)


def _settings(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and _plain(v) for k, v in value.items())


def _task_state(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and (v is None or is_number(v))
                                           for k, v in value.items()) and _percent(value.get("last_acc1"))


def _records(value) -> bool:
    """Provenance: one record per segment (common.provenance.segment), JSON-like and small, with `code` and
    `versions` the mappings that a resume compares."""
    return isinstance(value, list) and len(value) <= 10_000 and all(
        isinstance(r, dict) and plain_tree(r, max_nodes=100_000, max_depth=8)
        and (r.get("code") is None or isinstance(r["code"], dict))
        and (r.get("versions") is None or isinstance(r["versions"], dict) and all(
            v is None or isinstance(v, (str, int, float)) for v in r["versions"].values()))
        for r in value)


@dataclass
class RunState:
    """Where a run stands (the next epoch and its batches already trained, with that epoch's running sums
    and the generators' states there) and what it has recorded (accuracies, settings, provenance)."""

    task: str | None = stored(check=_name, what="task must be a name")  # the task that wrote it
    epoch: int = stored(0, check=_epoch_in_file, what=f"epoch must be an integer from -1 to {MAX_EPOCH - 1}",
                        required=True, to_file=lambda e: e - 1, from_file=lambda e: e + 1)  # next to train, 0-based
    step: int = stored(0, check=_step, what="step must be a non-negative integer")  # optimizer steps of it trained
    epoch_sums: EpochSums | None = stored(  # that epoch's running sums at `step`
        check=_sums, what="epoch_sums must be 4 non-negative numbers (and are needed mid-epoch)",
        to_file=lambda s: s.as_list() if s is not None else None,
        from_file=lambda v: EpochSums.from_list(v) if v is not None else None)
    step_samples: int | None = stored(  # samples per optimizer step (batch x processes x --accum-steps) of its run
        check=_step_samples, what="step_samples must be a positive integer (and is needed mid-epoch)")
    best_acc1: float | None = stored(check=_percent, what="the best accuracy must be a percentage")
    settings: dict = stored(check=_settings, what="args must be a dict of settings with plain values", key="args",
                            factory=dict)  # every setting of the run
    model_settings: dict = stored(check=_settings, what="model_settings must map names to plain values",
                                  factory=dict)  # those that define the network
    last_acc1: float | None = stored(check=_task_state, what="task_state must map names to numbers (the last "
                                     "accuracy a percentage)", key="task_state",
                                     to_file=lambda a: {"last_acc1": a}, from_file=lambda d: d.get("last_acc1"))
    rng: dict | None = stored(check=lambda v: v is None or rng_ok(v), what="rng must hold generator states")
    provenance: list = stored(check=_records, what="provenance must be a list of records",
                              factory=list)  # one record per segment of the run

    @property
    def position(self) -> tuple[int, int]:
        """(the next epoch to train, its batches already trained): what a resume continues from."""
        return (self.epoch, self.step)

    def where(self) -> str:
        return f"epoch {self.epoch + 1}, step {self.step}" if self.step else f"end of epoch {self.epoch}"

    @property
    def recorded_settings(self) -> dict:
        """The settings the run was made with (model settings included)."""
        return {**self.settings, **self.model_settings}

    def finish_epoch(self, test_acc1: float) -> bool:
        """Record an evaluated epoch; True when it is the best so far."""
        is_best = self.best_acc1 is None or test_acc1 > self.best_acc1
        self.best_acc1 = test_acc1 if is_best else self.best_acc1
        self.last_acc1 = test_acc1
        self.epoch, self.step, self.epoch_sums, self.rng = self.epoch + 1, 0, None, None
        return is_best

    # --- the file boundary -----------------------------------------------------------------------

    @classmethod
    def stored_fields(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.metadata.get("stored")]

    def to_record(self) -> dict:
        """The fields as the file keeps them, by name."""
        record = {}
        for f in self.stored_fields():
            value = getattr(self, f.name)
            convert = f.metadata["to_file"]
            record[f.metadata["key"] or f.name] = convert(value) if convert is not None else value
        return record

    @classmethod
    def from_record(cls, record: dict, complete: bool = True) -> tuple["RunState", list[str]]:
        """The state a file's record holds, and what is wrong with it (one clause each); a field whose value
        fails its check keeps its default. `complete`: a record of ours, which must have the required fields
        (another program's file gives what it has)."""
        values, problems = {}, []
        for f in cls.stored_fields():
            meta = f.metadata
            raw = record.get(meta["key"] or f.name, _ABSENT)
            if raw is _ABSENT:
                if meta["required"] and complete:
                    problems.append(f"{meta['what']} (found nothing)")
                continue
            if not meta["check"](raw):
                problems.append(f"{meta['what']} (found {show(raw)})")
                continue
            values[f.name] = meta["from_file"](raw) if meta["from_file"] is not None else raw
        state = cls(**values)
        if state.step and not problems:  # a mid-epoch checkpoint goes on from its sums and step size
            if state.epoch_sums is None:
                problems.append("epoch_sums must be 4 non-negative numbers (and are needed mid-epoch) (found None)")
            if state.step_samples is None:
                problems.append("step_samples must be a positive integer (and is needed mid-epoch) (found None)")
        return state, problems

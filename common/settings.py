"""A run's settings, resolved once and then frozen.

Three sources meet here, once, before anything is built: the command line (with which flags
it gave explicitly), one of our checkpoints (the settings it recorded), and a checkpoint of
the original repository (the settings its tensors tell: `Task.infer_settings`). Each flag
declared its kind and range where it was declared (`common.cli`); this module applies them:

- MODEL settings define the network: taken from the checkpoint; an explicit flag that
  contradicts it is refused, naming both values.
- RECIPE settings define the training: taken from the checkpoint unless given explicitly,
  so a resumed run continues with what it was trained with, also after a default changed.
- INVOCATION settings belong to this one command: never taken from a checkpoint.

Every value, whichever source it came from, is checked against its flag's type, choices and
bounds; what comes out is a `Settings` mapping that cannot be changed. A list-valued flag
(nargs) holds a tuple here and a list in a checkpoint; `resolve` merges the command line with
a checkpoint, once, for training and --test-only alike.
"""
import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .cli import INVOCATION, MODEL, Bounds, RecipeParser, takes_many, value_type
from .errors import UserError

if TYPE_CHECKING:  # the task and the checkpoint hand their data in; neither is imported here
    from .checkpoint import Checkpoint
    from .task import Task

# Every run before --drop-last existed dropped the last partial batch; none accumulated gradients.
LEGACY = {"drop_last": True, "accum_steps": 1}


@dataclass(frozen=True)
class Flag:
    """What a setting may hold, read off its argparse action."""

    dest: str
    name: str  # as the user types it: --batch-size
    kind: str
    value_type: type  # bool, int, float or str: of each value where the flag takes several
    nullable: bool  # None is a value (the flag's default is None)
    choices: tuple | None
    bounds: Bounds | None
    many: bool = False  # a list of values (nargs '+', '*' or a count): a tuple here, a list in a checkpoint
    count: int | None = None  # how many values, where nargs is a number
    at_least: int = 0  # how many values at least ('+': 1)

    @classmethod
    def of(cls, action: argparse.Action) -> "Flag":
        long = [o for o in action.option_strings if o.startswith("--")] or action.option_strings
        return cls(action.dest, long[0], getattr(action, "kind", "recipe"), value_type(action), action.default is None,
                   tuple(action.choices) if action.choices is not None else None, getattr(action, "bounds", None),
                   takes_many(action), action.nargs if takes_many(action) and isinstance(action.nargs, int) else None,
                   1 if action.nargs == "+" else 0)

    def normalize(self, value):
        """A list-valued setting as a tuple (settings are frozen; a checkpoint brings a list)."""
        return tuple(value) if self.many and isinstance(value, list) else value

    def values(self, value) -> tuple:
        """The setting's values, one or several."""
        return tuple(value) if self.many and isinstance(value, (list, tuple)) else (value,)

    def problem(self, value) -> str | None:
        """Why `value` cannot be this setting's value, or None when it can."""
        if value is None:
            return None if self.nullable else "it needs a value"
        if self.many:
            if not isinstance(value, (list, tuple)) or len(value) > 4096:
                return "it must be a list of values"
            if self.count is not None and len(value) != self.count or len(value) < self.at_least:
                return f"it takes {self.count if self.count is not None else f'at least {self.at_least}'} values"
            for item in value:
                problem = self._one_problem(item)
                if problem is not None:
                    return f"each value: {problem}"
            return None
        return self._one_problem(value)

    def _one_problem(self, value) -> str | None:
        if value is None:
            return "it needs a value"
        if self.value_type is bool:
            ok = isinstance(value, bool)
        elif self.value_type is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.value_type is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            return "it must be " + {float: "a number", int: "an integer", bool: "true or false"}.get(
                self.value_type, "a string")
        if self.choices is not None and value not in self.choices:
            return f"choose {', '.join(map(str, self.choices))}"
        if self.bounds is not None and value not in self.bounds:
            return f"it must lie {self.bounds}"
        return None


class Settings(Mapping):
    """The settings of one invocation: a read-only mapping with attribute access (`settings.epochs`).

    `explicit` holds the settings the command line gave; `flags` what each may hold. `replace` gives a
    changed copy; nothing changes one in place.
    """

    __slots__ = ("_values", "flags", "explicit")

    def __init__(self, values: Mapping, flags: Mapping[str, Flag], explicit: frozenset = frozenset()):
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "flags", dict(flags))
        object.__setattr__(self, "explicit", frozenset(explicit))

    def __getattr__(self, name):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError(f"Settings are frozen; use replace({name}=...)")

    def __delattr__(self, name):
        raise AttributeError("Settings are frozen")

    def __getitem__(self, key):
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Settings({self._values!r})"

    def replace(self, **changes) -> "Settings":
        unknown = set(changes) - set(self._values)
        if unknown:
            raise KeyError(f"no such setting: {', '.join(sorted(unknown))}")
        return Settings({**self._values, **changes}, self.flags, self.explicit)

    def of_kind(self, kind: str) -> dict:
        return {k: v for k, v in self._values.items() if k in self.flags and self.flags[k].kind == kind}

    def record(self, kind: str | None = None) -> dict:
        """What checkpoints and args.txt keep: every setting (or those of one kind) as a primitive, a list-valued
        one as a list (the parser admits no other flag: common.cli.unrecordable)."""
        kept = self.of_kind(kind) if kind is not None else self._values
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in kept.items()}


def from_command_line(parser: RecipeParser, argv=None) -> Settings:
    """The command line's settings, checked (argparse exits 2 on what it can tell; the rest raises UserError)."""
    values = vars(parser.parse_args(argv))
    flags = {a.dest: Flag.of(a) for a in parser._actions if a.dest != "help"}
    explicit = parser.explicit_dests(argv)
    values = {k: flags[k].normalize(v) if k in flags else v for k, v in values.items()}
    for dest, value in values.items():  # a default is the task's own: one its flag cannot hold is a bug there
        problem = flags[dest].problem(value) if dest in flags and dest not in explicit else None
        if problem is not None:
            raise ValueError(f"{flags[dest].name}'s default {value!r} cannot be recorded and restored: {problem}.")
    settings = Settings(values, flags, explicit)
    check(settings)
    if settings.get("amp", False) is None:  # mixed precision by default where it pays: on CUDA
        settings = settings.replace(amp=torch.device(settings.device).type == "cuda")
    return settings


def check(settings: Settings) -> None:
    """One UserError naming every value out of its flag's range, and the combinations that cannot run."""
    bad = []
    for dest, flag in settings.flags.items():
        if dest in settings and flag.bounds is not None:
            value = settings[dest]
            if value is not None and any(v not in flag.bounds for v in flag.values(value)):
                bad.append(f"{flag.name} must lie {flag.bounds} (got {_show(value)})")
    if settings.get("warmup_epochs", 0) and settings.warmup_epochs >= settings.epochs:
        bad.append("--warmup-epochs must be fewer than --epochs")
    name = settings.get("run_name")
    if name is not None and (not name or name in (".", "..") or "/" in name or "\\" in name
                             or not name.isprintable() or len(name.encode()) > 255):
        bad.append(f"--run-name {_show(name)} must be a plain folder name (no '/', not '.' or '..', printable, at "
                   "most 255 bytes): the run directory is made inside --output-dir")
    if settings.get("test_only") and not settings.get("resume"):
        bad.append("--test-only needs --resume CHECKPOINT (the weights to evaluate)")
    if "device" in settings:
        try:
            if torch.device(settings.device).type not in ("cpu", "cuda"):
                bad.append(f"--device {settings.device} is not supported (cpu or cuda[:N])")
        except (RuntimeError, TypeError):
            bad.append(f"--device {settings.device!r} is not a device (cpu or cuda[:N])")
    if bad:
        raise UserError(f"{'; '.join(bad)}.")


def adopt_recorded(settings: Settings, recorded: Mapping, source: str) -> tuple[Settings, list[str]]:
    """Take the settings one of our checkpoints recorded, where the command line did not give them.

    An explicit flag that contradicts a MODEL setting of the file is refused; other explicit flags
    (--epochs to extend a run, say) win; INVOCATION settings are never taken. A recorded value that
    its flag cannot hold means a damaged file. Returns the new settings and the names taken.
    """
    changes = {}
    for key, value in recorded.items():
        flag = settings.flags.get(key)
        if flag is None or flag.kind == INVOCATION or key not in settings:
            continue  # a setting this version no longer has, or one of the command that wrote the file
        value = flag.normalize(value)
        problem = flag.problem(value)
        if problem is not None:
            raise UserError(f"Checkpoint {source} records {key}={_show(value)}, which is not a valid value for "
                            f"{flag.name} ({problem}); the file is damaged, or from another task or program.")
        if key in settings.explicit:
            if flag.kind == MODEL and value != settings[key]:
                raise UserError(f"{flag.name} {_typed(settings[key])} contradicts checkpoint {source}, whose model was "
                                f"built with {key}={_typed(value)}; leave the flag out to use the file's.")
            continue
        if value != settings[key]:
            changes[key] = value
    return settings.replace(**changes), sorted(changes)


def adopt_inferred(settings: Settings, inferred: Mapping, source: str) -> tuple[Settings, list[str]]:
    """The MODEL settings another program's checkpoint tells through its tensors, where the command line
    did not give them; an explicit flag that contradicts them is refused."""
    changes = {}
    for key, value in inferred.items():
        flag = settings.flags[key]
        value = flag.normalize(value)
        problem = flag.problem(value)
        if problem is not None:
            raise UserError(f"Checkpoint {source}: its tensors say {key}={_show(value)}, which {flag.name} cannot "
                            f"take ({problem}).")
        if value == settings[key]:
            continue
        if key in settings.explicit:
            raise UserError(f"{flag.name} {_typed(settings[key])} contradicts checkpoint {source}, whose tensors say "
                            f"{key}={_typed(value)}; leave the flag out to use the file's.")
        changes[key] = value
    return settings.replace(**changes), sorted(changes)


def _typed(value) -> str:
    """A setting's value as the command line gives it (a list-valued one as its values)."""
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- the command line merged with a checkpoint -------------------------------------------------

def resolve(task: "Task", cli: Settings, ckpt: "Checkpoint | None", told: list | None = None) -> Settings:
    """The command line merged with a checkpoint's settings: recorded (ours) or told by its tensors (others).

    `told`, when given, collects one phrase per setting taken from the file (for --test-only's report)."""
    told = told if told is not None else []
    if ckpt is None:
        settings = cli
    elif ckpt.layout == "ours":
        if ckpt.state.task is not None and ckpt.state.task != task.name:
            raise UserError(f"Checkpoint {ckpt.path} is of the {ckpt.state.task} task, not {task.name}; use "
                            f"{ckpt.state.task}/train.py.")
        recorded = dict(ckpt.state.recorded_settings)
        if task.upgrade_recorded is not None:
            recorded = task.upgrade_recorded(recorded, ckpt.state_dict)
        settings, taken = adopt_recorded(cli, {**legacy_settings(task), **recorded}, str(ckpt.path))
        told += [f"{k}={settings[k]}" for k in settings.flags if settings.flags[k].kind == MODEL and k in recorded]
        told[-1:] = [f"{told[-1]} (recorded in it)"] if told else []
    else:
        inferred = task.infer_settings(ckpt.state_dict) if task.infer_settings is not None else {}
        settings, taken = adopt_inferred(cli, inferred, str(ckpt.path))
        told += [f"{k}={settings[k]}" for k in inferred]
        told[-1:] = [f"{told[-1]} (from its tensors)"] if told else []
        settings = _settings_the_file_cannot_tell(task, settings, ckpt, told)
    if settings is not cli:
        check(settings)
    if task.check_settings is not None:
        task.check_settings(settings)
    return settings


def _settings_the_file_cannot_tell(task: "Task", settings: Settings, ckpt: "Checkpoint", told: list) -> Settings:
    """A setting another program's file cannot tell (a CIFAR10-DVS file's T): from the command line, or from the
    manifest.json that scripts/download_checkpoints.py wrote beside the file; never guessed."""
    missing = [k for k in task.file_cannot_tell if k not in settings.explicit]
    if not missing:
        return settings
    known = _manifest_settings(ckpt.path)
    found = {k: known[k] for k in missing if k in known}
    if found:
        settings, _ = adopt_inferred(settings, found, f"{ckpt.path} (its manifest.json)")
        told += [f"{k}={v} (from manifest.json beside it)" for k, v in found.items()]
    for key in missing:
        if key not in found:
            flag = settings.flags[key]
            choices = task.file_cannot_tell[key]
            raise UserError(f"Checkpoint {ckpt.path} ({ckpt.layout} layout) cannot tell its {key}; give {flag.name} "
                            f"(the paper's runs: {', '.join(map(str, choices))}), or fetch the file with "
                            "scripts/download_checkpoints.py, whose manifest.json records it.")
    return settings


def _manifest_settings(path: Path | None) -> dict:
    """The settings scripts/download_checkpoints.py recorded for a file in the manifest.json beside it."""
    if path is None:
        return {}
    try:
        with (Path(path).parent / "manifest.json").open("rb") as f:
            files = json.loads(f.read(1 << 20)).get("files", {})
        entry = files.get(Path(path).name, {}) if isinstance(files, dict) else {}
        settings = entry.get("settings", {}) if isinstance(entry, dict) else {}
    except (OSError, ValueError, RecursionError, AttributeError):
        return {}
    return settings if isinstance(settings, dict) else {}


def legacy_settings(task: "Task") -> dict:
    """The values our checkpoints from before a setting existed were trained with."""
    return {**LEGACY, **task.legacy_settings}

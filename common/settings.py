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
bounds; what comes out is a `Settings` mapping that cannot be changed.
"""
import argparse
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .cli import INVOCATION, MODEL, Bounds, RecipeParser
from .errors import UserError

# Every run before --drop-last existed dropped the last partial batch.
LEGACY = {"drop_last": True}
_PRIMITIVE = (bool, int, float, str, type(None))


@dataclass(frozen=True)
class Flag:
    """What a setting may hold, read off its argparse action."""

    dest: str
    name: str  # as the user types it: --batch-size
    kind: str
    value_type: type  # bool, int, float or str
    nullable: bool  # None is a value (the flag's default is None)
    choices: tuple | None
    bounds: Bounds | None

    @classmethod
    def of(cls, action: argparse.Action) -> "Flag":
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
            value_type = bool
        else:
            value_type = action.type if action.type in (int, float) else str
        long = [o for o in action.option_strings if o.startswith("--")] or action.option_strings
        return cls(action.dest, long[0], getattr(action, "kind", "recipe"), value_type, action.default is None,
                   tuple(action.choices) if action.choices is not None else None, getattr(action, "bounds", None))

    def problem(self, value) -> str | None:
        """Why `value` cannot be this setting's value, or None when it can."""
        if value is None:
            return None if self.nullable else "it needs a value"
        if self.value_type is bool:
            ok = isinstance(value, bool)
        elif self.value_type is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.value_type is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            return f"it must be {'a number' if self.value_type is float else f'a {self.value_type.__name__}'}"
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

    def record(self) -> dict:
        """What checkpoints and args.txt keep: every setting, as JSON-safe primitives."""
        return {k: (v if isinstance(v, _PRIMITIVE) else str(v)) for k, v in self._values.items()}


def from_command_line(parser: RecipeParser, argv=None) -> Settings:
    """The command line's settings, checked (argparse exits 2 on what it can tell; the rest raises UserError)."""
    values = vars(parser.parse_args(argv))
    flags = {a.dest: Flag.of(a) for a in parser._actions if a.dest != "help"}
    explicit = parser.explicit_dests(argv)
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
            if value is not None and value not in flag.bounds:
                bad.append(f"{flag.name} must lie {flag.bounds} (got {value!r})")
    if settings.get("warmup_epochs", 0) and settings.warmup_epochs >= settings.epochs:
        bad.append("--warmup-epochs must be fewer than --epochs")
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
        problem = flag.problem(value)
        if problem is not None:
            raise UserError(f"Checkpoint {source} records {key}={_show(value)}, which is not a valid value for "
                            f"{flag.name} ({problem}); the file is damaged, or from another task or program.")
        if key in settings.explicit:
            if flag.kind == MODEL and value != settings[key]:
                raise UserError(f"{flag.name} {settings[key]} contradicts checkpoint {source}, whose model was built "
                                f"with {key}={value}; leave the flag out to use the file's.")
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
        problem = flag.problem(value)
        if problem is not None:
            raise UserError(f"Checkpoint {source}: its tensors say {key}={_show(value)}, which {flag.name} cannot "
                            f"take ({problem}).")
        if value == settings[key]:
            continue
        if key in settings.explicit:
            raise UserError(f"{flag.name} {settings[key]} contradicts checkpoint {source}, whose tensors say "
                            f"{key}={value}; leave the flag out to use the file's.")
        changes[key] = value
    return settings.replace(**changes), sorted(changes)


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."

"""The flags every task shares, with the original repository's spellings as aliases.

Long `--kebab-case` flags; the original scripts' flags (`-data-dir`, `-amp`, `-opt`, `-b`,
`-j`, `-epochs`, `-T`, `-device`, `-resume`, ...) parse to the same options, so their
published commands run unchanged. A task passes its paper defaults to `build_parser` and
adds only its own flags.

Each flag declares, where it is declared, what kind of setting it is and the values it may
take (`kind=`, `bounds=`): MODEL settings define the network (a checkpoint's value is taken,
a contradicting flag refused), RECIPE settings define the training (a checkpoint's value is
taken unless the command line gives one), INVOCATION settings belong to this one command
(never taken from a checkpoint). `common.settings` reads these declarations; nothing in
`common/` names a task's own flag.
"""
import argparse
import math
import os
import typing
from dataclasses import dataclass

import torch

MODEL, RECIPE, INVOCATION = "model", "recipe", "invocation"


@dataclass(frozen=True)
class Bounds:
    """The closed range [low, high] a numeric setting must lie in (`low_open`: above `low`, not at it)."""

    low: float
    high: float
    low_open: bool = False

    def __contains__(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        return (value > self.low if self.low_open else value >= self.low) and value <= self.high

    def __str__(self) -> str:
        low = f"above {self.low:g}" if self.low_open else f"from {self.low:g}"
        return f"{low} to {self.high:g}"


POSITIVE_INT = Bounds(1, 10**6)  # epochs, steps, sizes: a million is far past any real run
POSITIVE_RATE = Bounds(0, 100, low_open=True)  # learning rates: above 100 nothing trains


# The argparse actions whose values a checkpoint records and a resume restores exactly: one value, a
# switch, a count, or a list of values (nargs). `append` and custom actions are refused where they are
# declared (a custom action that stores nothing says so with `stores_nothing = True`).
_RECORDABLE_ACTIONS = (argparse._StoreAction, argparse._StoreTrueAction, argparse._StoreFalseAction,
                       argparse.BooleanOptionalAction, argparse._StoreConstAction, argparse._CountAction)
VALUE_TYPES = (bool, int, float, str)


def value_type(action: argparse.Action) -> type:
    """The type of a flag's values: bool for switches, else what its `type=` gives (str without one; a function
    says it by its return annotation, as `neuron_name(name: str) -> str` does)."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        return bool
    if isinstance(action, argparse._CountAction):
        return int
    if isinstance(action, argparse._StoreConstAction):
        return type(action.const) if isinstance(action.const, VALUE_TYPES) else object
    if action.type is None or action.type in VALUE_TYPES:
        return action.type or str
    try:
        returns = typing.get_type_hints(action.type).get("return")
    except (TypeError, NameError):
        returns = None
    return returns if returns in VALUE_TYPES else object


def unrecordable(action: argparse.Action) -> str | None:
    """Why a flag's values could not be recorded in a checkpoint and restored exactly on --resume, or None."""
    if isinstance(action, (argparse._HelpAction, argparse._VersionAction)) or (
            getattr(action, "stores_nothing", False) and action.default is argparse.SUPPRESS):
        return None
    if not isinstance(action, _RECORDABLE_ACTIONS):
        return (f"its action ({type(action).__name__}) is not one whose values can be recorded (store, store_true, "
                "store_false, BooleanOptionalAction, store_const, count); for several values use nargs='+'")
    if isinstance(action, argparse._StoreAction) and (action.nargs in (argparse.REMAINDER, argparse.PARSER) or (
            isinstance(action.nargs, int) and action.nargs < 1)):
        return f"nargs={action.nargs!r} cannot be recorded (use None, '?', '+', '*' or a count)"
    if value_type(action) is object:
        return ("its type= must be int, float or str, or a function annotated to return one of them (so that its "
                "value is recorded and restored as it was)")
    return None


def takes_many(action: argparse.Action) -> bool:
    """Whether the flag holds a list of values (kept as a tuple in the settings, as a list in a checkpoint)."""
    return isinstance(action, argparse._StoreAction) and (action.nargs in ("+", "*") or isinstance(action.nargs, int))


class _DeclaresKinds:
    """`add_argument(..., kind=RECIPE, bounds=None)`: the kind and range travel on the argparse action. A flag
    whose values a checkpoint could not record and restore exactly is refused here, with the reason."""

    def add_argument(self, *names, kind: str = RECIPE, bounds: Bounds | None = None, **kwargs):
        if kind not in (MODEL, RECIPE, INVOCATION):
            raise ValueError(f"kind must be MODEL, RECIPE or INVOCATION, not {kind!r}")
        action = super().add_argument(*names, **kwargs)
        problem = unrecordable(action)
        if problem is not None:
            self._remove_action(action)
            for option in action.option_strings:
                self._option_string_actions.pop(option, None)
            raise ValueError(f"flag {'/'.join(action.option_strings) or action.dest}: {problem}.")
        action.kind, action.bounds = kind, bounds
        return action


class _Group(_DeclaresKinds, argparse._ArgumentGroup):
    pass


class RecipeParser(_DeclaresKinds, argparse.ArgumentParser):
    """An ArgumentParser whose flags carry their kind and bounds, and which records which options the
    command line gave explicitly (`explicit_dests`): a resumed run tells a setting the user typed from
    one that is only the task's default, and takes the checkpoint's value for the latter."""

    def add_argument_group(self, *args, **kwargs):
        group = _Group(self, *args, **kwargs)
        self._action_groups.append(group)
        return group

    def explicit_dests(self, argv) -> frozenset:
        given = argparse.Namespace()
        saved = [(a, a.default) for a in self._actions]
        saved_defaults, self._defaults = self._defaults, {}
        try:
            for action, _ in saved:
                action.default = argparse.SUPPRESS
            super().parse_known_args(argv, given)
        finally:
            self._defaults = saved_defaults
            for action, default in saved:
                action.default = default
        return frozenset(vars(given))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option shows its default (the task's recipe value) once, also those a help text names."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def build_parser(description: str, **defaults) -> RecipeParser:
    p = RecipeParser(description=description, allow_abbrev=False, formatter_class=HelpFormatter)
    p._optionals.title = "task settings"  # the flags a task adds itself
    g = p.add_argument_group("data and output")
    g.add_argument("--data-dir", "-data-dir", "--data-path", dest="data_dir", default="./data", kind=INVOCATION,
                   help="dataset root")
    g.add_argument("--output-dir", "-out-dir", "--out-dir", dest="output_dir", default="./runs", kind=INVOCATION,
                   help="each run gets its own directory below this one")
    g.add_argument("--run-name", default=None, kind=INVOCATION,
                   help="run directory name (default: built from the main settings)")
    g.add_argument("--workers", "-j", dest="workers", type=int, default=min(4, available_cpus()), kind=INVOCATION,
                   bounds=Bounds(0, 256), help="data loading processes per GPU (default: 4, or fewer CPUs)")
    g.add_argument("--print-freq", type=int, default=50, kind=INVOCATION, bounds=Bounds(1, 10**9),
                   help="steps between progress updates (each one waits for the GPU); off a terminal, one line each")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", "-epochs", "--epoch", dest="epochs", type=int, default=100, bounds=POSITIVE_INT,
                   help="epochs of the run")
    g.add_argument("--batch-size", "-b", dest="batch_size", type=int, default=128, bounds=Bounds(1, 65536),
                   help="batch size per process")
    g.add_argument("--accum-steps", type=int, default=1, bounds=Bounds(1, 1024),
                   help="micro-batches per optimizer step: their gradients add up to those of one batch K times as "
                        "large (the batch of K times as many processes), while BatchNorm sees one micro-batch")
    g.add_argument("--opt", "-opt", choices=["sgd", "adamw"], default="sgd", help="optimizer")
    g.add_argument("--lr", "-lr", type=float, default=0.1, bounds=POSITIVE_RATE,
                   help="learning rate at the start of the cosine schedule")
    g.add_argument("--momentum", "-momentum", type=float, default=0.9, bounds=Bounds(0, 1 - 1e-9),
                   help="SGD momentum")
    g.add_argument("--weight-decay", "--wd", dest="weight_decay", type=float, default=0.0, bounds=Bounds(0, 10),
                   help="weight decay")
    g.add_argument("--cos-lr-T", "--cos_lr_T", dest="cos_lr_T", type=int, default=None, bounds=POSITIVE_INT,
                   help="period of the cosine schedule in epochs (default: --epochs)")
    g.add_argument("--amp", "-amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision in training; evaluation is always fp32 (None: on with CUDA, off on CPU)")
    g.add_argument("--amp-dtype", choices=["float16", "bfloat16"], default=None,
                   help="the --amp precision (None: float16 on CUDA, with a gradient scaler; bfloat16 on CPU)")
    g.add_argument("--clip-grad", type=float, default=None, metavar="NORM", bounds=Bounds(0, 1e6, low_open=True),
                   help="clip the gradients' global L2 norm to NORM (timm's dispatch_clip_grad); None: no clipping")
    g.add_argument("--warmup-epochs", type=int, default=0, bounds=Bounds(0, 10**6),
                   help="linear warmup from --warmup-lr before the cosine (timm's CosineLRScheduler); 0: the paper's "
                        "plain cosine")
    g.add_argument("--warmup-lr", type=float, default=1e-5, bounds=POSITIVE_RATE,
                   help="learning rate at the start of the warmup")
    g.add_argument("--model-ema", action="store_true",
                   help="keep an exponential moving average of the weights (timm's ModelEmaV3), evaluated and "
                        "saved beside the model")
    g.add_argument("--model-ema-decay", type=float, default=0.9998, bounds=Bounds(0, 1 - 1e-12, low_open=True),
                   help="EMA decay per optimizer step")
    g.add_argument("--drop-last", action=argparse.BooleanOptionalAction, default=True,
                   help="drop each epoch's last partial training batch (the task's original script decides)")
    g.add_argument("--seed", type=int, default=2023, bounds=Bounds(0, 2**63 - 1),
                   help="seeds the model's init, the data order and every augmentation draw")

    g = p.add_argument_group("model")
    g.add_argument("--T", "-T", dest="T", type=int, default=4, kind=MODEL, bounds=Bounds(1, 1024), help="time steps")

    g = p.add_argument_group("running")
    g.add_argument("--device", "-device", default="cuda" if torch.cuda.is_available() else "cpu", kind=INVOCATION,
                   help="under torchrun each process takes cuda:LOCAL_RANK")
    g.add_argument("--resume", "-resume", default=None, metavar="CHECKPOINT", kind=INVOCATION,
                   help="continue a run from its checkpoint (or start from an original-format one); 'auto': the "
                        "run directory these settings name, if it holds a checkpoint, else a new run; an older "
                        "checkpoint with a new --run-name forks a new run from it")
    g.add_argument("--test-only", action="store_true", kind=INVOCATION,
                   help="evaluate --resume's weights on the test set and exit")
    g.add_argument("--sync-bn", action="store_true", kind=INVOCATION,
                   help="synchronise BatchNorm statistics across processes")
    g.add_argument("--channels-last", action="store_true", kind=INVOCATION, help="channels-last activations (GPU)")
    g.add_argument("--deterministic", action="store_true", kind=INVOCATION,
                   help="deterministic GPU kernels (slower): a resumed run then matches an uninterrupted one on GPUs too")
    g.add_argument("--spike-stats", action="store_true", kind=INVOCATION,
                   help="firing rate of every spiking layer, synaptic operations and an energy estimate per sample "
                        "on the test set (TensorBoard spikes/, metrics.jsonl, the --test-only JSON)")
    g.add_argument("--compile", action="store_true", kind=INVOCATION,
                   help="torch.compile the training model (the fused PSN kernels stay single custom ops)")
    g.add_argument("--dist-timeout", type=float, default=10.0, metavar="MINUTES", kind=INVOCATION,
                   bounds=Bounds(0, 10**5, low_open=True),
                   help="under torchrun, how long a process waits for the others in a collective before the run ends "
                        "with an error (a peer that hung or died)")
    g.add_argument("--stop-after", type=int, default=None, metavar="N", kind=INVOCATION, bounds=POSITIVE_INT,
                   help="stop after N epochs of this invocation (split a long run into jobs); resume continues")
    p.set_defaults(**defaults)
    return p


def neuron_name(name: str) -> str:
    """argparse type of --neuron: a registry name, or one of the original repository's names for it."""
    from .neuron_registry import canonical_neuron_name

    try:
        return canonical_neuron_name(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_neuron_flags(p: argparse.ArgumentParser, default: str = "psn", order: int | None = None) -> None:
    """--neuron (any entry of common.neuron_registry; the original names work too) and --order (k of the
    masked and sliding PSN)."""
    from .neuron_registry import NEURON_NAMES

    p.add_argument("--neuron", "-neu", type=neuron_name, choices=NEURON_NAMES, default=default, kind=MODEL,
                   help="spiking neuron (the original names work too)")
    p.add_argument("--order", "-P", dest="order", type=int, default=order, kind=MODEL, bounds=Bounds(1, 1024),
                   help="k of the masked and sliding PSN")


class _Ignored(argparse.Action):
    stores_nothing = True

    def __call__(self, parser, namespace, values, option_string=None):
        pass


def accept_and_ignore(p: argparse.ArgumentParser, *names: str, **kwargs) -> None:
    """An original flag that is accepted (its command keeps working) but changes nothing here."""
    p.add_argument(*names, action=_Ignored, default=argparse.SUPPRESS, help=argparse.SUPPRESS, kind=INVOCATION,
                   **kwargs)


def add_cifar_flags(p: argparse.ArgumentParser, datasets: tuple[str, ...]) -> None:
    """Flags of the two CIFAR tasks: which data, whether to download it, the loss's smoothing, width."""
    g = p.add_argument_group("CIFAR")
    g.add_argument("--dataset", choices=datasets, default=datasets[0],
                   help="digits: scikit-learn's 8x8 digits as 32x32 RGB, no download (quick start, tests)")
    g.add_argument("--download", action="store_true", kind=INVOCATION,
                   help="download the dataset into --data-dir if missing")
    g.add_argument("--augment", choices=["paper", "light"], default="paper",
                   help="paper: flip, TrivialAugmentWide, random erasing, mixup/cutmix; light: 2-pixel shifts only "
                        "(small data such as digits; not the paper's)")
    g.add_argument("--label-smoothing", type=float, default=0.1, bounds=Bounds(0, 1 - 1e-9),
                   help="of the training loss (none at test)")
    g.add_argument("--channels", "-channels", type=int, default=256, kind=MODEL, bounds=Bounds(1, 8192),
                   help="width of the convolutions")


def recipe_tag(settings) -> str:
    """The part of a run name every task shares, as the original scripts wrote it: e1024_b128_sgd_lr0.1_c256_amp."""
    amp = settings.amp if settings.amp is not None else str(settings.device).startswith("cuda")
    channels = f"_c{settings.channels}" if "channels" in settings else ""
    return f"e{settings.epochs}_b{settings.batch_size}_{settings.opt}_lr{settings.lr}{channels}{'_amp' if amp else ''}"

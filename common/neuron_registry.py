"""Every neuron a task can name on its command line, one entry each.

An entry says how to build the neuron as the paper configured it, which module classes it
builds, whether it can run one step at a time (`--streaming`), the original repository's
names for it, how the original checkpoints named its tensors, what its tensors look like in
a state dict, and what happens to it at each epoch's start. The tasks' `--neuron` flags, the
checkpoint loader, `--spike-stats` and the table tool all read this one registry: adding a
neuron is adding its entry (and its class, where it is new).
"""
import inspect
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
from spikingjelly.activation_based import neuron as sj
from spikingjelly.activation_based import surrogate

from .baselines import GLIF, LIFNoReset, SpikingJellyGLIF
from .neurons import PSN, MaskedPSN, SlidingPSN


@dataclass(frozen=True)
class Neuron:
    name: str
    label: str  # in tables and plots
    # A multi-step module, with its own ATan surrogate where it has one, from the settings it names among
    # T, order, exp_init and channels, as keyword arguments: `build=lambda T, order: MaskedPSN(k=order, T=T)`.
    build: Callable[..., nn.Module]
    module_types: tuple[type, ...]  # what `build` makes: how a module in a network is recognised
    streams: bool = False  # runs one step at a time (single-step mode), so a causal network can stream
    needs_order: bool = False  # the masked / sliding PSN's k (the original's -P)
    aliases: tuple[str, ...] = ()  # the original repository's names
    # Renames the original repository's tensors of one such module, in place: (state dict, 'prefix.', module).
    convert_original: Callable[[dict, str, nn.Module], None] | None = None
    # What a state dict holds under a prefix if it is this neuron: {'T': ..., 'order': ...}, or None.
    identify: Callable[[dict, str], dict | None] | None = None
    # Called on each such module at every epoch's start: (module, epoch, epochs) -> scalars to log.
    on_epoch_start: Callable[[nn.Module, int, int], dict] | None = None
    # The module's effective [T, T] time-mixing matrix (--spike-stats draws it), or None.
    time_weight: Callable[[nn.Module, int], torch.Tensor] | None = None


# --- the PSN family ----------------------------------------------------------------------------

def _rename_fc(sd: dict, p: str, module: nn.Module) -> None:
    """The original PSN (IFNode5) and masked PSN held an nn.Linear(T, T) named `fc` (bias [T])."""
    if f"{p}fc.weight" not in sd:
        return
    sd[f"{p}weight"] = sd.pop(f"{p}fc.weight")
    bias = sd.pop(f"{p}fc.bias", None)
    if bias is not None:
        sd[f"{p}bias"] = bias.reshape(-1, 1)
    for buffer in ("mask0", "mask1"):
        if f"{p}fc.{buffer}" in sd:
            sd[f"{p}{buffer}"] = sd.pop(f"{p}fc.{buffer}")


def _rename_masked(sd: dict, p: str, module: nn.Module) -> None:
    _rename_fc(sd, p, module)
    if f"{p}_lambda_" not in sd and f"{p}weight" in sd:
        # The original kept lambda as a plain attribute; a finished run ends at lambda = 1.
        sd[f"{p}_lambda_"] = torch.tensor(1.0)


def _rename_threshold(sd: dict, p: str, module: nn.Module) -> None:
    """The original sliding PSN called its bias `threshold`."""
    if f"{p}threshold" in sd:
        sd[f"{p}bias"] = sd.pop(f"{p}threshold")


def _rename_glif(sd: dict, p: str, module: nn.Module) -> None:
    """The original wrapped its GLIF in nn.Sequential(unsqueeze, LIFSpike_CW, squeeze): tensors under `1.`."""
    if f"{p}1.alpha" in sd:
        for name, _ in module.named_parameters():
            if f"{p}1.{name}" in sd:
                sd[f"{p}{name}"] = sd.pop(f"{p}1.{name}")


def _tensor(sd: dict, *keys: str):
    return next((sd[k] for k in keys if isinstance(sd.get(k), torch.Tensor)), None)


def _identify_masked(sd: dict, p: str) -> dict | None:
    mask = _tensor(sd, f"{p}fc.mask0", f"{p}mask0")
    if mask is None or mask.dim() != 2 or mask.shape[0] != mask.shape[1] or mask.shape[0] == 0:
        return None
    # mask0 is a band of k ones ending on the diagonal: its last row holds k of them.
    return {"T": mask.shape[0], "order": int(mask[-1].sum().item())}


def _identify_sliding(sd: dict, p: str) -> dict | None:
    weight = _tensor(sd, f"{p}weight")
    if weight is None or weight.dim() != 1 or _tensor(sd, f"{p}threshold", f"{p}bias") is None:
        return None
    return {"order": weight.shape[0]}


def _identify_psn(sd: dict, p: str) -> dict | None:
    weight = _tensor(sd, f"{p}fc.weight", f"{p}weight")
    if weight is None or weight.dim() != 2 or weight.shape[0] != weight.shape[1]:
        return None
    return {"T": weight.shape[0]}


def _masked_lambda(module: MaskedPSN, epoch: int, epochs: int) -> dict:
    lam = MaskedPSN.lambda_schedule(epoch, epochs)
    module.lambda_ = lam
    return {"neuron/lambda": lam}


# --- the registry ------------------------------------------------------------------------------

def _lif_family(cls, **kwargs):
    return lambda: cls(surrogate_function=surrogate.ATan(), step_mode="m", **kwargs)


def _channel_wise(name: str, build):
    def make(T, channels):
        if channels is None:
            raise ValueError(f"{name} is channel-wise: create_neuron needs channels=.")
        return build(T, channels)
    return make


# Order matters where one module could match two entries' types or tensors: the masked PSN is told from
# the PSN by its mask, so it is asked first.
NEURONS: dict[str, Neuron] = {entry.name: entry for entry in (
    Neuron("masked_psn", "masked PSN", module_types=(MaskedPSN,), streams=True, needs_order=True, aliases=("if5pmd8",),
           build=lambda T, order: MaskedPSN(k=order, T=T, surrogate_function=surrogate.ATan(), step_mode="m"),
           convert_original=_rename_masked, identify=_identify_masked, on_epoch_start=_masked_lambda,
           time_weight=lambda m, T: m.masked_weight()),
    Neuron("psn", "PSN", module_types=(PSN,), aliases=("if5",),
           build=lambda T: PSN(T=T, surrogate_function=surrogate.ATan()),
           convert_original=_rename_fc, identify=_identify_psn, time_weight=lambda m, T: m.weight),
    Neuron("sliding_psn", "sliding PSN", module_types=(SlidingPSN,), streams=True, needs_order=True,
           aliases=("mspsn",),
           build=lambda order, exp_init: SlidingPSN(k=order, exp_init=exp_init, surrogate_function=surrogate.ATan(),
                                                    step_mode="m"),
           convert_original=_rename_threshold, identify=_identify_sliding,
           time_weight=lambda m, T: m.gen_gemm_weight(T)),
    # LIF and PLIF: tau 2, soft reset, detached reset; KLIF: soft reset (the paper's baselines).
    Neuron("lif", "LIF", module_types=(sj.LIFNode,), streams=True,
           build=_lif_family(sj.LIFNode, tau=2.0, v_reset=None, detach_reset=True)),
    Neuron("plif", "PLIF", module_types=(sj.ParametricLIFNode,), streams=True, aliases=("plif_torch",),
           build=_lif_family(sj.ParametricLIFNode, init_tau=2.0, v_reset=None, detach_reset=True)),
    Neuron("klif", "KLIF", module_types=(sj.KLIFNode,), streams=True, build=_lif_family(sj.KLIFNode, v_reset=None)),
    # The paper's GLIF is the original repository's gated LIF (multi-step only).
    Neuron("glif", "GLIF", module_types=(GLIF,), convert_original=_rename_glif,
           build=_channel_wise("glif", lambda T, channels: GLIF(T=T, channels=channels))),
    Neuron("lif_no_reset", "LIF without reset", module_types=(LIFNoReset,), streams=True, aliases=("lifnr",),
           build=lambda: LIFNoReset(tau=2.0, surrogate_function=surrogate.ATan())),
    # SpikingJelly's GatedLIFNode, another neuron than the paper's GLIF: for comparison.
    Neuron("glif_sj", "GLIF (SpikingJelly)", module_types=(SpikingJellyGLIF,),
           build=_channel_wise("glif_sj", lambda T, channels: SpikingJellyGLIF(T, channels, surrogate.ATan()))),
)}

# The paper's neurons first, as its tables list them.
NEURON_NAMES = ("psn", "masked_psn", "sliding_psn", "lif", "plif", "klif", "glif", "lif_no_reset", "glif_sj")
NEURON_NAMES = (*NEURON_NAMES, *(name for name in NEURONS if name not in NEURON_NAMES))
NEURON_ALIASES = {alias: entry.name for entry in NEURONS.values() for alias in entry.aliases}


def register(entry: Neuron) -> None:
    """Add a neuron from outside this file (a user's own task): every --neuron flag built after this offers it."""
    global NEURON_NAMES, NEURON_ALIASES
    if entry.name in NEURONS or entry.name in NEURON_ALIASES:
        raise ValueError(f"a neuron named {entry.name!r} is registered already")
    NEURONS[entry.name] = entry
    NEURON_NAMES = (*NEURON_NAMES, entry.name)
    NEURON_ALIASES = {**NEURON_ALIASES, **{alias: entry.name for alias in entry.aliases}}


def canonical_neuron_name(name: str) -> str:
    """A neuron's name in this project, from it or from one of the original repository's names."""
    name = NEURON_ALIASES.get(name, name)
    if name not in NEURONS:
        raise ValueError(f"Unknown neuron {name!r}; choose one of {', '.join(NEURON_NAMES)} "
                         f"(or the original names {', '.join(NEURON_ALIASES)}).")
    return name


def create_neuron(name: str, T: int | None, *, order: int | None = None, exp_init: bool = False,
                  channels: int | None = None) -> nn.Module:
    """A multi-step spiking neuron as the paper configured it, each with its own ATan surrogate.

    `order` is the masked/sliding PSN's k; `channels` the feature count of the channel-wise GLIF;
    T may be None for the neurons that take any number of steps (the sliding PSN, the LIF family).
    """
    entry = NEURONS[canonical_neuron_name(name)]
    if entry.needs_order and order is None:
        raise ValueError(f"{entry.name} needs its order (k, the original's -P).")
    settings = {"T": T, "order": order, "exp_init": exp_init, "channels": channels}
    return entry.build(**_named_by(entry.build, settings))


def _named_by(build: Callable, settings: dict) -> dict:
    """The settings a constructor names among its parameters (all of them where it takes **kwargs)."""
    parameters = inspect.signature(build).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return settings
    unknown = [p.name for p in parameters if p.name not in settings and p.default is inspect.Parameter.empty]
    if unknown:
        raise TypeError(f"a neuron's build takes named settings among {', '.join(settings)}; "
                        f"{', '.join(unknown)} is none of them")
    return {p.name: settings[p.name] for p in parameters if p.name in settings}


def entry_of(module: nn.Module) -> Neuron | None:
    """The registry entry a module of a network belongs to, or None for any other layer."""
    return next((entry for entry in NEURONS.values() if isinstance(module, entry.module_types)), None)


def convert_original_state(state_dict: dict, model: nn.Module) -> dict:
    """A copy of a state dict with the original repository's neuron tensors renamed to ours, module by module."""
    sd = dict(state_dict)
    for name, module in model.named_modules():
        entry = entry_of(module)
        if entry is not None and entry.convert_original is not None:
            entry.convert_original(sd, f"{name}." if name else "", module)
    return sd


def identify(state_dict: dict, prefix: str) -> dict:
    """Which neuron a state dict holds under `prefix` (e.g. 'conv.2.'), in the original naming or ours, and
    what its tensors say: {'neuron', 'T', 'order'} where they tell; {} otherwise."""
    for entry in NEURONS.values():
        found = entry.identify(state_dict, prefix) if entry.identify is not None else None
        if found is not None:
            return {"neuron": entry.name, **found}
    return {}


def start_epoch(model: nn.Module, epoch: int, epochs: int) -> dict:
    """Each neuron's per-epoch change (the masked PSN's lambda schedule); the scalars they report."""
    scalars = {}
    for module in model.modules():
        entry = entry_of(module)
        if entry is not None and entry.on_epoch_start is not None:
            scalars.update(entry.on_epoch_start(module, epoch, epochs))
    return scalars


def streams(model: nn.Module) -> str | None:
    """None if every neuron of `model` can run one step at a time; otherwise the label of one that cannot."""
    for module in model.modules():
        entry = entry_of(module)
        if entry is not None and not entry.streams:
            return entry.label
    return None

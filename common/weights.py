"""Weights from a checkpoint onto a model: prefixes, the original repository's neuron names, and
a clear refusal of the wrong architecture (the missing and unexpected keys named)."""
import torch
import torch.nn as nn

from .checkpoint import Checkpoint, read_checkpoint
from .checkpoint_checks import is_state_dict
from .errors import UserError
from .neuron_registry import convert_original_state, identify

_PREFIXES = ("module.", "_orig_mod.")


def strip_prefixes(state_dict: dict) -> dict:
    """Keys without DataParallel/DDP's `module.` and torch.compile's `_orig_mod.`."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def unwrapped(model: nn.Module) -> nn.Module:
    target = model.module if hasattr(model, "module") else model
    return getattr(target, "_orig_mod", target)


def _list(keys, limit=8) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def neuron_in(state_dict: dict, prefix: str) -> dict:
    """Which neuron a state dict holds under `prefix` (e.g. 'conv.2.'), in the original naming or ours,
    and what its tensors say: {'neuron', 'T', 'order'} where they tell; {} otherwise."""
    return identify(strip_prefixes(state_dict), prefix)


def tensor_shape(state_dict: dict, key: str) -> tuple | None:
    """The shape of `key` in a state dict (DDP / compile prefixes ignored), or None."""
    value = strip_prefixes(state_dict).get(key)
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def checkpoint_classes(model: nn.Module, ckpt: Checkpoint, classes: int) -> int:
    """How many classes the checkpoint's classifier has, where `model` was built for `classes`: the
    leading size of the tensors where the model has `classes` and the file another size with
    the same trailing shape (a classifier's weight and bias). `classes` when nothing says otherwise."""
    sd = convert_original_state(strip_prefixes(ckpt.state_dict), unwrapped(model))
    found = {sd[k].shape[0] for k, v in unwrapped(model).state_dict().items()
             if k in sd and v.dim() >= 1 and v.shape[0] == classes and sd[k].dim() == v.dim()
             and sd[k].shape[0] != classes and sd[k].shape[1:] == v.shape[1:]}
    return found.pop() if len(found) == 1 else classes


def load_model_weights(model: nn.Module, checkpoint) -> Checkpoint:
    """Load a checkpoint (a path or a Checkpoint) into `model`; a mismatch raises UserError naming the keys."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else read_checkpoint(checkpoint)
    target = unwrapped(model)
    sd = convert_original_state(strip_prefixes(ckpt.state_dict), target)
    expected = target.state_dict()
    missing = expected.keys() - sd.keys()
    unexpected = sd.keys() - expected.keys()
    wrong_shape = [f"{k} {tuple(sd[k].shape)} vs {tuple(expected[k].shape)}"
                   for k in expected.keys() & sd.keys() if sd[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"missing keys: {_list(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_list(unexpected)}")
        if wrong_shape:
            parts.append(f"shape mismatches (file vs model): {_list(wrong_shape)}")
        raise UserError(f"Checkpoint {ckpt.path} ({ckpt.layout} layout) does not fit this model "
                        f"({type(target).__name__}); {'; '.join(parts)}.")
    target.load_state_dict(sd)
    return ckpt


def load_state_dict_checked(module: nn.Module, state_dict, path, field_name: str) -> None:
    """Load a checkpoint's state dict field into `module`; anything else than its exact keys and shapes
    is refused in one sentence."""
    expected = module.state_dict()
    if not is_state_dict(state_dict) or state_dict.keys() != expected.keys() or any(
            state_dict[k].shape != expected[k].shape for k in expected):
        raise UserError(f"Checkpoint {path}: its {field_name} does not fit this model.")
    module.load_state_dict(state_dict)


def load_matching(model: nn.Module, path) -> tuple[list[str], list[str], list[str]]:
    """Copy every tensor of a checkpoint whose name and shape match the model's (e.g. an ANN's
    weights into its spiking twin). Returns (copied, skipped from the file, left at init in the model)."""
    ckpt = read_checkpoint(path)
    source = strip_prefixes(ckpt.state_dict)
    target = model.state_dict()
    copied = sorted(k for k in source.keys() & target.keys() if source[k].shape == target[k].shape)
    if not copied:
        raise UserError(f"No tensor of {path} matches the model by name and shape; is it the right network?")
    with torch.no_grad():
        for k in copied:
            target[k].copy_(source[k])
    return copied, sorted(source.keys() - set(copied)), sorted(target.keys() - set(copied))

"""Checkpoints: atomic saves, safe loads, and every layout the released weights come in.

One reading path serves `--resume`, `--test-only` and users' own code:
`read_checkpoint` loads a file with `weights_only=True` (an explicit allow-list,
never arbitrary pickles: released files come from the internet) and names its
layout; `load_model_weights` maps its state dict onto a model, converting the
original repository's neuron names, and refuses a wrong architecture with the
missing and unexpected keys named.

Layouts:
- `ours`: {'format': FORMAT, 'model', 'optimizer', 'lr_scheduler', 'scaler',
  'epoch' (last finished, 0-based), 'best_acc1' (percent), 'args', 'task_state', 'rng'}
- `net` (original cifar10 / sequential_cifar scripts): {'net', 'optimizer',
  'lr_scheduler', 'epoch', 'max_test_acc' (a fraction)}
- `model_dvs` (original CIFAR10-DVS script): {'model', 'optimizer', 'scheduler',
  'epoch', 'best_acc' (percent)}
- `model_imagenet` (original ImageNet script): {'model', 'optimizer', 'lr_scheduler',
  'epoch', 'args' (argparse.Namespace), 'max_test_acc1', 'test_acc5_at_max_test_acc1'}
- `state_dict`: a bare state dict.
Keys may carry `module.` (DataParallel/DDP) or `_orig_mod.` (torch.compile) prefixes.
"""
import argparse
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from common.baselines import GLIF
from common.errors import UserError
from common.neurons import PSN, MaskedPSN, SlidingPSN

FORMAT = "psn-repro/1"
# What a checkpoint may contain beyond tensors and containers of primitives: the
# original ImageNet script pickled its argparse.Namespace.
SAFE_GLOBALS = [argparse.Namespace]
_PREFIXES = ("module.", "_orig_mod.")


def save_checkpoint(obj: dict, path: Path) -> None:
    """Write `obj` to `path` atomically: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@dataclass
class Checkpoint:
    """A checkpoint read from disk, whatever its layout, in this project's terms."""

    path: Path
    layout: str
    state_dict: dict
    optimizer: dict | None = None
    lr_scheduler: dict | None = None
    scaler: dict | None = None
    epoch: int | None = None  # last finished epoch, 0-based
    best_acc1: float | None = None  # percent
    args: dict = field(default_factory=dict)
    task_state: dict = field(default_factory=dict)
    rng: dict | None = None
    model_ema: dict | None = None  # --model-ema's averaged weights


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_checkpoint(path) -> Checkpoint:
    """Load a checkpoint file safely and name its layout; unreadable files raise UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Checkpoint {path} does not exist.")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"Checkpoint {path} holds objects outside the safe allow-list, so it was not loaded: "
                        f"{str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise UserError(f"Checkpoint {path} is not readable (truncated or corrupted?): "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}.") from None

    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        return Checkpoint(path, "ours", raw["model"], raw.get("optimizer"), raw.get("lr_scheduler"),
                          raw.get("scaler"), raw.get("epoch"), raw.get("best_acc1"), raw.get("args") or {},
                          raw.get("task_state") or {}, raw.get("rng"), raw.get("model_ema"))
    if isinstance(raw, dict) and "net" in raw and _is_state_dict(raw["net"]):
        acc = raw.get("max_test_acc")
        return Checkpoint(path, "net", raw["net"], raw.get("optimizer"), raw.get("lr_scheduler"),
                          epoch=raw.get("epoch"), best_acc1=None if acc is None else 100.0 * float(acc))
    if isinstance(raw, dict) and "model" in raw and _is_state_dict(raw["model"]):
        if "args" in raw or "max_test_acc1" in raw:
            args = raw.get("args")
            return Checkpoint(path, "model_imagenet", raw["model"], raw.get("optimizer"), raw.get("lr_scheduler"),
                              epoch=raw.get("epoch"), best_acc1=raw.get("max_test_acc1"),
                              args=vars(args) if isinstance(args, argparse.Namespace) else dict(args or {}))
        acc = raw.get("best_acc")
        return Checkpoint(path, "model_dvs", raw["model"], raw.get("optimizer"), raw.get("scheduler"),
                          epoch=raw.get("epoch"), best_acc1=None if acc is None else float(acc))
    if _is_state_dict(raw):
        return Checkpoint(path, "state_dict", raw)
    keys = list(raw)[:8] if isinstance(raw, dict) else type(raw).__name__
    raise UserError(f"Checkpoint {path} has no layout this project knows (top-level keys: {keys}).")


def _strip_prefixes(state_dict: dict) -> dict:
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


def _convert_original_neurons(state_dict: dict, model: nn.Module) -> dict:
    """Rename the original repository's neuron tensors to ours, module by module.

    Original IFNode5 / masked PSN held an nn.Linear(T, T) named `fc` (bias [T]);
    the original sliding PSN called its bias `threshold`. Ours match SpikingJelly 2.0.
    The original wrapped its GLIF in nn.Sequential(unsqueeze, LIFSpike_CW, squeeze), so
    its tensors sit one level down, under `1.`.
    """
    sd = dict(state_dict)
    for name, module in model.named_modules():
        p = f"{name}." if name else ""
        if isinstance(module, (PSN, MaskedPSN)) and f"{p}fc.weight" in sd:
            sd[f"{p}weight"] = sd.pop(f"{p}fc.weight")
            bias = sd.pop(f"{p}fc.bias", None)
            if bias is not None:
                sd[f"{p}bias"] = bias.reshape(-1, 1)
            if isinstance(module, MaskedPSN):
                for buf in ("mask0", "mask1"):
                    if f"{p}fc.{buf}" in sd:
                        sd[f"{p}{buf}"] = sd.pop(f"{p}fc.{buf}")
        if isinstance(module, MaskedPSN) and f"{p}_lambda_" not in sd and f"{p}weight" in sd:
            # The original kept lambda as a plain attribute; a finished run ends at lambda = 1.
            sd[f"{p}_lambda_"] = torch.tensor(1.0)
        if isinstance(module, SlidingPSN) and f"{p}threshold" in sd:
            sd[f"{p}bias"] = sd.pop(f"{p}threshold")
        if isinstance(module, GLIF) and f"{p}1.alpha" in sd:
            for tensor_name, _ in module.named_parameters():
                if f"{p}1.{tensor_name}" in sd:
                    sd[f"{p}{tensor_name}"] = sd.pop(f"{p}1.{tensor_name}")
    return sd


def _list(keys, limit=8) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_model_weights(model: nn.Module, checkpoint) -> Checkpoint:
    """Load a checkpoint (a path or a Checkpoint) into `model`; a mismatch raises UserError naming the keys."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else read_checkpoint(checkpoint)
    target = model.module if hasattr(model, "module") else model
    target = getattr(target, "_orig_mod", target)
    sd = _convert_original_neurons(_strip_prefixes(ckpt.state_dict), target)
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
    if not _is_state_dict(state_dict) or state_dict.keys() != expected.keys() or any(
            state_dict[k].shape != expected[k].shape for k in expected):
        raise UserError(f"Checkpoint {path}: its {field_name} does not fit this model.")
    module.load_state_dict(state_dict)


def load_matching(model: nn.Module, path) -> tuple[list[str], list[str], list[str]]:
    """Copy every tensor of a checkpoint whose name and shape match the model's (e.g. an ANN's
    weights into its spiking twin). Returns (copied, skipped from the file, left at init in the model)."""
    ckpt = read_checkpoint(path)
    source = _strip_prefixes(ckpt.state_dict)
    target = model.state_dict()
    copied = sorted(k for k in source.keys() & target.keys() if source[k].shape == target[k].shape)
    if not copied:
        raise UserError(f"No tensor of {path} matches the model by name and shape; is it the right network?")
    with torch.no_grad():
        for k in copied:
            target[k].copy_(source[k])
    return copied, sorted(source.keys() - set(copied)), sorted(target.keys() - set(copied))

"""Checkpoints: atomic saves, safe loads, and every layout the released weights come in.

One reading path serves `--resume`, `--test-only` and users' own code:
`read_checkpoint` loads a file with `weights_only=True` (an explicit allow-list,
never arbitrary pickles: released files come from the internet) and names its
layout; `load_model_weights` maps its state dict onto a model, converting the
original repository's neuron names, and refuses a wrong architecture with the
missing and unexpected keys named.

Layouts:
- `ours`: {'format': FORMAT, 'model', 'optimizer', 'scaler', 'model_ema',
  'epoch' (last finished, 0-based; -1 before the first), 'step' (batches of the next
  epoch already trained: a mid-epoch checkpoint when > 0), 'epoch_sums' (that epoch's
  running loss * n, correct, samples, seconds), 'best_acc1' (percent), 'args',
  'task_state' (with 'last_acc1'), 'rng' (torch, cuda, python, numpy)}
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
import errno
import math
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
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error_in(e)  # torch.save reports a failed write as a RuntimeError around it
        if cause is not None and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"The disk holding {path.parent} is full ({cause.strerror}): {path.name} could not be "
                            "written, and its previous version is kept.") from None
        if cause is not None:
            raise UserError(f"Could not write {path} ({cause.strerror or cause}); its previous version is "
                            "kept.") from None
        raise


def _os_error_in(error: BaseException | None) -> OSError | None:
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


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
    scaler: dict | None = None
    epoch: int | None = None  # last finished epoch, 0-based (-1: none yet)
    best_acc1: float | None = None  # percent
    args: dict = field(default_factory=dict)
    task_state: dict = field(default_factory=dict)
    rng: dict | None = None
    model_ema: dict | None = None  # --model-ema's averaged weights
    step: int = 0  # batches of epoch + 1 already trained: > 0 in a mid-epoch checkpoint
    epoch_sums: list | None = None  # that epoch's running [loss * n, correct, samples, seconds]
    step_samples: int | None = None  # samples per step (batch size times processes) of the run that wrote it

    @property
    def position(self) -> tuple[int, int]:
        """(the next epoch to train, its batches already trained): what a resume continues from."""
        return (0 if self.epoch is None else self.epoch + 1, self.step)

    @property
    def last_acc1(self) -> float | None:
        return self.task_state.get("last_acc1")


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

    ckpt = _from_layout(path, raw)
    problems = _field_problems(ckpt)
    if problems:
        raise UserError(f"Checkpoint {path} is damaged or not what it claims to be: {'; '.join(problems)}.")
    return ckpt


def _from_layout(path: Path, raw) -> Checkpoint:
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        return Checkpoint(path, "ours", raw.get("model"), raw.get("optimizer"), raw.get("scaler"), raw.get("epoch"),
                          raw.get("best_acc1"), raw.get("args", {}), raw.get("task_state", {}), raw.get("rng"),
                          raw.get("model_ema"), raw.get("step", 0), raw.get("epoch_sums"), raw.get("step_samples"))
    if isinstance(raw, dict) and "net" in raw and _is_state_dict(raw["net"]):
        return Checkpoint(path, "net", raw["net"], raw.get("optimizer"), epoch=_scalar(raw.get("epoch")),
                          best_acc1=_percent(_scalar(raw.get("max_test_acc"))))
    if isinstance(raw, dict) and "model" in raw and _is_state_dict(raw["model"]):
        if "args" in raw or "max_test_acc1" in raw:
            args = raw.get("args")
            return Checkpoint(path, "model_imagenet", raw["model"], raw.get("optimizer"),
                              epoch=_scalar(raw.get("epoch")), best_acc1=_scalar(raw.get("max_test_acc1")),
                              args=vars(args) if isinstance(args, argparse.Namespace) else args or {})
        return Checkpoint(path, "model_dvs", raw["model"], raw.get("optimizer"), epoch=_scalar(raw.get("epoch")),
                          best_acc1=_scalar(raw.get("best_acc")))
    if _is_state_dict(raw):
        return Checkpoint(path, "state_dict", raw)
    keys = list(raw)[:8] if isinstance(raw, dict) else type(raw).__name__
    raise UserError(f"Checkpoint {path} has no layout this project knows (top-level keys: {keys}).")


def _scalar(value):
    """Another program's number, which it may have stored as a one-element tensor."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


def _percent(fraction):
    """The original cifar scripts stored accuracy as a fraction; a value of another type is left for the checks."""
    return 100.0 * fraction if _is_number(fraction) else fraction


# Sane bounds for what a checkpoint says about its run: an epoch beyond these is damage (and
# replaying its schedule would never end), not a run.
MAX_EPOCH = 10**6
MAX_STEP = 10**9


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _field_problems(ckpt: Checkpoint) -> list[str]:
    """What is wrong with a checkpoint's fields, each as a short clause; nothing is trusted for its type."""
    problems = []

    def check(ok: bool, what: str, value) -> None:
        if not ok:
            problems.append(f"{what} (found {_show(value)})")

    def accuracy(value) -> bool:
        return value is None or _is_number(value) and 0 <= value <= 100

    ours = ckpt.layout == "ours"
    check(_is_state_dict(ckpt.state_dict), "its model must be a state dict (names to tensors)", ckpt.state_dict)
    check(ckpt.epoch is None and not ours or _is_int(ckpt.epoch) and -1 <= ckpt.epoch < MAX_EPOCH,
          f"epoch must be an integer from -1 to {MAX_EPOCH - 1}", ckpt.epoch)
    check(accuracy(ckpt.best_acc1), "the best accuracy must be a percentage", ckpt.best_acc1)
    check(isinstance(ckpt.args, dict) and all(isinstance(k, str) for k in ckpt.args), "args must be a dict of "
          "settings", ckpt.args)
    if not ours:
        return problems  # another program's optimizer state is tried, and dropped with a warning if it does not fit
    check(_is_int(ckpt.step) and 0 <= ckpt.step < MAX_STEP, "step must be a non-negative integer", ckpt.step)
    sums = ckpt.epoch_sums
    check(sums is None and not ckpt.step or isinstance(sums, (list, tuple)) and len(sums) == 4
          and all(_is_number(x) and x >= 0 for x in sums), "epoch_sums must be 4 non-negative numbers "
          "(and are needed mid-epoch)", sums)
    check(ckpt.step_samples is None and not ckpt.step or _is_int(ckpt.step_samples) and ckpt.step_samples > 0,
          "step_samples must be a positive integer (and is needed mid-epoch)", ckpt.step_samples)
    check(isinstance(ckpt.task_state, dict) and all(isinstance(k, str) and (v is None or _is_number(v))
                                                    for k, v in ckpt.task_state.items()),
          "task_state must map names to numbers", ckpt.task_state)
    if isinstance(ckpt.task_state, dict):
        check(accuracy(ckpt.task_state.get("last_acc1")), "the last accuracy must be a percentage",
              ckpt.task_state.get("last_acc1"))
    optimizer = ckpt.optimizer
    check(optimizer is None or isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
          and isinstance(optimizer.get("param_groups"), list)
          and all(isinstance(g, dict) for g in optimizer["param_groups"]),
          "the optimizer state must be a dict with 'state' and 'param_groups'", optimizer)
    check(ckpt.scaler is None or isinstance(ckpt.scaler, dict) and all(_is_number(v) for v in ckpt.scaler.values()),
          "the AMP scaler state must map names to numbers", ckpt.scaler)
    check(ckpt.model_ema is None or _is_state_dict(ckpt.model_ema), "model_ema must be a state dict", ckpt.model_ema)
    check(ckpt.rng is None or _rng_ok(ckpt.rng), "rng must hold generator states", ckpt.rng)
    return problems


def _rng_ok(rng) -> bool:
    if not isinstance(rng, dict) or set(rng) - {"torch", "cuda", "python", "numpy"}:
        return False
    for key in ("torch", "cuda"):
        state = rng.get(key)
        if state is not None and not (isinstance(state, torch.Tensor) and state.dtype == torch.uint8
                                      and state.dim() == 1):
            return False
    python = rng.get("python")
    if python is not None and not (isinstance(python, (list, tuple)) and len(python) == 3 and _is_int(python[0])
                                   and isinstance(python[1], (list, tuple)) and len(python[1]) == 625
                                   and all(_is_int(x) and 0 <= x < 2**32 for x in python[1])
                                   and (python[2] is None or _is_number(python[2]))):
        return False
    numpy = rng.get("numpy")
    if numpy is not None and not (isinstance(numpy, dict) and isinstance(numpy.get("key"), torch.Tensor)
                                  and numpy["key"].shape == (624,) and _is_int(numpy.get("pos"))
                                  and 0 <= numpy["pos"] <= 624 and _is_int(numpy.get("has_gauss"))
                                  and _is_number(numpy.get("gauss"))):
        return False
    return True


def _show(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, dict):
        return f"a dict with keys {list(value)[:5]}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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


def neuron_in(state_dict: dict, prefix: str) -> dict:
    """Which PSN of the family a state dict holds under `prefix` (e.g. 'conv.2.'), in the original
    naming or ours, and what its tensors say: {'neuron', 'T', 'order'} where they tell; {} otherwise."""
    sd = _strip_prefixes(state_dict)
    weight = sd.get(f"{prefix}fc.weight", sd.get(f"{prefix}weight"))
    if not isinstance(weight, torch.Tensor):
        return {}
    mask = sd.get(f"{prefix}fc.mask0", sd.get(f"{prefix}mask0"))
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[0] == mask.shape[1]:
        # The masked PSN's mask0 is a band of k ones below the diagonal: its last row holds k of them.
        return {"neuron": "masked_psn", "T": mask.shape[0], "order": int(mask[-1].sum().item())}
    if weight.dim() == 1 and (f"{prefix}threshold" in sd or f"{prefix}bias" in sd):
        return {"neuron": "sliding_psn", "order": weight.shape[0]}
    if weight.dim() == 2 and weight.shape[0] == weight.shape[1]:
        return {"neuron": "psn", "T": weight.shape[0]}
    return {}


def tensor_shape(state_dict: dict, key: str) -> tuple | None:
    """The shape of `key` in a state dict (DDP / compile prefixes ignored), or None."""
    value = _strip_prefixes(state_dict).get(key)
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _unwrapped(model: nn.Module) -> nn.Module:
    target = model.module if hasattr(model, "module") else model
    return getattr(target, "_orig_mod", target)


def checkpoint_classes(model: nn.Module, ckpt: Checkpoint, classes: int) -> int:
    """How many classes the checkpoint's classifier has, where `model` was built for `classes`: the
    leading size of the tensors where the model has `classes` and the file another size with
    the same trailing shape (a classifier's weight and bias). `classes` when nothing says otherwise."""
    sd = _convert_original_neurons(_strip_prefixes(ckpt.state_dict), _unwrapped(model))
    found = {sd[k].shape[0] for k, v in _unwrapped(model).state_dict().items()
             if k in sd and v.dim() >= 1 and v.shape[0] == classes and sd[k].dim() == v.dim()
             and sd[k].shape[0] != classes and sd[k].shape[1:] == v.shape[1:]}
    return found.pop() if len(found) == 1 else classes


def load_model_weights(model: nn.Module, checkpoint) -> Checkpoint:
    """Load a checkpoint (a path or a Checkpoint) into `model`; a mismatch raises UserError naming the keys."""
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else read_checkpoint(checkpoint)
    target = _unwrapped(model)
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

"""Checkpoints on disk: the format written and read in one place, atomic saves, safe loads.

A `Checkpoint` is a run's state (`common.run_state.RunState`: position, running sums,
accuracies, settings, generators, provenance) plus the weights, the optimizer, the AMP scaler
and the EMA, with the file's path and layout. `read_checkpoint` loads a file with
`weights_only=True` (an explicit allow-list, never arbitrary pickles: released files come from
the internet), names its layout, and checks every field for its type and range before anything
uses it; `Checkpoint.to_dict` is the one place our own layout is written. `common.weights` maps a
checkpoint's state dict onto a model.

Layouts:
- `ours`: {'format': FORMAT, 'model', 'optimizer', 'scaler', 'model_ema', the run state's
  fields under their keys ('task', 'epoch' (the last finished, -1 before the first), 'step',
  'epoch_sums', 'step_samples', 'best_acc1', 'args', 'model_settings', 'task_state', 'rng',
  'provenance': see common.run_state), 'digest' (SHA-256 of everything else)}. A file of
  FORMAT without its digest, or with our fields and no format, is refused; files of
  LEGACY_FORMAT, written before 'task', 'model_settings', 'provenance' or 'digest' existed,
  load too.
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
import hashlib
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint_checks import field_problems, is_state_dict, overlapping_view, show
from .errors import UserError
from .run_state import RunState

FORMAT = "psn-repro/2"  # every file of this format carries its digest: one without it is refused
LEGACY_FORMAT = "psn-repro/1"  # files of earlier versions, some written before the digest existed
# Keys only this project's files have: a file holding them without a 'format' key had it deleted.
_OURS_ONLY = ("digest", "task_state", "step_samples", "epoch_sums", "model_settings", "provenance")
# What a checkpoint may contain beyond tensors and containers of primitives: the
# original ImageNet script pickled its argparse.Namespace.
SAFE_GLOBALS = [argparse.Namespace]


@dataclass
class Checkpoint:
    """A checkpoint, whatever its layout, in this project's terms: a run's state (`common.run_state`) plus the
    weights, the optimizer, the AMP scaler and the EMA, with the file's path and layout."""

    path: Path | None
    layout: str
    state_dict: dict
    state: RunState = field(default_factory=RunState)
    optimizer: dict | None = None
    scaler: dict | None = None
    model_ema: dict | None = None  # --model-ema's averaged weights
    epoch_known: bool = True  # another program's file may not say its epoch

    def to_dict(self) -> dict:
        """Our layout, as saved; the digest covers every other field."""
        record = {"format": FORMAT, "model": self.state_dict, "optimizer": self.optimizer, "scaler": self.scaler,
                  "model_ema": self.model_ema, **self.state.to_record()}
        record["digest"] = content_digest(record)
        return record

    @classmethod
    def from_dict(cls, path: Path | None, raw) -> tuple["Checkpoint", list[str]]:
        """Name the layout of a loaded object and take its fields; returns the checkpoint and what is wrong with
        its run state (its weights and optimizer are checked by read_checkpoint)."""
        if isinstance(raw, dict) and raw.get("format") in (FORMAT, LEGACY_FORMAT):
            state, problems = RunState.from_record(raw)
            return cls(path, "ours", raw.get("model"), state, raw.get("optimizer"), raw.get("scaler"),
                       raw.get("model_ema")), problems
        if isinstance(raw, dict) and "net" in raw and is_state_dict(raw["net"]):
            return cls._other(path, "net", raw["net"], raw.get("optimizer"), _scalar(raw.get("epoch")),
                              _percent(_scalar(raw.get("max_test_acc"))))
        if isinstance(raw, dict) and "model" in raw and is_state_dict(raw["model"]):
            if "args" in raw or "max_test_acc1" in raw:
                args = raw.get("args")
                return cls._other(path, "model_imagenet", raw["model"], raw.get("optimizer"), _scalar(raw.get("epoch")),
                                  _scalar(raw.get("max_test_acc1")),
                                  vars(args) if isinstance(args, argparse.Namespace) else args or {})
            return cls._other(path, "model_dvs", raw["model"], raw.get("optimizer"), _scalar(raw.get("epoch")),
                              _scalar(raw.get("best_acc")))
        if is_state_dict(raw):
            return cls(path, "state_dict", raw, epoch_known=False), []
        keys = list(raw)[:8] if isinstance(raw, dict) else type(raw).__name__
        raise UserError(f"Checkpoint {path} has no layout this project knows (top-level keys: {keys}).")

    @classmethod
    def _other(cls, path, layout: str, state_dict, optimizer, epoch, best_acc1, args=None):
        """Another program's file: what it tells of its run, in the run state's terms and checks."""
        told = {"epoch": epoch, "best_acc1": best_acc1}
        state, problems = RunState.from_record({k: v for k, v in told.items() if v is not None}, complete=False)
        if args is not None:  # its own flags, kept as they are (read, never adopted as settings)
            if isinstance(args, dict) and all(isinstance(k, str) for k in args):
                state.settings = args
            else:
                problems.append(f"args must be a dict of settings (found {show(args)})")
        return cls(path, layout, state_dict, state, optimizer, epoch_known=epoch is not None), problems


def _scalar(value):
    """Another program's number, which it may have stored as a one-element tensor."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_meta and value.layout == torch.strided:
        return value.item()
    return value


def _percent(fraction):
    """The original cifar scripts stored accuracy as a fraction; a value of another type is left for the checks."""
    if isinstance(fraction, (int, float)) and not isinstance(fraction, bool):
        return 100.0 * fraction
    return fraction


# --- integrity -----------------------------------------------------------------------------------

# What the digest walks at most: a real checkpoint holds thousands of objects, nested a few levels deep; a
# crafted one can hold shared references that unfold to more nodes than there are atoms.
DIGEST_MAX_NODES = 1_000_000  # SEW ResNet-152 with its momenta and EMA: 9,564
DIGEST_MAX_DEPTH = 64


class Unwalkable(ValueError):
    """A checkpoint's contents that no digest should walk: too many nodes, too deep, or an overlapping view."""


def content_digest(obj) -> str:
    """SHA-256 over a checkpoint's contents: every tensor's dtype, shape and bytes, every other value's
    type and repr, in order. A byte changed on disk (or in transfer) changes it; torch.load does not
    check the CRCs of the zip container it reads. Raises Unwalkable past DIGEST_MAX_NODES nodes (a shared
    object counted each time it is reached) or DIGEST_MAX_DEPTH levels, or at an overlapping tensor view."""
    h = hashlib.sha256()
    budget = [DIGEST_MAX_NODES]
    _feed(h, {k: v for k, v in obj.items() if k != "digest"} if isinstance(obj, dict) else obj, budget, 0)
    return "sha256:" + h.hexdigest()


def _feed(h, obj, budget: list, depth: int) -> None:
    budget[0] -= 1
    if budget[0] < 0 or depth > DIGEST_MAX_DEPTH:
        raise Unwalkable(f"more than {DIGEST_MAX_NODES} objects or {DIGEST_MAX_DEPTH} levels of nesting")
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.layout != torch.strided or t.is_meta:
            h.update(f"<tensor {t.layout} {t.device.type}>".encode())
            return
        if overlapping_view(t):
            raise Unwalkable(f"a tensor view of {t.numel()} elements over a smaller storage")
        t = t.cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(b"{%d" % len(obj))
        for key, value in obj.items():
            _feed(h, key, budget, depth + 1)
            _feed(h, value, budget, depth + 1)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[%d" % len(obj) if isinstance(obj, list) else b"(%d" % len(obj))
        for value in obj:
            _feed(h, value, budget, depth + 1)
        h.update(b"]")
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


# --- writing -------------------------------------------------------------------------------------

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


# --- reading -------------------------------------------------------------------------------------

def read_checkpoint(path) -> Checkpoint:
    """Load a checkpoint file safely, name its layout and check every field; anything wrong is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Checkpoint {path} does not exist." if not path.exists() else
                        f"Checkpoint {path} is not a regular file.")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"Checkpoint {path} holds objects outside the safe allow-list, or is not a checkpoint at "
                        f"all, so it was not loaded: {_first_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - damaged bytes fail inside torch.load in any way (KeyError, AssertionError, ...)
        raise UserError(f"Checkpoint {path} is not readable (truncated or corrupted?): {_first_line(e)}.") from None
    if isinstance(raw, dict) and "format" not in raw and any(key in raw for key in _OURS_ONLY):
        found = ", ".join(key for key in _OURS_ONLY if key in raw)
        raise UserError(f"Checkpoint {path} holds this project's fields ({found}) but no 'format' key: it was "
                        "altered, so it was not used; use another copy.")
    if isinstance(raw, dict) and raw.get("format") == FORMAT and "digest" not in raw:
        raise UserError(f"Checkpoint {path} lacks the digest that every file of its format ({FORMAT}) carries: it "
                        "was altered, so it was not used; use another copy.")
    if isinstance(raw, dict) and raw.get("format") in (FORMAT, LEGACY_FORMAT) and "digest" in raw:
        try:
            digest = content_digest(raw)
        except Unwalkable as e:
            raise UserError(f"Checkpoint {path} is damaged or crafted: it holds {e}, which no checkpoint does; it "
                            "was not used.") from None
        if not isinstance(raw["digest"], str) or digest != raw["digest"]:
            raise UserError(f"Checkpoint {path} is corrupted: its contents no longer match the digest recorded when "
                            "it was saved (a byte changed on disk or in transfer); use another copy.")
    ckpt, problems = Checkpoint.from_dict(path, raw)
    problems = field_problems(ckpt) + problems
    if problems:
        raise UserError(f"Checkpoint {path} is damaged or not what it claims to be: {'; '.join(problems)}.")
    return ckpt


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0][:300] if text else type(error).__name__)

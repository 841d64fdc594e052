"""The random generators of a run: reseeded per epoch, saved mid-epoch, restored on resume.

Each epoch reseeds every generator from (seed, epoch), so shuffling, augmentation and mixing of an
epoch depend on nothing else; a mid-epoch checkpoint carries the generators' states, and a resume
goes on from them.
"""
import random

import numpy as np
import torch

from .errors import UserError


def seed_epoch(seed: int, epoch: int) -> None:
    """Reseed every generator from (seed, epoch): shuffling, augmentation and mixing of an
    epoch depend on nothing else, so a resumed run replays exactly the epochs it missed."""
    s = (seed * 1_000_003 + epoch) % 2**63
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)


def rng_state(device: torch.device) -> dict:
    """Every generator a training step may draw from; a mid-epoch resume continues from them."""
    _, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    rng = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss_next],
           "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                     "gauss": float(gauss)}}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def set_rng_state(rng: dict | None, device: torch.device, source) -> None:
    if not rng:
        return
    try:
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], device)
        if "python" in rng:
            version, internal, gauss_next = rng["python"]
            random.setstate((version, tuple(internal), gauss_next))
        if "numpy" in rng:
            n = rng["numpy"]
            np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    except (RuntimeError, ValueError, TypeError, KeyError, OverflowError) as e:
        raise UserError(f"The generator states of checkpoint {source} cannot be restored ({e}).") from None

"""Losses of the paper's recipes.

CIFAR tasks: cross-entropy with label smoothing on the time-averaged logits (soft
mixup/cutmix targets included). CIFAR10-DVS and ImageNet: TET (Deng et al., 2022),
the cross-entropy of every step's logits, averaged over steps.
"""
from functools import partial

import torch
import torch.nn.functional as F


def smoothed_cross_entropy(label_smoothing: float):
    """Training loss of the CIFAR recipes; at test time plain F.cross_entropy."""
    return partial(F.cross_entropy, label_smoothing=label_smoothing)


def tet_loss(outputs: torch.Tensor, target: torch.Tensor, mse_weight: float = 0.0, mse_target: float = 1.0,
             time_dim: int = 0, label_smoothing: float = 0.0) -> torch.Tensor:
    """TET: mean over steps of CE(logits[t], target), plus mse_weight * MSE(logits, mse_target).

    `outputs` holds per-step logits with time on `time_dim` ([T, N, C] or [N, T, C]).
    """
    steps = outputs.movedim(time_dim, 0)
    ce = torch.stack([F.cross_entropy(step, target, label_smoothing=label_smoothing) for step in steps]).mean()
    if mse_weight == 0.0:
        return ce
    return (1.0 - mse_weight) * ce + mse_weight * F.mse_loss(steps, torch.full_like(steps, mse_target))


def per_step_outputs_loss(tet: bool, time_dim: int, mse_weight: float = 0.0):
    """Training loss of a network with per-step logits: TET, or cross-entropy of the mean logits."""
    if tet:
        return partial(tet_loss, mse_weight=mse_weight, time_dim=time_dim)
    return partial(mean_logits_cross_entropy, time_dim=time_dim)


def mean_logits_cross_entropy(outputs: torch.Tensor, target: torch.Tensor, time_dim: int = 0) -> torch.Tensor:
    """Cross-entropy of the logits averaged over steps (the test loss of the TET tasks)."""
    return F.cross_entropy(outputs.mean(time_dim), target)

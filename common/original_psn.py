"""The original code path, for the benchmarks: the authors' PSN classes and the SpikingJelly surrogate they ran on.

A transcription for timing, labelled "original" wherever it appears; not used for training. What the
authors' runs executed (fangwei123456/Parallel-Spiking-Neuron, sequential_cifar/train_secf10.py; the
CIFAR-10 and ImageNet scripts hold the same IFNode5):

- IFNode5 (train_secf10.py l. 33-44): an nn.Linear(T, T) `fc` whose bias starts at -1; the potential is
  `torch.addmm(fc.bias[:, None], fc.weight, x.flatten(1))` (under AMP autocast runs it in half precision),
  then the surrogate, then a view back to x's shape.
- IFNode5PorderMaskD (its DecayPorderMaskedLinear): the same with the weight times the blended mask
  `k * mask0 + (1 - k) * mask1`, formed by a TorchScript function on every call.
- MaskedSlidingPSN, backend 'gemm' (l. 46 on): the [T, T] band built by a Python loop of T slice
  assignments on every call, then `torch.addmm(threshold, band, x.flatten(1))`.
- The surrogate: SpikingJelly's ATan of 2023, whose forward is a TorchScript heaviside `(x >= 0).to(x)` and
  whose backward is the TorchScript function alpha / 2 / (1 + (pi / 2 * alpha * x)^2) * grad (fused into
  one kernel by TorchScript's fuser on a GPU). SpikingJelly 2.0's ATan computes the same in eager torch.

`original_like(module)` builds the original neuron with one of ours' weights, so the three paths of a
benchmark compute the same function (tests/test_benchmark.py checks it).
"""
import math
import warnings

import torch
import torch.nn as nn

from . import neurons as ours

# The original ran these as TorchScript, which torch now calls deprecated: the transcription keeps it, quietly.
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)


@torch.jit.script
def _heaviside(x: torch.Tensor) -> torch.Tensor:
    return (x >= 0).to(x)


@torch.jit.script
def _atan_backward(grad_output: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    return alpha / 2 / (1 + (math.pi / 2 * alpha * x).pow_(2)) * grad_output


class _ATanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha):
        if x.requires_grad:
            ctx.save_for_backward(x)
            ctx.alpha = alpha
        return _heaviside(x)

    @staticmethod
    def backward(ctx, grad_output):
        return _atan_backward(grad_output, ctx.saved_tensors[0], ctx.alpha), None


class OriginalATan(nn.Module):
    def __init__(self, alpha: float = 2.0):
        super().__init__()
        self.alpha = alpha

    def forward(self, x):
        return _ATanFunction.apply(x, self.alpha)


@torch.jit.script
def _masked_weight(weight: torch.Tensor, k: float, mask0: torch.Tensor, mask1: torch.Tensor) -> torch.Tensor:
    return weight * (k * mask0 + (1. - k) * mask1)


class OriginalPSN(nn.Module):
    """IFNode5."""

    step_mode = "m"

    def __init__(self, T: int):
        super().__init__()
        self.surrogate_function = OriginalATan()
        self.fc = nn.Linear(T, T)
        nn.init.constant_(self.fc.bias, -1)

    def forward(self, x_seq):
        h_seq = torch.addmm(self.fc.bias.unsqueeze(1), self.fc.weight, x_seq.flatten(1))
        return self.surrogate_function(h_seq).view(x_seq.shape)


class OriginalMaskedPSN(nn.Module):
    """IFNode5PorderMaskD: `k` is the blend the training schedule raises to 1 (our lambda_)."""

    step_mode = "m"

    def __init__(self, T: int, order: int):
        super().__init__()
        self.surrogate_function = OriginalATan()
        self.fc = nn.Linear(T, T)
        nn.init.constant_(self.fc.bias, -1)
        ones = torch.ones(T, T)
        self.fc.register_buffer("mask0", torch.tril(ones) * torch.triu(ones, -(order - 1)))
        self.fc.register_buffer("mask1", ones)
        self.k = 0.

    def forward(self, x_seq):
        weight = _masked_weight(self.fc.weight, self.k, self.fc.mask0, self.fc.mask1)
        h_seq = torch.addmm(self.fc.bias.unsqueeze(1), weight, x_seq.flatten(1))
        return self.surrogate_function(h_seq).view(x_seq.shape)


class OriginalSlidingPSN(nn.Module):
    """MaskedSlidingPSN with the 'gemm' backend."""

    step_mode = "m"

    def __init__(self, order: int):
        super().__init__()
        self.order = order
        self.weight = nn.Parameter(0.5 ** torch.arange(order - 1, -1, -1, dtype=torch.float32))
        self.threshold = nn.Parameter(torch.as_tensor(-1.))
        self.surrogate_function = OriginalATan()

    def gen_gemm_weight(self, T: int):
        # The original's zeros took the default dtype; the weight's is the same in training and lets float64 tests run.
        weight = torch.zeros([T, T], device=self.weight.device, dtype=self.weight.dtype)
        for i in range(T):  # as the original: one slice assignment per step, on every call
            end = i + 1
            start = max(0, i + 1 - self.order)
            length = min(end - start, self.order)
            weight[i][start:end] = self.weight[self.order - length:self.order]
        return weight

    def forward(self, x_seq):
        weight = self.gen_gemm_weight(x_seq.shape[0])
        h_seq = torch.addmm(self.threshold, weight, x_seq.flatten(1)).view(x_seq.shape)
        return self.surrogate_function(h_seq)


def original_like(module: nn.Module) -> nn.Module:
    """The original neuron computing what one of ours does, with its weights (our MaskedPSN's lambda_ becomes
    the original's k)."""
    with torch.no_grad():
        if isinstance(module, ours.PSN):
            new = OriginalPSN(module.T)
            new.fc.weight.copy_(module.weight)
            new.fc.bias.copy_(module.bias.reshape(-1))
        elif isinstance(module, ours.MaskedPSN):
            new = OriginalMaskedPSN(module.T, module.k)
            new.fc.weight.copy_(module.weight)
            new.fc.bias.copy_(module.bias.reshape(-1))
            new.k = float(module.lambda_)
        elif isinstance(module, ours.SlidingPSN):
            new = OriginalSlidingPSN(module.k)
            new.weight.copy_(module.weight)
            new.threshold.copy_(module.bias.reshape(()))
        else:
            raise TypeError(f"no original counterpart for {type(module).__name__}")
    return new.to(next(module.parameters()).device)

"""The PSN family: PSN, masked PSN and sliding PSN (Fang et al., NeurIPS 2023).

All three compute a membrane potential as a linear map over the time axis of a
time-major input `x_seq` of shape [T, N, *], then fire where it crosses zero:

    H = W X + B,    S = heaviside(H)    (surrogate gradient in backward)

- PSN: W is a full learnable [T, T] matrix, B a learnable [T, 1] bias.
- MaskedPSN: W is masked to a band of width k (each step sees its k latest
  inputs), so it can also run one step at a time; during training the mask is
  blended with an all-ones mask by `lambda_` (0 -> plain PSN, 1 -> band).
- SlidingPSN: k weights shared by every step (a causal convolution over time),
  so it runs on sequences of any length, one step at a time too.

The classes follow SpikingJelly's module protocol (`step_mode`, `reset()`,
`functional.reset_net`), and their parameter and buffer names and shapes equal
those of SpikingJelly 2.0's classes of the same names, so state dicts move
between the two without conversion.
"""
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import base, surrogate

__all__ = ["PSN", "MaskedPSN", "SlidingPSN"]


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


def potential_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The precision of the membrane potential, on both paths and whatever autocast says: fp32 (fp64 for a
    float64 model or input). fp16 / bf16 inputs are upcast and the weights and bias stay fp32, so a spike
    never flips on the rounding of a potential near the threshold (the original's fp16 `addmm` under AMP
    rounded W, b, x and H to fp16: a deliberate deviation, on the recipe cards)."""
    return torch.float64 if torch.float64 in (x.dtype, weight.dtype) else torch.float32


def _time_linear(weight: torch.Tensor, bias: torch.Tensor, x_seq: torch.Tensor) -> torch.Tensor:
    """H = weight @ x_seq + bias over the time axis, in potential_dtype; x_seq is [T, N, *], H has its shape.

    The [T, N, *] tensor is seen as a [T, N*...] matrix: a free view of a contiguous
    activation (a channels-last one is copied here; the fused kernel reads it in place).
    """
    dtype = potential_dtype(x_seq, weight)
    flat = x_seq.reshape(x_seq.shape[0], -1)
    with torch.autocast(flat.device.type, enabled=False):
        return torch.addmm(bias.to(dtype), weight.to(dtype), flat.to(dtype)).view(x_seq.shape)


_KERNELS = None


def _kernels():
    """common.kernels, imported on first use (it loads Triton)."""
    global _KERNELS
    if _KERNELS is None:
        from . import kernels

        _KERNELS = kernels
    return _KERNELS


def _kernels_on_cpu() -> bool:
    """Whether CPU tensors may take the fused path: under Triton's interpreter (tests) or in the kernels'
    launch-free mode (the host-time benchmark); otherwise Triton is never imported for a CPU model."""
    loaded = sys.modules.get(f"{__package__}.kernels")
    return os.environ.get("TRITON_INTERPRET") == "1" or (loaded is not None and loaded.LAUNCH_FREE)


def _fire(weight: torch.Tensor, bias: torch.Tensor, x_seq: torch.Tensor, surrogate_function: nn.Module) -> torch.Tensor:
    """spikes = surrogate_function(weight @ x_seq + bias): the fused kernel on a GPU, torch elsewhere.

    The torch path is the reference: it builds H and keeps it for backward; the kernel
    keeps only x and recomputes H (see common/kernels.py).
    """
    if (x_seq.is_cuda or _kernels_on_cpu()) and _kernels().usable(x_seq, surrogate_function):
        spikes = _kernels().fire(x_seq, weight, bias, surrogate_function.alpha)
        if spikes is not None:  # None: the kernel cannot run here (warned once); the torch path follows
            return spikes
    return surrogate_function(_time_linear(weight, bias, x_seq)).to(x_seq.dtype)


def _check_steps(module: nn.Module, x_seq: torch.Tensor) -> None:
    if x_seq.dim() < 2:
        raise ValueError(
            f"{type(module).__name__} expects a time-major input [T, N, *], "
            f"got shape {tuple(x_seq.shape)}."
        )
    if x_seq.shape[0] != module.T:
        raise ValueError(
            f"{type(module).__name__}(T={module.T}) got an input with {x_seq.shape[0]} time steps "
            f"(shape {tuple(x_seq.shape)}); inputs are time-major [T, N, *] with T={module.T}."
        )


class PSN(nn.Module, base.MultiStepModule):
    """Parallel spiking neuron: H = W X + B with a learnable [T, T] matrix W.

    Multi-step only: every output step may depend on every input step.
    """

    def __init__(self, T: int, surrogate_function: nn.Module = surrogate.ATan()):
        super().__init__()
        self.T = _check_positive_int("T", T)
        self._step_mode = "m"
        self.surrogate_function = surrogate_function
        self.weight = nn.Parameter(torch.empty(T, T))
        self.bias = nn.Parameter(torch.empty(T, 1))
        # As the original IFNode5 (an nn.Linear(T, T)) and SpikingJelly: a threshold of 1.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.constant_(self.bias, -1.0)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        _check_steps(self, x_seq)
        return _fire(self.weight, self.bias, x_seq, self.surrogate_function)

    def extra_repr(self) -> str:
        return f"T={self.T}"


class MaskedPSN(base.MemoryModule):
    """PSN whose weight is masked to a band of width k: step t sees inputs t-k+1 .. t.

    `lambda_` blends the band mask M_k with an all-ones mask J:
    effective weight = W * (lambda_ M_k + (1 - lambda_) J). Training raises it
    from 0 to 1 so that the network moves gradually from a PSN to a masked PSN.
    With `lambda_ == 1` the neuron can also run one step at a time
    (`step_mode='s'`), giving exactly the multi-step result.
    """

    def __init__(
        self,
        k: int,
        T: int,
        lambda_init: float = 0.0,
        surrogate_function: nn.Module = surrogate.ATan(),
        step_mode: str = "s",
    ):
        super().__init__()
        self.T = _check_positive_int("T", T)
        self.k = _check_positive_int("k", k)
        if k > T:
            raise ValueError(f"MaskedPSN order k={k} exceeds the number of time steps T={T}; use 1 <= k <= T.")
        self.register_memory("time_step", 0)
        self.register_memory("queue", [])
        self.step_mode = step_mode
        self.surrogate_function = surrogate_function

        self.weight = nn.Parameter(torch.empty(T, T))
        self.bias = nn.Parameter(torch.empty(T, 1))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.constant_(self.bias, -1.0)

        self.register_buffer("_lambda_", torch.tensor(0.0))
        self.lambda_ = lambda_init
        ones = torch.ones(T, T)
        self.register_buffer("mask0", torch.tril(ones) * torch.triu(ones, -(k - 1)))
        self.register_buffer("mask1", ones)

    @property
    def lambda_(self) -> torch.Tensor:
        return self._lambda_

    @lambda_.setter
    def lambda_(self, value: float) -> None:
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"MaskedPSN.lambda_ must lie in [0, 1], got {value}.")
        self._lambda_.fill_(value)

    @staticmethod
    def lambda_schedule(epoch: int, epochs: int) -> float:
        """The original training schedule: lambda = min(8 * epoch / (epochs - 1), 1) at each epoch's start
        (0-based epochs), so the first eighth of training moves from a PSN to the masked PSN."""
        return 1.0 if epochs <= 1 else min(8.0 * epoch / (epochs - 1), 1.0)

    def masked_weight(self) -> torch.Tensor:
        # One formula for every lambda (no branch on a device tensor, so no host
        # sync); at lambda = 1 it is exactly weight * mask0.
        lam = self._lambda_
        return (lam * self.mask0 + (1.0 - lam) * self.mask1) * self.weight

    def multi_step_functional_forward(self, inputs, states, **kwargs):
        x_seq = inputs[0]
        _check_steps(self, x_seq)
        return (_fire(self.masked_weight(), self.bias, x_seq, self.surrogate_function),), states

    def single_step_functional_forward(self, inputs, states, **kwargs):
        x = inputs[0]
        time_step, queue = states
        if self._lambda_.item() < 1.0:
            raise ValueError(
                f"MaskedPSN runs single-step only once lambda_ == 1 (it is {self._lambda_.item():g}): "
                "below 1 every step depends on future inputs."
            )
        if time_step >= self.T:
            raise OverflowError(
                f"MaskedPSN(T={self.T}) has already run {time_step} single steps; "
                "call reset() (or functional.reset_net) before the next sequence."
            )
        queue = [*queue, x][-self.k:]
        row = self.masked_weight()[time_step, time_step + 1 - len(queue): time_step + 1]
        dtype = potential_dtype(x, row)
        with torch.autocast(x.device.type, enabled=False):
            h = torch.tensordot(row.to(dtype), torch.stack(queue).to(dtype), dims=1) + self.bias[time_step].to(dtype)
        return (self.surrogate_function(h).to(x.dtype),), (time_step + 1, queue)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}, T={self.T}, lambda_={self._lambda_.item():g}"


class SlidingPSN(base.MemoryModule):
    """PSN with k weights shared across time: H[t] = sum_i weight[i] X[t-k+1+i] + bias.

    Works on sequences of any length and in single-step mode. Two multi-step
    backends: 'gemm' builds the banded [T, T] matrix, 'conv' runs a causal 1-D
    convolution over time; both compute the same function.
    """

    backends = ("gemm", "conv")

    def __init__(
        self,
        k: int,
        exp_init: bool = True,
        surrogate_function: nn.Module = surrogate.ATan(),
        step_mode: str = "s",
        backend: str = "gemm",
    ):
        super().__init__()
        self.k = _check_positive_int("k", k)
        self.register_memory("queue", [])
        self.step_mode = step_mode
        self.backend = backend
        self.surrogate_function = surrogate_function
        if exp_init:
            # (..., 1/4, 1/2, 1): the newest input counts most, older ones decay as in a LIF neuron.
            weight = 0.5 ** torch.arange(k - 1, -1, -1, dtype=torch.float32)
        else:
            weight = torch.empty(1, k)
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            weight = weight[0]
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.tensor(-1.0))

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in self.backends:
            raise ValueError(f"SlidingPSN backend must be one of {self.backends}, got {value!r}.")
        self._backend = value

    def gen_gemm_weight(self, T: int) -> torch.Tensor:
        """The [T, T] matrix of the sliding window: row i holds weight[k-len:] in columns max(0, i-k+1) .. i."""
        lag = torch.arange(T, device=self.weight.device)
        lag = lag[:, None] - lag[None, :]  # i - j
        inside = (lag >= 0) & (lag < self.k)
        index = (self.k - 1 - lag).clamp(0, self.k - 1)
        return torch.where(inside, self.weight[index], self.weight.new_zeros(()))

    def _conv_potential(self, x_seq: torch.Tensor) -> torch.Tensor:
        dtype = potential_dtype(x_seq, self.weight)
        flat = x_seq.reshape(x_seq.shape[0], -1).to(dtype)
        signal = F.pad(flat.t().unsqueeze(1), (self.k - 1, 0))  # [M, 1, T + k - 1], causal padding
        with torch.autocast(flat.device.type, enabled=False):
            h = F.conv1d(signal, self.weight.to(dtype).view(1, 1, -1)).squeeze(1).t() + self.bias.to(dtype)
        return h.reshape(x_seq.shape)

    def multi_step_functional_forward(self, inputs, states, **kwargs):
        x_seq = inputs[0]
        if x_seq.dim() < 2:
            raise ValueError(f"SlidingPSN expects a time-major input [T, N, *], got shape {tuple(x_seq.shape)}.")
        if self.backend == "gemm":
            return (_fire(self.gen_gemm_weight(x_seq.shape[0]), self.bias, x_seq, self.surrogate_function),), states
        return (self.surrogate_function(self._conv_potential(x_seq)).to(x_seq.dtype),), states

    def single_step_functional_forward(self, inputs, states, **kwargs):
        x = inputs[0]
        queue = [*states[0], x][-self.k:]
        dtype = potential_dtype(x, self.weight)
        with torch.autocast(x.device.type, enabled=False):
            weight = self.weight[self.k - len(queue):].to(dtype)
            h = torch.tensordot(weight, torch.stack(queue).to(dtype), dims=1) + self.bias.to(dtype)
        return (self.surrogate_function(h).to(x.dtype),), (queue,)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}, backend={self.backend}"

"""Baseline neurons SpikingJelly lacks, or has in a shape our networks cannot feed.

LIF, PLIF and KLIF come from SpikingJelly as they are (see `create_neuron`);
these two are the rest of the paper's sequential CIFAR table. SpikingJelly's own
gated LIF computes another neuron than the paper's GLIF; it stays here for comparison.
"""
import math

import torch
import torch.nn as nn
from spikingjelly.activation_based import base, neuron, surrogate


class LIFNoReset(base.MemoryModule):
    """LIF without reset: h[t] = (1 - 1/tau) h[t-1] + x[t] / tau, spike where h >= v_threshold.

    The membrane potential keeps integrating after a spike, so the neuron is a
    linear filter followed by a threshold (the paper's 'LIF without reset').
    """

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0, surrogate_function: nn.Module | None = None,
                 step_mode: str = "m"):
        super().__init__()
        if tau <= 1.0:
            raise ValueError(f"LIFNoReset needs tau > 1 (the decay is 1 - 1/tau), got {tau}.")
        self.tau = tau
        self.v_threshold = v_threshold
        self.surrogate_function = surrogate_function or surrogate.ATan()
        self.step_mode = step_mode
        self.register_memory("v", 0.0)

    def single_step_functional_forward(self, inputs, states, **kwargs):
        x = inputs[0]
        v = (1.0 - 1.0 / self.tau) * states[0] + x / self.tau
        return (self.surrogate_function(v - self.v_threshold),), (v,)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tau={self.tau}, v_threshold={self.v_threshold}"


class _HardGate(torch.autograd.Function):
    """1 where a gate's sigmoid is above 0.5; the gradient passes straight through to it."""

    @staticmethod
    def forward(ctx, gate):
        return (gate > 0.5).to(gate.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output


class _RectangularSpike(torch.autograd.Function):
    """Heaviside(v) with the rectangular surrogate of the GLIF paper: gradient 1 where |v| < 0.5."""

    @staticmethod
    def forward(ctx, v):
        ctx.save_for_backward(v)
        return (v > 0).to(v.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (v,) = ctx.saved_tensors
        return grad_output * (v.abs() < 0.5).to(grad_output.dtype)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class GLIF(base.MemoryModule):
    """The gated LIF of the paper's sequential table: the original's channel-wise `LIFSpike_CW`
    (GLIF, Yao et al. 2022) with the initialisation its `get_initial_dict` gave.

    Every parameter is per channel (dim 2 of [T, N, C, *]) and is stored as a logit,
    used through a sigmoid. The three gates are hard (0 or 1) in the forward pass and
    pass their gradient straight through to the sigmoid. With o = 0 and u = 0 before
    the first step, for t = 0 .. T-1:

        I = x[t] * (1 - b (1 - conduct[t]))
        u = (1 - a (1 - tau)) u (1 - g o) - (1 - a) leak + I - (1 - g) reVth o
        o = Heaviside(u - Vth), surrogate gradient 1 where |u - Vth| < 0.5

    Initial values (as sigmoids): gates a, b, g = 0.55, 0.65, 0.55 (the original's gate
    values 0.6 / 0.8 / 0.6, mapped through 0.5 + 0.5 (g - 0.5)); tau 0.25; Vth = reVth
    0.5; leak 0.0625 (0.5 / (2 * 4): the original fixed 4 steps there, whatever T was);
    conduct 0.5. Parameter names are the original's, so its tensors load by name.
    Multi-step only: `conduct` holds one value per step, so T is fixed at construction.
    """

    GATES = (0.6, 0.8, 0.6)  # alpha, beta, gamma as the original's get_initial_dict gives them
    TAU, V_TH, LEAK, CONDUCT = 0.25, 0.5, 0.5 / (2 * 4), 0.5

    def __init__(self, T: int, channels: int):
        super().__init__()
        if T < 1 or channels < 1:
            raise ValueError(f"GLIF needs T >= 1 and channels >= 1, got T={T}, channels={channels}.")
        self.T, self.channels, self.step_mode = T, channels, "m"

        def per_channel(p: float, shape=(channels,)) -> nn.Parameter:
            return nn.Parameter(torch.full(shape, _logit(p)))

        self.alpha, self.beta, self.gamma = (per_channel(0.5 + 0.5 * (g - 0.5)) for g in self.GATES)
        self.tau = per_channel(self.TAU)
        self.Vth = per_channel(self.V_TH)
        self.leak = per_channel(self.LEAK)
        self.reVth = per_channel(self.V_TH)
        self.conduct = per_channel(self.CONDUCT, (T, channels))

    def single_step_forward(self, x):
        raise ValueError("GLIF runs multi-step only (step_mode='m'): its conduct gate is indexed by the time step.")

    def multi_step_forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if x_seq.dim() < 3 or x_seq.shape[0] != self.T or x_seq.shape[2] != self.channels:
            raise ValueError(f"GLIF(T={self.T}, channels={self.channels}) takes [T, N, C, *] = "
                             f"[{self.T}, N, {self.channels}, ...], got {tuple(x_seq.shape)}.")
        trailing = (1,) * (x_seq.dim() - 3)

        def per_channel(p: torch.Tensor) -> torch.Tensor:  # [C] -> [C, 1, ...] against x[t] = [N, C, ...]
            return p.view(-1, *trailing)

        a, b, g = (per_channel(_HardGate.apply(p.sigmoid())) for p in (self.alpha, self.beta, self.gamma))
        tau, v_th, leak, re_v_th = (per_channel(p.sigmoid()) for p in (self.tau, self.Vth, self.leak, self.reVth))
        conduct = self.conduct.sigmoid()
        decay, constant_leak, reset = 1 - a * (1 - tau), (1 - a) * leak, (1 - g) * re_v_th
        u = o = x_seq.new_zeros(())
        spikes = []
        for t in range(self.T):
            current = x_seq[t] * (1 - b * (1 - per_channel(conduct[t])))
            u = decay * u * (1 - g * o) - constant_leak + current - reset * o
            o = _RectangularSpike.apply(u - v_th)
            spikes.append(o)
        return torch.stack(spikes)

    def extra_repr(self) -> str:
        return f"T={self.T}, channels={self.channels}, step_mode={self.step_mode}"


class SpikingJellyGLIF(neuron.GatedLIFNode):
    """SpikingJelly's GatedLIFNode with channel-wise parameters, for inputs of any rank.

    Not the paper's GLIF (soft gates, random gate init, ATan surrogate; see `GLIF`):
    kept as `glif_sj` for comparison. SpikingJelly's class reads [T, N, C, H, W] only;
    the sequential network feeds [T, N, C, H] and [T, N, C], so trailing singleton
    dimensions make them fit; parameter names stay SpikingJelly's.
    """

    def __init__(self, T: int, channels: int, surrogate_function: nn.Module | None = None):
        super().__init__(T=T, inplane=channels, surrogate_function=surrogate_function or surrogate.ATan(),
                         step_mode="m")

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs):
        pad = 5 - x_seq.dim()
        if pad < 0:
            raise ValueError(f"SpikingJellyGLIF takes [T, N, C, *] inputs with at most 2 trailing dims, "
                             f"got {tuple(x_seq.shape)}.")
        spikes = super().multi_step_forward(x_seq.reshape(*x_seq.shape, *([1] * pad)), *args, **kwargs)
        self.reset()  # the state is per sequence; its padded shape must not leak into the next call
        return spikes.reshape(x_seq.shape)

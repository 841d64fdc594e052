"""Baseline neurons SpikingJelly lacks, or has in a shape our networks cannot feed.

LIF, PLIF and KLIF come from SpikingJelly as they are (see `create_neuron`);
these two are the rest of the paper's sequential CIFAR table.
"""
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


class ChannelGLIF(neuron.GatedLIFNode):
    """SpikingJelly's gated LIF with channel-wise parameters, for inputs of any rank.

    SpikingJelly's class reads [T, N, C, H, W] only; the sequential network feeds
    [T, N, C, H] (after Conv1d) and [T, N, C] (after Linear). Trailing singleton
    dimensions make them fit; parameter names stay SpikingJelly's.
    """

    def __init__(self, T: int, channels: int, surrogate_function: nn.Module | None = None):
        super().__init__(T=T, inplane=channels, surrogate_function=surrogate_function or surrogate.ATan(),
                         step_mode="m")

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs):
        pad = 5 - x_seq.dim()
        if pad < 0:
            raise ValueError(f"ChannelGLIF takes [T, N, C, *] inputs with at most 2 trailing dims, got {tuple(x_seq.shape)}.")
        spikes = super().multi_step_forward(x_seq.reshape(*x_seq.shape, *([1] * pad)), *args, **kwargs)
        self.reset()  # the state is per sequence; its padded shape must not leak into the next call
        return spikes.reshape(x_seq.shape)

"""Spike statistics of a network on the test set (`--spike-stats`): what SNN papers report.

- Firing rate of every spiking layer: the mean of its output spikes over all test samples,
  time steps and neurons, from forward hooks (exact sums, added over DDP ranks).
- Synaptic operations and MACs per sample, counted by SpikingJelly's own counters
  (`SynOpCounter`: spike-driven matrix products and convolutions, one accumulate per
  non-zero input; `MACCounter`: products whose inputs are not spikes, such as the first
  convolution on the image and the PSN's time mixing) on one test batch, with the fused
  kernels off so every product is visible to them.
- An energy estimate per sample from those counts with the costs SpikingJelly's
  `SimpleEnergyCostConfig` uses by default (Horowitz 2014, 45 nm, fp32): 0.9 pJ per
  accumulate, 4.6 pJ per multiply-accumulate. Memory traffic is not in this figure.
- Each PSN-family layer's effective [T, T] weight matrix, as a TensorBoard image.
"""
import torch
import torch.nn as nn
from spikingjelly.activation_based import base

from . import distributed as D
from .neuron_registry import entry_of

E_AC_PJ, E_MAC_PJ = 0.9, 4.6  # SpikingJelly's SimpleEnergyCostConfig.fp32()


def spiking_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The modules that emit spikes: SpikingJelly's stateful neurons and the PSN family (which holds no
    state between calls but follows the same protocol)."""
    layers = {}
    for name, module in model.named_modules():
        if entry_of(module) is not None or (
                isinstance(module, base.MemoryModule) and hasattr(module, "surrogate_function")):
            layers[name] = module
    return layers


class SilenceWatch:
    """Whether each spiking layer fires at all while training: `with SilenceWatch(model) as watch: ...`, then
    `watch.silent(env)` names the layers that emitted no spike. The hooks add each output's sum to a tensor on
    the device (no host sync per step); the one sync is `silent`'s, at the epoch's end."""

    def __init__(self, model: nn.Module):
        self.layers = spiking_layers(model)
        self.counts = None
        self.handles = []

    def _hook(self, index: int):
        def record(module, inputs, output):
            out = output[0] if isinstance(output, (tuple, list)) else output
            if self.counts is None:
                self.counts = torch.zeros(len(self.layers), dtype=torch.float64, device=out.device)
            with torch.no_grad():
                self.counts[index] += out.detach().sum(dtype=torch.float64)
        return record

    def __enter__(self) -> "SilenceWatch":
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(self.layers.values())]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def silent(self, env: D.DistEnv) -> list[str]:
        """The layers no process saw fire (every process calls it: one all-reduce)."""
        if self.counts is None:
            return []
        counts = D.all_reduce_sum(env, self.counts.clone()).tolist()
        return [name for name, count in zip(self.layers, counts) if count == 0]


def silence_warning(silent: list[str], layers: int, epoch: int) -> str:
    """One line naming the layers that never fired in an epoch, and what usually causes it."""
    which = "no spiking layer fired" if len(silent) == layers else (
        f"{len(silent)} of {layers} spiking layers never fired ({', '.join(silent[:8])}"
        f"{', ...' if len(silent) > 8 else ''})")
    return (f"warning: {which} in epoch {epoch}: a layer without spikes passes no signal and no gradient past "
            "its surrogate's reach, so the network cannot learn. Usual causes: a learning rate too high (weights "
            "driven below threshold) or too low, an initialisation that keeps the potential below threshold, or "
            "an augmentation too strong for the data (on small data, try --augment light).")


class FiringRates:
    """Forward hooks summing each spiking layer's output: `with FiringRates(model) as rates: ...`."""

    def __init__(self, model: nn.Module):
        self.layers = spiking_layers(model)
        self.sums = {name: torch.zeros(2, dtype=torch.float64) for name in self.layers}  # spikes, elements
        self.handles = []
        self.paused = False  # other passes (the operation count) must not count twice

    def _hook(self, name):
        def record(module, inputs, output):
            if self.paused:
                return
            out = output[0] if isinstance(output, (tuple, list)) else output
            with torch.no_grad():
                self.sums[name] += torch.stack([out.detach().double().sum().cpu(),
                                                torch.tensor(float(out.numel()), dtype=torch.float64)])
        return record

    def __enter__(self):
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in self.layers.items()]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()

    def rates(self, env: D.DistEnv, device: torch.device) -> dict[str, float]:
        if not self.sums:
            return {}
        stacked = torch.stack(list(self.sums.values())).to(device)
        stacked = D.all_reduce_sum(env, stacked).cpu()
        return {name: (s / n if n else 0.0) for name, (s, n) in zip(self.sums, stacked.tolist())}


@torch.no_grad()
def operations_per_sample(model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """SynOps, MACs and the energy estimate per sample of one batch, by SpikingJelly's counters."""
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter

    from . import kernels

    synops, macs = SynOpCounter(), MACCounter()
    was_training = model.training
    model.eval()
    try:
        with kernels.enabled(False), DispatchCounterMode([synops, macs]):
            model(images)
    finally:
        functional.reset_net(model)
        model.train(was_training)
    n = images.shape[0]
    synops_per, macs_per = synops.get_total() / n, macs.get_total() / n
    return {"synops_per_sample": synops_per, "macs_per_sample": macs_per,
            "energy_uJ_per_sample": (E_AC_PJ * synops_per + E_MAC_PJ * macs_per) * 1e-6}


def psn_weight_images(model: nn.Module, T: int) -> dict[str, torch.Tensor]:
    """Each PSN-family layer's effective [T, T] weight, scaled to [0, 1], as [1, T, T] images."""
    images = {}
    for name, module in model.named_modules():
        entry = entry_of(module)
        if entry is None or entry.time_weight is None:
            continue
        w = entry.time_weight(module, T).detach().float().cpu()
        span = (w.max() - w.min()).clamp_min(1e-12)
        images[name] = ((w - w.min()) / span)[None]
    return images


def scalars(test: dict) -> dict:
    """TensorBoard scalars of --spike-stats, grouped under spikes/."""
    out = {f"spikes/{name or 'model'}": rate for name, rate in test["firing_rates"].items()}
    for key in ("synops_per_sample", "macs_per_sample", "energy_uJ_per_sample"):
        if key in test:
            out[f"spikes/{key}"] = test[key]
    return out

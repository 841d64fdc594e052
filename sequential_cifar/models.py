"""The sequential CIFAR network: an image read one column per step (T = 32, the image width).

    image [N, 3, 32, 32] -> columns as steps -> [32, N, 3, 32] (time, batch, colour, row)
    conv: 2 stages of 3 x (Conv1d k3 p1, no bias -> BatchNorm1d -> neuron), AvgPool1d(2) after each
    fc:   Flatten -> Linear(8C, 2C) -> neuron -> Linear(2C, classes)
    output: logits averaged over the 32 steps, [N, classes]

Module names are the original's (`conv.*`, `fc.*`), so its checkpoints load.
With `streaming = True`, evaluation feeds one column at a time in single-step mode
(masked PSN at lambda 1, sliding PSN, the LIF family): what a causal, online
network computes, with the predictions of the multi-step pass.
"""
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer

from common.neuron_registry import create_neuron, streams


class SequentialCIFARNet(nn.Module):
    def __init__(self, channels: int = 128, num_classes: int = 10, neuron: str = "psn", order: int | None = None,
                 exp_init: bool = False, T: int = 32):
        super().__init__()
        self.T = T
        self.streaming = False
        conv = []
        for stage in range(2):
            for i in range(3):
                in_channels = 3 if stage == 0 and i == 0 else channels
                conv += [layer.Conv1d(in_channels, channels, 3, padding=1, bias=False, step_mode="m"),
                         layer.BatchNorm1d(channels, step_mode="m"),
                         create_neuron(neuron, T, order=order, exp_init=exp_init, channels=channels)]
            conv.append(layer.AvgPool1d(2, step_mode="m"))
        self.conv = nn.Sequential(*conv)
        self.fc = nn.Sequential(
            layer.Flatten(step_mode="m"),
            layer.Linear(channels * 8, channels * 2, step_mode="m"),
            create_neuron(neuron, T, order=order, exp_init=exp_init, channels=channels * 2),
            layer.Linear(channels * 2, num_classes, step_mode="m"),
        )

    @staticmethod
    def columns(x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [W, N, C, H]: one image column per time step."""
        return x.permute(3, 0, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.streaming and not self.training:
            return self.stream(x)
        x_seq = self.columns(x)
        return self.fc(self.conv(x_seq)).mean(0)

    @torch.no_grad()
    def stream(self, x: torch.Tensor) -> torch.Tensor:
        """Feed the columns one at a time (single-step mode); the mean of the per-step logits."""
        blocking = streams(self)
        if blocking is not None:
            raise ValueError(f"The {blocking} cannot stream: each of its outputs depends on all T inputs. "
                             "Use the masked PSN (at lambda 1), the sliding PSN or a LIF-type neuron.")
        functional.reset_net(self)
        functional.set_step_mode(self, "s")
        try:
            total = None
            for column in self.columns(x):
                out = self.fc(self.conv(column))
                total = out if total is None else total + out
            return total / x.shape[-1]
        finally:
            functional.set_step_mode(self, "m")
            functional.reset_net(self)

"""The paper's CIFAR-10 network (CIFAR10Net), with its module names kept so the released weights load.

    image [N, 3, 32, 32] -> repeated T times -> [T, N, 3, 32, 32]
    conv: 2 stages of 3 x (Conv2d 3x3, no bias -> BatchNorm2d -> neuron), AvgPool2d(2) after each
    fc:   Flatten -> Linear(64C, 16C) -> neuron -> Linear(16C, classes)
    output: logits averaged over the T steps, [N, classes]
"""
import torch
import torch.nn as nn
from spikingjelly.activation_based import layer

from common.neuron_registry import create_neuron


class CIFAR10Net(nn.Module):
    def __init__(self, channels: int = 256, T: int = 4, num_classes: int = 10, neuron: str = "psn"):
        super().__init__()
        self.T = T
        conv = []
        for stage in range(2):
            for i in range(3):
                in_channels = 3 if stage == 0 and i == 0 else channels
                conv += [layer.Conv2d(in_channels, channels, 3, padding=1, bias=False, step_mode="m"),
                         layer.BatchNorm2d(channels, step_mode="m"),
                         create_neuron(neuron, T, channels=channels)]
            conv.append(layer.AvgPool2d(2, step_mode="m"))
        self.conv = nn.Sequential(*conv)
        self.fc = nn.Sequential(
            layer.Flatten(step_mode="m"),
            layer.Linear(channels * 8 * 8, channels * 4 * 4, step_mode="m"),
            create_neuron(neuron, T, channels=channels * 4 * 4),
            layer.Linear(channels * 4 * 4, num_classes, step_mode="m"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The original feeds the same image at every step (conv.0 runs T times, as trained).
        x_seq = x.unsqueeze(0).expand(self.T, *x.shape)
        return self.fc(self.conv(x_seq)).mean(0)

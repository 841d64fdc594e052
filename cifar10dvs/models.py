"""The paper's CIFAR10-DVS network: a VGG of 8 convolutions with sliding PSNs (order 2, exp init).

    frames [N, T, 2, 48, 48] (batch first, as the data comes) -> time-major [T, N, 2, 48, 48]
    features: 8 x (Conv2d 3x3 with bias -> BatchNorm2d -> sliding PSN), AvgPool2d(2) after layers 2, 4, 6, 8
    classifier: Dropout(0.25) -> Linear(512 * 3 * 3, 10), per step
    output: per-step logits [N, T, 10] (TET trains every step; predictions average them)

Module names are the original's (`features.<i>.fwd.module.{0,1}`, `classifier.0.module.1`)
so the released `model_dvs` checkpoints load unchanged.
"""
import torch
import torch.nn as nn

from common.neuron_registry import create_neuron

# Conv widths; "M" marks an average pooling.
VGG_LAYOUT = (64, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class SeqToANN(nn.Module):
    """Run stateless layers on every step at once by folding time into the batch: [T, N, ...] -> [T*N, ...].

    Holds them as `module` (an nn.Sequential), the original container's layout.
    """

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.module = nn.Sequential(*layers)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        y = self.module(x_seq.flatten(0, 1))
        return y.view(x_seq.shape[0], x_seq.shape[1], *y.shape[1:])


class ConvBN(nn.Module):
    """Conv2d + BatchNorm2d applied to every step at once (the original's `Layer.fwd`)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.fwd = SeqToANN(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True), nn.BatchNorm2d(out_channels))

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return self.fwd(x_seq)


class VGGSlidingPSN(nn.Module):
    def __init__(self, num_classes: int = 10, order: int = 2, exp_init: bool = True, in_channels: int = 2,
                 dropout: float = 0.25):
        super().__init__()
        features, channels = [], in_channels
        for item in VGG_LAYOUT:
            if item == "M":
                features.append(SeqToANN(nn.AvgPool2d(2)))
            else:
                features += [ConvBN(channels, item), create_neuron("sliding_psn", None, order=order, exp_init=exp_init)]
                channels = item
        self.features = nn.Sequential(*features)
        # The original wrote nn.Dropout2d on the 2-D [N*T, 4608] features, which torch applies
        # element-wise, exactly as nn.Dropout (same mask for the same seed; tested).
        self.classifier = nn.Sequential(SeqToANN(nn.Dropout(dropout), nn.Linear(512 * 3 * 3, num_classes)))
        # The original's init: He-normal (fan_out, ReLU gain) convolution weights, torch's default
        # for their biases, BatchNorm and the classifier.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x_seq = frames.transpose(0, 1)  # [N, T, ...] -> [T, N, ...], once, at the entrance
        x_seq = self.features(x_seq).flatten(2)
        return self.classifier(x_seq).transpose(0, 1)

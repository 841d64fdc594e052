"""SEW ResNet (Fang et al., 2021) with PSNs, as the paper's ImageNet runs built it.

torchvision's ResNet layout with a spiking neuron after every BatchNorm (`sn1`,
`layerX.Y.sn1/sn2[/sn3]`) and after the downsample branch (`downsample_sn`); blocks join
with ADD (`out = identity + sn2(bn2(...))`); the stem's max-pool is an AvgPool2d(3, 2, 1);
a learnable `pe` [T, 1, 1, 1, 1] is added to the T-repeated image before `conv1`, so the
stem sees a different input at each step. Output: logits per step, [T, N, classes].
Names and shapes equal the original's, so its checkpoints and torchvision's ResNet
weights (`--load`) fit.
"""
from functools import partial

import torch
import torch.nn as nn
from spikingjelly.activation_based import layer

from common.neuron_registry import create_neuron

__all__ = ["SEWResNet", "sew_resnet18", "sew_resnet34", "sew_resnet50", "sew_resnet101", "sew_resnet152", "MODELS"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Module:
    return layer.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False, step_mode="m")


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Module:
    return layer.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False, step_mode="m")


def bn(planes: int) -> nn.Module:
    return layer.BatchNorm2d(planes, step_mode="m")


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, neuron):
        super().__init__()
        self.conv1, self.bn1, self.sn1 = conv3x3(inplanes, planes, stride), bn(planes), neuron()
        self.conv2, self.bn2, self.sn2 = conv3x3(planes, planes), bn(planes), neuron()
        self.downsample = downsample
        if downsample is not None:
            self.downsample_sn = neuron()

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        identity = x_seq if self.downsample is None else self.downsample_sn(self.downsample(x_seq))
        out = self.sn1(self.bn1(self.conv1(x_seq)))
        out = self.sn2(self.bn2(self.conv2(out)))
        return identity + out  # SEW's ADD connection


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, neuron):
        super().__init__()
        self.conv1, self.bn1, self.sn1 = conv1x1(inplanes, planes), bn(planes), neuron()
        self.conv2, self.bn2, self.sn2 = conv3x3(planes, planes, stride), bn(planes), neuron()
        self.conv3, self.bn3, self.sn3 = conv1x1(planes, planes * 4), bn(planes * 4), neuron()
        self.downsample = downsample
        if downsample is not None:
            self.downsample_sn = neuron()

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        identity = x_seq if self.downsample is None else self.downsample_sn(self.downsample(x_seq))
        out = self.sn1(self.bn1(self.conv1(x_seq)))
        out = self.sn2(self.bn2(self.conv2(out)))
        out = self.sn3(self.bn3(self.conv3(out)))
        return identity + out


class SEWResNet(nn.Module):
    def __init__(self, block, layers: list[int], T: int = 4, num_classes: int = 1000, neuron: str = "psn",
                 order: int | None = None):
        super().__init__()
        self.T = T
        make_neuron = partial(create_neuron, neuron, T, order=order)
        self.pe = nn.Parameter(torch.zeros(T, 1, 1, 1, 1))
        self.inplanes = 64
        self.conv1 = layer.Conv2d(3, 64, 7, stride=2, padding=3, bias=False, step_mode="m")
        self.bn1 = bn(64)
        self.sn1 = make_neuron(channels=64)
        self.avgpool_stem = layer.AvgPool2d(3, 2, 1, step_mode="m")
        self.layer1 = self._make_layer(block, 64, layers[0], 1, make_neuron)
        self.layer2 = self._make_layer(block, 128, layers[1], 2, make_neuron)
        self.layer3 = self._make_layer(block, 256, layers[2], 2, make_neuron)
        self.layer4 = self._make_layer(block, 512, layers[3], 2, make_neuron)
        self.avgpool = layer.AdaptiveAvgPool2d((1, 1), step_mode="m")
        self.fc = layer.Linear(512 * block.expansion, num_classes, step_mode="m")
        # torchvision's initialisation (the runs then load torchvision's ANN weights over it).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Last, as the original: pe is not in torchvision's weights, so --load keeps this draw.
        nn.init.trunc_normal_(self.pe, std=0.02)

    def _make_layer(self, block, planes: int, blocks: int, stride: int, make_neuron) -> nn.Sequential:
        def neuron_for(width):
            return lambda: make_neuron(channels=width)

        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       bn(planes * block.expansion))
        # Neurons are channel-agnostic for the PSN family; `channels` serves channel-wise baselines.
        layers = [block(self.inplanes, planes, stride, downsample, neuron_for(planes * block.expansion))]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, None, neuron_for(planes * block.expansion))
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x_seq = images.unsqueeze(0).repeat(self.T, 1, 1, 1, 1) + self.pe
        x_seq = self.avgpool_stem(self.sn1(self.bn1(self.conv1(x_seq))))
        x_seq = self.layer4(self.layer3(self.layer2(self.layer1(x_seq))))
        return self.fc(self.avgpool(x_seq).flatten(2))


def sew_resnet18(**kwargs) -> SEWResNet:
    return SEWResNet(BasicBlock, [2, 2, 2, 2], **kwargs)


def sew_resnet34(**kwargs) -> SEWResNet:
    return SEWResNet(BasicBlock, [3, 4, 6, 3], **kwargs)


def sew_resnet50(**kwargs) -> SEWResNet:
    return SEWResNet(Bottleneck, [3, 4, 6, 3], **kwargs)


def sew_resnet101(**kwargs) -> SEWResNet:
    return SEWResNet(Bottleneck, [3, 4, 23, 3], **kwargs)


def sew_resnet152(**kwargs) -> SEWResNet:
    return SEWResNet(Bottleneck, [3, 8, 36, 3], **kwargs)


MODELS = {f.__name__: f for f in (sew_resnet18, sew_resnet34, sew_resnet50, sew_resnet101, sew_resnet152)}

"""ResNets with torchvision's attribute names, for the insertion tests (torchvision is not a
dependency): ``conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc``, each ``layerK`` an
``nn.Sequential`` of `Bottleneck` blocks (``conv1/bn1/conv2/bn2/conv3/bn3/relu/downsample``).

``resnet(spatial_dims=2)`` with the defaults is torchvision's ResNet-50 (25.6 M parameters);
``spatial_dims=3`` makes the same network of 3-D convolutions (a C2D/I3D-style video ResNet,
strides only over space), and ``width`` scales every stage, for fast tests.
"""

from __future__ import annotations

from torch import Tensor, nn

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_MAXPOOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVGPOOL = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


def _stride(stride: int, spatial_dims: int):
    # Video networks keep the frames: strides act on height and width only.
    return stride if spatial_dims == 2 else (1, stride, stride)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (ResNet v1.5: the stride on the 3x3 convolution)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, spatial_dims: int = 2):
        super().__init__()
        conv, norm = _CONV[spatial_dims], _NORM[spatial_dims]
        out = planes * self.expansion
        self.conv1 = conv(inplanes, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = conv(
            planes, planes, 3, stride=_stride(stride, spatial_dims), padding=1, bias=False
        )
        self.bn2 = norm(planes)
        self.conv3 = conv(planes, out, 1, bias=False)
        self.bn3 = norm(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                conv(inplanes, out, 1, stride=_stride(stride, spatial_dims), bias=False),
                norm(out),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet layout over `Bottleneck` blocks."""

    def __init__(
        self,
        layers: tuple[int, ...] = (3, 4, 6, 3),
        width: int = 64,
        num_classes: int = 1000,
        spatial_dims: int = 2,
    ):
        super().__init__()
        conv, norm = _CONV[spatial_dims], _NORM[spatial_dims]
        self.conv1 = conv(3, width, 7, stride=_stride(2, spatial_dims), padding=3, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = _MAXPOOL[spatial_dims](
            kernel_size=3, stride=_stride(2, spatial_dims), padding=1
        )
        inplanes = width
        for index, blocks in enumerate(layers):
            planes = width * 2**index
            stride = 1 if index == 0 else 2
            stage = []
            for b in range(blocks):
                stage.append(Bottleneck(inplanes, planes, stride if b == 0 else 1, spatial_dims))
                inplanes = planes * Bottleneck.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
        self.avgpool = _AVGPOOL[spatial_dims](1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet(
    layers: tuple[int, ...] = (3, 4, 6, 3),
    width: int = 64,
    num_classes: int = 1000,
    spatial_dims: int = 2,
) -> ResNet:
    """A ResNet with torchvision's names; the defaults are ResNet-50."""
    return ResNet(layers, width, num_classes, spatial_dims)

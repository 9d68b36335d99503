"""ResNet-18/50/101 (He et al. 2016), in pure Paddle, with torchvision's parameter names.

Laid out as ``torchvision.models.resnet`` so that a PyTorch state dict maps by
name (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``layer4.1.downsample.0``,
``fc``): torchvision's ImageNet files, and ``paddle.vision.models.resnet*``'s,
whose names are torchvision's already. As torchvision:

* ResNet "v1.5": a bottleneck block strides in its 3x3 convolution (``conv2``),
  not in the first 1x1;
* a block's shortcut is ``downsample`` = ``Sequential(conv1x1, BatchNorm)``
  where the stride or the width changes, the identity elsewhere;
* BatchNorm eps 1e-5 and torch's momentum 0.1 (Paddle's 0.9, which weights the
  old statistic); the ReLUs hold no parameters.

The network returns logits (:mod:`paddle_chexnet.models.base`); ``fc`` is the
classifier that CAM weighs.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddle_chexnet.models.base import ChestXrayNet
from paddle_chexnet.models.registry import Architecture, register

BN_MOMENTUM = 0.9  # torch's momentum=0.1
BN_EPSILON = 1e-5

#: torchvision's configurations: block type and blocks per stage
RESNET18 = {"block": "basic", "layers": (2, 2, 2, 2)}
RESNET50 = {"block": "bottleneck", "layers": (3, 4, 6, 3)}
RESNET101 = {"block": "bottleneck", "layers": (3, 4, 23, 3)}


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Conv2D:
    # torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu"), no bias
    init = nn.initializer.KaimingNormal(fan_in=out_channels * kernel * kernel)
    return nn.Conv2D(in_channels, out_channels, kernel, stride=stride, padding=(kernel - 1) // 2,
                     weight_attr=paddle.ParamAttr(initializer=init), bias_attr=False)


def _norm(channels: int) -> nn.BatchNorm2D:
    return nn.BatchNorm2D(channels, momentum=BN_MOMENTUM, epsilon=BN_EPSILON)


class _Block(nn.Layer):
    """What both block types share: the shortcut and the BatchNorm + ReLU step (a CPU subclass fuses it)."""

    expansion = 1

    def norm_relu(self, x: paddle.Tensor, norm: nn.BatchNorm2D) -> paddle.Tensor:
        return F.relu(norm(x))

    def shortcut(self, x: paddle.Tensor) -> paddle.Tensor:
        return x if self.downsample is None else self.downsample(x)


class BasicBlock(_Block):
    """Two 3x3 convolutions (ResNet-18/34); the first strides."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Layer | None = None) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, planes, 3, stride)
        self.bn1 = _norm(planes)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = _norm(planes)
        self.downsample = downsample

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        out = self.norm_relu(self.conv1(x), self.bn1)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(_Block):
    """1x1 (reduce), 3x3 (strides: v1.5), 1x1 (expand x4)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Layer | None = None) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, planes, 1)
        self.bn1 = _norm(planes)
        self.conv2 = _conv(planes, planes, 3, stride)
        self.bn2 = _norm(planes)
        self.conv3 = _conv(planes, planes * self.expansion, 1)
        self.bn3 = _norm(planes * self.expansion)
        self.downsample = downsample

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        out = self.norm_relu(self.conv1(x), self.bn1)
        out = self.norm_relu(self.conv2(out), self.bn2)
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


BLOCKS: dict[str, type[_Block]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(ChestXrayNet):
    """ResNet laid out as torchvision's ``ResNet``, returning logits.

    Args:
        block (str, optional): ``'basic'`` (ResNet-18/34) or ``'bottleneck'`` (ResNet-50/101/152). Default: 'basic'.
        layers (Sequence[int], optional): blocks in each of the four stages. Default: (2, 2, 2, 2).
        num_classes (int, optional): outputs of ``fc``. Default: 1000.
        class_names (Sequence[str], optional): one name per output. Default: None
            (:func:`~paddle_chexnet.models.base.default_class_names`).
        pooling (str, optional): global pooling (:data:`~paddle_chexnet.models.heads.POOLINGS`). Default: 'avg'.
        drop_rate (float, optional): dropout on the pooled features before ``fc`` in training (torchvision's
            ResNet has none). Default: 0.0.

    Examples:
        >>> import paddle
        >>> net = ResNet("basic", (2, 2, 2, 2), num_classes=14)
        >>> net(paddle.zeros([1, 3, 64, 64])).shape
        [1, 14]
    """

    head_name = "fc"

    def __init__(self, block: str = "basic", layers: Sequence[int] = (2, 2, 2, 2), num_classes: int = 1000,
                 class_names: Sequence[str] | None = None, pooling: str = "avg", drop_rate: float = 0.0) -> None:
        super().__init__(num_classes, class_names, pooling)
        if block not in BLOCKS:
            raise ValueError(f"unknown ResNet block {block!r}; choose one of {', '.join(BLOCKS)}")
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"layers must be four positive block counts, got {tuple(layers)}")
        self.config = {"block": block, "layers": tuple(int(n) for n in layers), "num_classes": num_classes}
        block_class = BLOCKS[block]
        self.conv1 = _conv(3, 64, 7, stride=2)
        self.bn1 = _norm(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2D(kernel_size=3, stride=2, padding=1)
        channels = 64
        for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if stage == 0 else 2
            blocks = []
            for i in range(count):
                downsample = None
                if i == 0 and (stride != 1 or channels != planes * block_class.expansion):
                    downsample = nn.Sequential(_conv(channels, planes * block_class.expansion, 1, stride),
                                               _norm(planes * block_class.expansion))
                blocks.append(block_class(channels, planes, stride if i == 0 else 1, downsample))
                channels = planes * block_class.expansion
            self.add_sublayer(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.num_features = channels
        bound = 1.0 / math.sqrt(channels)  # torch's default Linear initialisation
        uniform = paddle.ParamAttr(initializer=nn.initializer.Uniform(-bound, bound))
        self.fc = nn.Linear(channels, num_classes, weight_attr=uniform, bias_attr=uniform)
        self.dropout = nn.Dropout(drop_rate) if drop_rate > 0 else None

    def feature_stages(self) -> list[tuple[str, nn.Layer]]:
        return [(name, getattr(self, name)) for name in
                ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")]

    def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
        """The output of ``layer4`` (after its last block's ReLU), ``[B, C, h, w]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def head_dropout(self) -> nn.Layer | None:
        return self.dropout


def _build(defaults: Mapping):
    def build(num_classes: int, class_names: Sequence[str] | None = None, pooling: str = "avg",
              drop_rate: float = 0.0, **options) -> ResNet:
        return ResNet(num_classes=num_classes, class_names=class_names, pooling=pooling, drop_rate=drop_rate,
                      **{**defaults, **options})
    return build


def _shape(state: Mapping[str, object], key: str) -> tuple[int, ...]:
    return tuple(int(s) for s in getattr(state[key], "shape", np.shape(state[key])))


def infer_resnet_options(state: Mapping[str, object]) -> dict[str, object] | None:
    """A ResNet's ``block`` and ``layers`` read off its state dict (torchvision's names), or ``None`` if not one."""
    if not all(key in state for key in ("conv1.weight", "layer1.0.conv1.weight")):
        return None
    layers = []
    for stage in range(1, 5):
        count = 0
        while f"layer{stage}.{count}.conv1.weight" in state:
            count += 1
        layers.append(count)
    block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    return {"block": block, "layers": tuple(layers)}


for _name, _defaults, _title in (("resnet18", RESNET18, "ResNet-18"), ("resnet50", RESNET50, "ResNet-50"),
                                 ("resnet101", RESNET101, "ResNet-101")):
    register(Architecture(_name, "resnet", _build(_defaults), _defaults, torchvision_name=_name,
                          description=f"{_title} (torchvision's, v1.5: the 3x3 convolution strides; "
                                      f"{_defaults['block']} blocks {'-'.join(map(str, _defaults['layers']))})"))

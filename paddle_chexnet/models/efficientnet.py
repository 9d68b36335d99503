"""EfficientNet-B0..B3 (Tan and Le 2019), in pure Paddle, with torchvision's parameter names.

Laid out as ``torchvision.models.efficientnet`` (``features.0`` the stem,
``features.1`` ... ``features.7`` the seven stages of MBConv blocks,
``features.8`` the 1x1 head convolution, ``classifier.1`` the Linear after
``classifier.0``'s dropout), so torchvision's ImageNet files map by name. As
torchvision's B0..B3:

* every convolution is followed by BatchNorm (eps 1e-5, torch's momentum 0.1,
  i.e. Paddle's 0.9) and, except a block's last 1x1 projection, by SiLU;
  padding is symmetric, ``(k - 1) // 2`` (not TensorFlow's "same");
* a block (``MBConv``): 1x1 expansion (absent when the ratio is 1), depthwise
  ``k x k`` (strides), squeeze-and-excitation (average pool, 1x1 conv ``fc1``,
  SiLU, 1x1 conv ``fc2``, sigmoid; ``input_channels // 4`` squeezed channels),
  1x1 projection; the residual where stride 1 and width unchanged, its branch
  dropped per sample by stochastic depth in training only, with a probability
  rising linearly from 0 to ``stochastic_depth_prob`` (0.2) over the blocks;
* widths ``_make_divisible(c * width_mult, 8)``, depths ``ceil(n * depth_mult)``;
* classifier dropout 0.2 (B0, B1) or 0.3 (B2, B3).

The network returns logits (:mod:`paddle_chexnet.models.base`).
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
BN_EPSILON = 1e-5  # torchvision's B0..B3 use BatchNorm2d's default (its V2 models use 1e-3)

#: (expand ratio, kernel, stride, input channels, output channels, blocks) of B0, before width and depth scaling
BASE_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)

#: torchvision's width and depth multipliers and classifier dropout
EFFICIENTNET_B0 = {"width_mult": 1.0, "depth_mult": 1.0, "dropout": 0.2, "stochastic_depth_prob": 0.2}
EFFICIENTNET_B1 = {"width_mult": 1.0, "depth_mult": 1.1, "dropout": 0.2, "stochastic_depth_prob": 0.2}
EFFICIENTNET_B2 = {"width_mult": 1.1, "depth_mult": 1.2, "dropout": 0.3, "stochastic_depth_prob": 0.2}
EFFICIENTNET_B3 = {"width_mult": 1.2, "depth_mult": 1.4, "dropout": 0.3, "stochastic_depth_prob": 0.2}


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: the nearest multiple of ``divisor``, never 10 % below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def stage_settings(width_mult: float, depth_mult: float) -> list[tuple[int, int, int, int, int, int]]:
    """The seven stages after scaling: (expand ratio, kernel, stride, in, out, blocks)."""
    return [(e, k, s, make_divisible(i * width_mult), make_divisible(o * width_mult), int(math.ceil(n * depth_mult)))
            for e, k, s, i, o, n in BASE_STAGES]


def _kaiming(out_channels: int, kernel: int) -> paddle.ParamAttr:
    # torchvision: kaiming_normal_(mode="fan_out"); fan_out of a grouped weight [out, in/g, k, k] is out*k*k
    return paddle.ParamAttr(initializer=nn.initializer.KaimingNormal(fan_in=out_channels * kernel * kernel))


_ZEROS = paddle.ParamAttr(initializer=nn.initializer.Constant(0.0))


def silu(x: paddle.Tensor) -> paddle.Tensor:
    """``x * sigmoid(x)``: Paddle's ``silu`` in the dynamic graph, its ``swish`` (the same function) in a static one.

    Paddle Inference's oneDNN passes fuse ``swish`` into the convolution before it but not ``silu``,
    which runs unfused with a layout conversion on each side (an exported EfficientNet-B0 ran 2x
    slower); in the dynamic graph, training, ``silu``'s kernels are the faster ones.
    """
    return F.silu(x) if paddle.in_dynamic_mode() else F.swish(x)


class SiLU(nn.Layer):
    """torchvision's ``nn.SiLU`` (parameter-free), as :func:`silu`."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return silu(x)


class ConvNormActivation(nn.Sequential):
    """torchvision's ``Conv2dNormActivation``: ``0`` conv (no bias), ``1`` BatchNorm, ``2`` SiLU (if any)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 activation: bool = True) -> None:
        layers = [
            nn.Conv2D(in_channels, out_channels, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups,
                      weight_attr=_kaiming(out_channels, kernel), bias_attr=False),
            nn.BatchNorm2D(out_channels, momentum=BN_MOMENTUM, epsilon=BN_EPSILON),
        ]
        if activation:
            layers.append(SiLU())
        super().__init__(*layers)


class SqueezeExcitation(nn.Layer):
    """``x * sigmoid(fc2(silu(fc1(mean_ij x))))``, the 1x1 convolutions named ``fc1`` / ``fc2`` as torchvision."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2D(channels, squeeze_channels, 1, weight_attr=_kaiming(squeeze_channels, 1),
                             bias_attr=_ZEROS)
        self.fc2 = nn.Conv2D(squeeze_channels, channels, 1, weight_attr=_kaiming(channels, 1), bias_attr=_ZEROS)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        scale = self.fc2(silu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return x * F.sigmoid(scale)


def stochastic_depth(x: paddle.Tensor, p: float, training: bool) -> paddle.Tensor:
    """torchvision's ``stochastic_depth(mode="row")``: zero each sample's branch with probability ``p``, rescale."""
    if not training or p == 0.0:
        return x
    survival = 1.0 - p
    keep = paddle.bernoulli(paddle.full([x.shape[0], 1, 1, 1], survival, dtype=x.dtype))
    return x * keep / survival if survival > 0.0 else x * keep


class MBConv(nn.Layer):
    """Inverted residual block with squeeze-and-excitation (``block`` as torchvision's ``MBConv.block``)."""

    def __init__(self, expand_ratio: int, kernel: int, stride: int, in_channels: int, out_channels: int,
                 stochastic_depth_prob: float) -> None:
        super().__init__()
        self.use_res_connect = stride == 1 and in_channels == out_channels
        expanded = make_divisible(in_channels * expand_ratio)
        layers = []
        if expanded != in_channels:
            layers.append(ConvNormActivation(in_channels, expanded, 1))
        layers.append(ConvNormActivation(expanded, expanded, kernel, stride, groups=expanded))
        layers.append(SqueezeExcitation(expanded, max(1, in_channels // 4)))
        layers.append(ConvNormActivation(expanded, out_channels, 1, activation=False))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth_prob = float(stochastic_depth_prob)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result = stochastic_depth(result, self.stochastic_depth_prob, self.training) + x
        return result


class EfficientNet(ChestXrayNet):
    """EfficientNet (B0..B3 by their multipliers) laid out as torchvision's ``EfficientNet``, returning logits.

    Args:
        width_mult (float, optional): channel multiplier. Default: 1.0 (B0).
        depth_mult (float, optional): block-count multiplier. Default: 1.0 (B0).
        dropout (float, optional): classifier dropout (``classifier.0``), training only. Default: 0.2.
        stochastic_depth_prob (float, optional): stochastic depth of the last block (linearly less before it),
            training only. Default: 0.2.
        num_classes (int, optional): outputs of ``classifier.1``. Default: 1000.
        class_names (Sequence[str], optional): one name per output. Default: None.
        pooling (str, optional): global pooling (:data:`~paddle_chexnet.models.heads.POOLINGS`). Default: 'avg'.

    Examples:
        >>> import paddle
        >>> net = EfficientNet(num_classes=14)
        >>> net(paddle.zeros([1, 3, 64, 64])).shape
        [1, 14]
    """

    head_name = "classifier.1"

    def __init__(self, width_mult: float = 1.0, depth_mult: float = 1.0, dropout: float = 0.2,
                 stochastic_depth_prob: float = 0.2, num_classes: int = 1000,
                 class_names: Sequence[str] | None = None, pooling: str = "avg") -> None:
        super().__init__(num_classes, class_names, pooling)
        self.config = {"width_mult": width_mult, "depth_mult": depth_mult, "dropout": dropout,
                       "stochastic_depth_prob": stochastic_depth_prob, "num_classes": num_classes}
        settings = stage_settings(width_mult, depth_mult)
        layers: list[nn.Layer] = [ConvNormActivation(3, settings[0][3], 3, stride=2)]
        total = sum(s[5] for s in settings)
        index = 0
        for expand, kernel, stride, in_channels, out_channels, count in settings:
            stage = []
            for i in range(count):
                stage.append(MBConv(expand, kernel, stride if i == 0 else 1, in_channels if i == 0 else out_channels,
                                    out_channels, stochastic_depth_prob * index / total))
                index += 1
            layers.append(nn.Sequential(*stage))
        last_in = settings[-1][4]
        self.num_features = 4 * last_in
        layers.append(ConvNormActivation(last_in, self.num_features, 1))
        self.features = nn.Sequential(*layers)
        bound = 1.0 / math.sqrt(num_classes)  # torchvision: uniform(-1/sqrt(out), 1/sqrt(out)), zero bias
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(self.num_features, num_classes,
                      weight_attr=paddle.ParamAttr(initializer=nn.initializer.Uniform(-bound, bound)),
                      bias_attr=_ZEROS),
        )

    def feature_stages(self) -> list[tuple[str, nn.Layer]]:
        return list(self.features.named_children())

    def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
        """The output of the head convolution ``features.8`` (after its SiLU), ``[B, C, h, w]``."""
        return self.features(x)

    def head_dropout(self) -> nn.Layer | None:
        return self.classifier[0]


def _build(defaults: Mapping):
    """A registry builder; ``drop_rate > 0`` replaces the classifier dropout (``options['dropout']`` sets it too)."""
    def build(num_classes: int, class_names: Sequence[str] | None = None, pooling: str = "avg",
              drop_rate: float = 0.0, **options) -> EfficientNet:
        values = {**defaults, **options}
        if drop_rate > 0:
            values["dropout"] = drop_rate
        return EfficientNet(num_classes=num_classes, class_names=class_names, pooling=pooling, **values)
    return build


def _shape(state: Mapping[str, object], key: str) -> tuple[int, ...]:
    return tuple(int(s) for s in getattr(state[key], "shape", np.shape(state[key])))


def infer_efficientnet_structure(state: Mapping[str, object]) -> dict[str, object] | None:
    """The stem width, blocks per stage and head width of an EfficientNet state dict (torchvision's names).

    ``None`` when the keys are not an EfficientNet's (stem ``features.0.0`` and MBConv ``block``s).
    """
    if "features.0.0.weight" not in state or "features.1.0.block.0.0.weight" not in state:
        return None
    depths = []
    stage = 1
    while f"features.{stage}.0.block.0.0.weight" in state:
        count = 0
        while f"features.{stage}.{count}.block.0.0.weight" in state:
            count += 1
        depths.append(count)
        stage += 1
    head = f"features.{stage}.0.weight"
    return {"stem": _shape(state, "features.0.0.weight")[0], "depths": tuple(depths),
            "head": _shape(state, head)[0] if head in state else None}


def efficientnet_structure(width_mult: float, depth_mult: float, **_ignored) -> dict[str, object]:
    """What :func:`infer_efficientnet_structure` reads off a network of these multipliers."""
    settings = stage_settings(width_mult, depth_mult)
    return {"stem": settings[0][3], "depths": tuple(s[5] for s in settings), "head": 4 * settings[-1][4]}


for _name, _defaults, _title in (("efficientnet_b0", EFFICIENTNET_B0, "B0"),
                                 ("efficientnet_b1", EFFICIENTNET_B1, "B1"),
                                 ("efficientnet_b2", EFFICIENTNET_B2, "B2"),
                                 ("efficientnet_b3", EFFICIENTNET_B3, "B3")):
    register(Architecture(_name, "efficientnet", _build(_defaults), _defaults, torchvision_name=_name,
                          description=f"EfficientNet-{_title} (torchvision's; width x{_defaults['width_mult']}, "
                                      f"depth x{_defaults['depth_mult']}, SiLU, squeeze-excitation)"))

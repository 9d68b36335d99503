"""DenseNet-BC (Huang et al. 2017) and CheXNet, in pure Paddle, with torchvision's parameter names.

The layers are named exactly as in ``torchvision.models.densenet`` so that a
PyTorch state dict maps onto this model by name (``features.conv0``,
``features.denseblock1.denselayer1.norm1``, ..., ``features.norm5``,
``classifier``). Conventions that differ from torchvision, on purpose:

* Paddle's BatchNorm ``momentum`` weights the *old* running statistic, torch's
  weights the *new* one, so torch's 0.1 is Paddle's 0.9.
* The ReLUs of the dense and transition layers hold no parameters, so they are
  functions, not sublayers; the stem keeps ``relu0`` so that ``features`` can be
  stepped through child by child (Grad-CAM on an inner layer does).
* A transition pools before its 1x1 convolution (the same function, a quarter
  of the work; see :class:`_Transition`).
* The network returns logits (see :mod:`paddle_chexnet.models.base`).

Faster CPU-training versions of these layers (same parameters) live in
:mod:`paddle_chexnet.cpu.layers`; the trainer swaps them in for CPU training.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddle_chexnet.models.base import ChestXrayNet
from paddle_chexnet.models.registry import Architecture, register

# torch's BatchNorm2d(momentum=0.1, eps=1e-5) in Paddle's convention.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

_KAIMING = paddle.ParamAttr(initializer=nn.initializer.KaimingNormal())

#: torchvision's DenseNet-121 hyper-parameters (CheXNet's backbone).
DENSENET121 = {"growth_rate": 32, "block_config": (6, 12, 24, 16), "num_init_features": 64, "bn_size": 4}
#: torchvision's DenseNet-169 and DenseNet-201 (deeper third and fourth blocks).
DENSENET169 = {"growth_rate": 32, "block_config": (6, 12, 32, 32), "num_init_features": 64, "bn_size": 4}
DENSENET201 = {"growth_rate": 32, "block_config": (6, 12, 48, 32), "num_init_features": 64, "bn_size": 4}


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Conv2D:
    return nn.Conv2D(
        in_channels, out_channels, kernel, stride=stride, padding=padding,
        weight_attr=_KAIMING, bias_attr=False,
    )


def _norm(channels: int) -> nn.BatchNorm2D:
    return nn.BatchNorm2D(channels, momentum=BN_MOMENTUM, epsilon=BN_EPSILON)


class _DenseLayer(nn.Layer):
    """BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 producing ``growth_rate`` new channels from all earlier ones."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int, drop_rate: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = _conv(in_channels, bn_size * growth_rate, 1)
        self.norm2 = _norm(bn_size * growth_rate)
        self.conv2 = _conv(bn_size * growth_rate, growth_rate, 3, padding=1)
        self.drop_rate = float(drop_rate)

    def concatenate(self, inputs: list[paddle.Tensor]) -> paddle.Tensor:
        return inputs[0] if len(inputs) == 1 else paddle.concat(inputs, axis=1)

    def norm_relu(self, x: paddle.Tensor, norm: nn.BatchNorm2D) -> paddle.Tensor:
        return F.relu(norm(x))

    def forward(self, inputs: list[paddle.Tensor]) -> paddle.Tensor:
        bottleneck = self.conv1(self.norm_relu(self.concatenate(inputs), self.norm1))
        new_features = self.conv2(self.norm_relu(bottleneck, self.norm2))
        if self.drop_rate > 0:
            new_features = F.dropout(new_features, p=self.drop_rate, training=self.training)
        return new_features


class _DenseBlock(nn.Layer):
    """``num_layers`` dense layers, each seeing every earlier layer's output."""

    def __init__(self, num_layers: int, in_channels: int, bn_size: int, growth_rate: int, drop_rate: float) -> None:
        super().__init__()
        self.layer_names = []
        for i in range(num_layers):
            name = f"denselayer{i + 1}"
            self.add_sublayer(name, _DenseLayer(in_channels + i * growth_rate, growth_rate, bn_size, drop_rate))
            self.layer_names.append(name)

    def concatenate(self, inputs: list[paddle.Tensor]) -> paddle.Tensor:
        return paddle.concat(inputs, axis=1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        features = [x]
        for name in self.layer_names:
            features.append(getattr(self, name)(features))
        return self.concatenate(features)


class _Transition(nn.Layer):
    """BN-ReLU-Conv1x1 and 2x2 average pooling, halving the resolution.

    The pooling runs before the convolution (torchvision pools after it): a
    1x1 convolution is the same linear map at every pixel and the pooling
    averages pixels, so the two commute (the same function to float rounding),
    and pooling first gives the convolution a quarter of the pixels, forward
    and backward.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm = _norm(in_channels)
        self.conv = _conv(in_channels, out_channels, 1)
        self.pool = nn.AvgPool2D(kernel_size=2, stride=2)

    def norm_relu_pool(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.pool(F.relu(self.norm(x)))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.conv(self.norm_relu_pool(x))


class DenseNet(ChestXrayNet):
    """DenseNet-BC laid out as torchvision's ``DenseNet``, returning logits.

    Args:
        growth_rate (int, optional): channels each dense layer adds. Default: 32.
        block_config (Sequence[int], optional): dense layers per block. Default: (6, 12, 24, 16).
        num_init_features (int, optional): channels of the stem convolution. Default: 64.
        bn_size (int, optional): bottleneck width factor. Default: 4.
        drop_rate (float, optional): dropout after each dense layer. Default: 0.0.
        num_classes (int, optional): outputs of the linear classifier. Default: 1000.
        class_names (Sequence[str], optional): one name per output; ``None`` gives
            ``class_0 ...`` unless ``num_classes`` is 14, which gives CheXNet's
            findings. Default: None.
        pooling (str, optional): global pooling before the classifier
            (:data:`~paddle_chexnet.models.heads.POOLINGS`). Default: 'avg'.

    Examples:
        >>> import paddle
        >>> net = DenseNet(num_classes=14)
        >>> logits = net(paddle.zeros([1, 3, 224, 224]))
        >>> logits.shape
        [1, 14]
    """

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        num_classes: int = 1000,
        class_names: Sequence[str] | None = None,
        pooling: str = "avg",
    ) -> None:
        super().__init__(num_classes, class_names, pooling)
        self.config = {
            "growth_rate": growth_rate,
            "block_config": tuple(block_config),
            "num_init_features": num_init_features,
            "bn_size": bn_size,
            "drop_rate": drop_rate,
            "num_classes": num_classes,
        }
        layers = [
            ("conv0", _conv(3, num_init_features, 7, stride=2, padding=3)),
            ("norm0", _norm(num_init_features)),
            ("relu0", nn.ReLU()),
            ("pool0", nn.MaxPool2D(kernel_size=3, stride=2, padding=1)),
        ]
        channels = num_init_features
        for i, num_layers in enumerate(block_config):
            layers.append((f"denseblock{i + 1}", _DenseBlock(num_layers, channels, bn_size, growth_rate, drop_rate)))
            channels += num_layers * growth_rate
            if i != len(block_config) - 1:
                layers.append((f"transition{i + 1}", _Transition(channels, channels // 2)))
                channels //= 2
        layers.append(("norm5", _norm(channels)))
        self.features = nn.Sequential(*layers)
        self.num_features = channels
        self.classifier = nn.Linear(
            channels, num_classes, bias_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(0.0))
        )

    def feature_stages(self) -> list[tuple[str, nn.Layer]]:
        return list(self.features.named_children())

    def final_activation(self, x: paddle.Tensor) -> paddle.Tensor:
        return F.relu(x)

    def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
        """The last feature map after the final BatchNorm and ReLU, ``[B, C, h, w]`` (what CAM weighs)."""
        return F.relu(self.features(x))


def _build(defaults: dict):
    """A registry builder for DenseNets whose hyper-parameters default to ``defaults``."""
    def build(num_classes: int, class_names: Sequence[str] | None = None, pooling: str = "avg",
              drop_rate: float = 0.0, **options) -> DenseNet:
        return DenseNet(drop_rate=drop_rate, num_classes=num_classes, class_names=class_names, pooling=pooling,
                        **{**defaults, **options})
    return build


TINY = {"growth_rate": 4, "block_config": (1, 2), "num_init_features": 8, "bn_size": 2}

register(Architecture("densenet121", "densenet", _build(DENSENET121), DENSENET121, torchvision_name="densenet121",
                      description="DenseNet-121, CheXNet's backbone (growth 32, blocks 6-12-24-16)"))
register(Architecture("tiny", "densenet", _build(TINY), TINY,
                      description="a DenseNet of a few thousand parameters, for tests and a first look on a laptop"))
register(Architecture("densenet", "densenet", _build(DENSENET121), DENSENET121, listed=False,
                      description="a DenseNet of any growth rate, blocks and width (given as options)"))
# after 'tiny', so that the first two choices stay CheXNet's network and the quick one
register(Architecture("densenet169", "densenet", _build(DENSENET169), DENSENET169, torchvision_name="densenet169",
                      description="DenseNet-169 (growth 32, blocks 6-12-32-32)"))
register(Architecture("densenet201", "densenet", _build(DENSENET201), DENSENET201, torchvision_name="densenet201",
                      description="DenseNet-201 (growth 32, blocks 6-12-48-32)"))


def densenet121(num_classes: int = 1000, class_names: Sequence[str] | None = None, drop_rate: float = 0.0) -> DenseNet:
    """DenseNet-121: growth 32, blocks (6, 12, 24, 16), 64 stem features, bn_size 4."""
    return DenseNet(**DENSENET121, drop_rate=drop_rate, num_classes=num_classes, class_names=class_names)


def chexnet(
    num_classes: int = 14,
    weights: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    drop_rate: float = 0.0,
) -> DenseNet:
    """CheXNet: DenseNet-121 with a ``Linear(1024, num_classes)`` head.

    Args:
        num_classes (int, optional): number of findings. Default: 14.
        weights (str | Path, optional): a ``.pdparams`` file to load; every key
            and shape must match, or :class:`~paddle_chexnet.models.state_dict.StateDictMismatchError`
            lists what does not. Default: None (random initialisation).
        class_names (Sequence[str], optional): names of the outputs. Default: CheXNet's 14.
        drop_rate (float, optional): dropout after each dense layer. Default: 0.0.

    Examples:
        >>> net = chexnet()
        >>> net.class_names[:2]
        ('Atelectasis', 'Cardiomegaly')
    """
    from paddle_chexnet.models.registry import build_network

    net = build_network("densenet121", num_classes=num_classes, class_names=class_names, drop_rate=drop_rate)
    if weights is not None:
        from paddle_chexnet.models.state_dict import load_weights

        load_weights(net, weights)
    return net

"""DenseNet-121 and the CheXNet network, with torchvision's parameter names.

The layers are named exactly as in ``torchvision.models.densenet`` so that a
PyTorch state dict maps onto this model by name (``features.conv0``,
``features.denseblock1.denselayer1.norm1``, ..., ``features.norm5``,
``classifier``). Conventions that differ from torchvision, on purpose:

* Paddle's BatchNorm ``momentum`` weights the *old* running statistic, torch's
  weights the *new* one, so torch's 0.1 is Paddle's 0.9.
* The CPU-heavy layers have multi-threaded CPU paths (``cpu_kernels.py``,
  C++ compiled on first use, Paddle's operators where that is not possible):
  the stem's convolution and pooling, the dense layers' 3x3 convolutions and
  concatenations, and every BatchNorm that a ReLU follows, which runs through
  :func:`~paddle_chexnet.cpu_kernels.batch_norm_relu` (in CPU training one
  fused kernel; elsewhere Paddle's BatchNorm then ReLU). The ReLUs of the
  dense and transition layers hold no parameters, so they are not kept as
  sublayers; the stem keeps ``relu0`` so that ``features`` can still be
  stepped through child by child (Grad-CAM on an inner layer does).
* A transition pools before its 1x1 convolution (the same function, a
  quarter of the work; see :class:`_Transition`).
* The network returns logits. CheXNet's reference ends in a ``Sigmoid``; we
  train on logits with BCE-with-logits (stable for rare findings whose
  probabilities approach 0) and apply the sigmoid in :meth:`DenseNet.predict_proba`
  and in :class:`WithSigmoid`, the wrapper every user-facing output goes
  through.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddle_chexnet.cpu.layers import Conv3x3, ThreadedConv2D, ThreadedMaxPool2D
from paddle_chexnet.cpu.ops import (
    batch_norm_relu,
    batch_norm_relu_pool,
    concat_channels,
)
from paddle_chexnet.data.labels import CLASS_NAMES

# torch's BatchNorm2d(momentum=0.1, eps=1e-5) in Paddle's convention.
BN_MOMENTUM = 0.9


BN_EPSILON = 1e-5


_KAIMING = paddle.ParamAttr(initializer=nn.initializer.KaimingNormal())


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Conv2D:
    return nn.Conv2D(
        in_channels, out_channels, kernel, stride=stride, padding=padding,
        weight_attr=_KAIMING, bias_attr=False,
    )


def _norm(channels: int) -> nn.BatchNorm2D:
    return nn.BatchNorm2D(channels, momentum=BN_MOMENTUM, epsilon=BN_EPSILON)


class _DenseLayer(nn.Layer):
    """BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 producing ``growth_rate`` new channels."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int, drop_rate: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = _conv(in_channels, bn_size * growth_rate, 1)
        self.norm2 = _norm(bn_size * growth_rate)
        # nn.Conv2D(k=3, padding=1) with a faster CPU training path (cpu_conv.py)
        self.conv2 = Conv3x3(bn_size * growth_rate, growth_rate, weight_attr=_KAIMING)
        self.drop_rate = float(drop_rate)

    def forward(self, inputs: list[paddle.Tensor]) -> paddle.Tensor:
        concatenated = concat_channels(inputs)
        bottleneck = self.conv1(batch_norm_relu(concatenated, self.norm1))
        new_features = self.conv2(batch_norm_relu(bottleneck, self.norm2))
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
            layer = _DenseLayer(in_channels + i * growth_rate, growth_rate, bn_size, drop_rate)
            self.add_sublayer(name, layer)
            self.layer_names.append(name)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        features = [x]
        for name in self.layer_names:
            features.append(getattr(self, name)(features))
        return concat_channels(features)


class _Transition(nn.Layer):
    """BN-ReLU-Conv1x1 then 2x2 average pooling, halving the resolution.

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

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.conv(batch_norm_relu_pool(x, self.norm, self.pool))


class _Features(nn.Sequential):
    """``nn.Sequential`` that runs a BatchNorm2D directly followed by a ReLU as one :func:`batch_norm_relu`."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        layers = list(self._sub_layers.values())
        i = 0
        while i < len(layers):
            layer = layers[i]
            if type(layer) is nn.BatchNorm2D and i + 1 < len(layers) and type(layers[i + 1]) is nn.ReLU:
                x = batch_norm_relu(x, layer)
                i += 2
            else:
                x = layer(x)
                i += 1
        return x


class DenseNet(nn.Layer):
    """DenseNet-BC (Huang et al. 2017) laid out as torchvision's ``DenseNet``.

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
    ) -> None:
        super().__init__()
        if class_names is None:
            class_names = CLASS_NAMES if num_classes == len(CLASS_NAMES) else [f"class_{i}" for i in range(num_classes)]
        class_names = tuple(class_names)
        if len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but num_classes is {num_classes}; "
                "give one name per output"
            )
        self.class_names = class_names
        self.config = {
            "growth_rate": growth_rate,
            "block_config": tuple(block_config),
            "num_init_features": num_init_features,
            "bn_size": bn_size,
            "drop_rate": drop_rate,
            "num_classes": num_classes,
        }

        # the stem's convolution and pooling: nn.Conv2D / nn.MaxPool2D with multi-threaded CPU paths
        stem = [
            ("conv0", ThreadedConv2D(3, num_init_features, 7, stride=2, padding=3, weight_attr=_KAIMING)),
            ("norm0", _norm(num_init_features)),
            ("relu0", nn.ReLU()),
            ("pool0", ThreadedMaxPool2D(kernel_size=3, stride=2, padding=1)),
        ]
        body = []
        channels = num_init_features
        for i, num_layers in enumerate(block_config):
            body.append((f"denseblock{i + 1}", _DenseBlock(num_layers, channels, bn_size, growth_rate, drop_rate)))
            channels += num_layers * growth_rate
            if i != len(block_config) - 1:
                body.append((f"transition{i + 1}", _Transition(channels, channels // 2)))
                channels //= 2
        body.append(("norm5", _norm(channels)))
        self.features = _Features(*stem, *body)
        self.num_features = channels
        self.classifier = nn.Linear(
            channels, num_classes, bias_attr=paddle.ParamAttr(initializer=nn.initializer.Constant(0.0))
        )

    @property
    def targets(self) -> tuple[str, ...]:
        """The output names, as torchxrayvision calls them."""
        return self.class_names

    def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
        """The last feature map after the final BatchNorm and ReLU, ``[B, C, h, w]``.

        This is the map class activation mapping weighs with the classifier.
        """
        return F.relu(self.features(x))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """Logits ``[B, num_classes]`` (apply a sigmoid for probabilities)."""
        pooled = F.adaptive_avg_pool2d(self.forward_features(x), 1)
        return self.classifier(paddle.flatten(pooled, 1))

    def predict_proba(self, x: paddle.Tensor) -> paddle.Tensor:
        """Per-finding probabilities ``[B, num_classes]``."""
        return F.sigmoid(self(x))


class WithSigmoid(nn.Layer):
    """Wrap a logit network so its output is a probability (for export and serving)."""

    def __init__(self, net: nn.Layer) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return F.sigmoid(self.net(x))


def densenet121(num_classes: int = 1000, class_names: Sequence[str] | None = None, drop_rate: float = 0.0) -> DenseNet:
    """DenseNet-121: growth 32, blocks (6, 12, 24, 16), 64 stem features, bn_size 4."""
    return DenseNet(32, (6, 12, 24, 16), 64, 4, drop_rate, num_classes, class_names)


def chexnet(
    num_classes: int = len(CLASS_NAMES),
    weights: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    drop_rate: float = 0.0,
) -> DenseNet:
    """CheXNet: DenseNet-121 with a ``Linear(1024, num_classes)`` head.

    Args:
        num_classes (int, optional): number of findings. Default: 14.
        weights (str | Path, optional): a ``.pdparams`` file to load; every key
            and shape must match, or :class:`~paddle_chexnet.state_dict.StateDictMismatchError`
            lists what does not. Default: None (random initialisation).
        class_names (Sequence[str], optional): names of the outputs. Default: CheXNet's 14.
        drop_rate (float, optional): dropout after each dense layer. Default: 0.0.

    Examples:
        >>> net = chexnet()
        >>> net.class_names[:2]
        ('Atelectasis', 'Cardiomegaly')
    """
    net = densenet121(num_classes=num_classes, class_names=class_names, drop_rate=drop_rate)
    if weights is not None:
        from paddle_chexnet.models.state_dict import load_weights

        load_weights(net, weights)
    return net

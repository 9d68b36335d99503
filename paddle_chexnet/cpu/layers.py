"""Faster CPU-training layers, swapped into a network in place: same parameters, same names, same results.

The networks of :mod:`paddle_chexnet.models` are pure Paddle. For training on
a CPU, :func:`use_cpu_training_layers` changes the class of the layers where a
faster version applies to a subclass whose ``forward`` runs the package's C++
kernels (:mod:`paddle_chexnet.cpu.kernels`, built first by
:func:`~paddle_chexnet.cpu.kernels.prepare_kernels`): the object, its
parameters and its state-dict keys stay exactly as they were, so checkpoints
never depend on the swap, and :func:`use_plain_layers` undoes it.

What is swapped, by layer type (so on every backbone of the registry):

* every ``nn.Conv2D`` 3x3, stride 1, padding 1, without bias -> :class:`Conv3x3`
  (the kernel; where it could not be built, the fold path of
  :mod:`paddle_chexnet.cpu.fold` when a gradient is wanted): DenseNet's dense
  layers, ResNet's blocks;
* bias-free convolutions of kernel 5 or more (stems) -> :class:`ThreadedConv2D`;
* bias-free depthwise convolutions -> :class:`ThreadedDepthwiseConv2D`
  (EfficientNet's MBConv blocks);
* ``nn.MaxPool2D`` -> :class:`ThreadedMaxPool2D`;
* DenseNet's dense layers, dense blocks and transitions -> versions that fuse
  BatchNorm with the ReLU (and the transition's pooling) and concatenate with
  the kernel; a ``Sequential`` holding a BatchNorm directly followed by a ReLU
  (DenseNet's ``features``: the stem's ``norm0`` + ``relu0``) -> :class:`FusingSequential`;
* ResNet's basic and bottleneck blocks -> versions whose BatchNorm + ReLU steps run fused.

Each of these was measured to speed up the training step of the families it
applies to on the 2-core CPU of BENCHMARKS.md ("Architectures";
``benchmarks/bench_architectures.py --plain --layer-variants ...``); none is
swapped where it does not apply (EfficientNet's BatchNorms are followed by SiLU,
its 3x3 convolutions are depthwise or strided).

Every swapped layer falls back to its plain ``forward`` wherever its kernel does
not apply (a GPU tensor, a static graph, another dtype, kernels off).
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection

import paddle
import paddle.nn as nn

from paddle_chexnet.cpu import fold
from paddle_chexnet.cpu.kernels import prepare_kernels
from paddle_chexnet.cpu.ops import (
    batch_norm_relu,
    batch_norm_relu_pool,
    concat_channels,
    conv3x3_kernel,
    conv_im2col_kernel,
    depthwise_conv_kernel,
    kernels_apply,
    max_pool_kernel,
)
from paddle_chexnet.models.densenet import _DenseBlock, _DenseLayer, _Transition
from paddle_chexnet.models.resnet import BasicBlock, Bottleneck

logger = logging.getLogger(__name__)


def _square(value, name: str) -> int:
    """An int from Paddle's int-or-pair layer arguments, where both entries are equal."""
    values = [value] * 2 if isinstance(value, int) else list(value)
    if len(values) != 2 or values[0] != values[1]:
        raise ValueError(f"{name} must be one int or two equal ints for the CPU kernel, got {value!r}")
    return int(values[0])


def _pair(value) -> list[int]:
    return [int(value)] * 2 if isinstance(value, int) else [int(v) for v in value]


class Conv3x3(nn.Conv2D):
    """``nn.Conv2D(C_in, C_out, 3, padding=1, bias_attr=False)`` with the multi-threaded CPU kernel.

    Where the kernel cannot be built, training takes the fold path on maps of
    28x28 and larger. Same parameter (``weight``), same result to float rounding.
    """

    def __init__(self, in_channels: int, out_channels: int, weight_attr=None) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1, weight_attr=weight_attr, bias_attr=False)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if kernels_apply(x, self.weight):
            return conv3x3_kernel(x, self.weight)
        if fold.fold_path_applies(x, self.weight):
            return fold.conv3x3_fold(x, self.weight)
        return super().forward(x)


class ThreadedConv2D(nn.Conv2D):
    """A bias-free ``nn.Conv2D`` (groups 1, dilation 1) by the multi-threaded im2col kernel on the CPU.

    Used for the stems, where Paddle's one-thread im2col of the whole image
    took most of the convolution's time. Same arithmetic (im2col + one product
    per image).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 weight_attr=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         weight_attr=weight_attr, bias_attr=False)
        _square(stride, "stride")
        _square(padding, "padding")

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self._data_format == "NCHW" and kernels_apply(x, self.weight):
            return conv_im2col_kernel(x, self.weight, _square(self._stride, "stride"),
                                      _square(self._updated_padding, "padding"))
        return super().forward(x)


class ThreadedDepthwiseConv2D(nn.Conv2D):
    """A bias-free depthwise ``nn.Conv2D`` (groups = channels, square kernel, stride 1 or 2) by the CPU kernel.

    EfficientNet's MBConv blocks; Paddle's own depthwise kernels run on one thread. Same parameter
    (``weight [C, 1, k, k]``), same sums in another order.
    """

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, padding: int = 0, weight_attr=None) -> None:
        super().__init__(channels, channels, kernel_size, stride=stride, padding=padding, groups=channels,
                         weight_attr=weight_attr, bias_attr=False)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self._data_format == "NCHW" and kernels_apply(x, self.weight):
            return depthwise_conv_kernel(x, self.weight, _square(self._stride, "stride"),
                                         _square(self._updated_padding, "padding"))
        return super().forward(x)


class ThreadedMaxPool2D(nn.MaxPool2D):
    """``nn.MaxPool2D`` by the multi-threaded kernel on the CPU (Paddle's first-maximum gradient)."""

    def __init__(self, kernel_size: int, stride: int, padding: int = 0) -> None:
        super().__init__(kernel_size, stride=stride, padding=padding)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if not self.ceil_mode and not self.return_mask and self.data_format == "NCHW" and kernels_apply(x):
            return max_pool_kernel(x, _square(self.ksize, "kernel_size"), _square(self.stride, "stride"),
                                   _square(self.padding, "padding"))
        return super().forward(x)


class CpuDenseLayer(_DenseLayer):
    """A dense layer whose BatchNorm + ReLU run fused and whose inputs concatenate by the kernel."""

    def concatenate(self, inputs: list[paddle.Tensor]) -> paddle.Tensor:
        return concat_channels(inputs)

    def norm_relu(self, x: paddle.Tensor, norm: nn.BatchNorm2D) -> paddle.Tensor:
        return batch_norm_relu(x, norm)


class CpuDenseBlock(_DenseBlock):
    """A dense block concatenating by the kernel."""

    def concatenate(self, inputs: list[paddle.Tensor]) -> paddle.Tensor:
        return concat_channels(inputs)


class CpuTransition(_Transition):
    """A transition whose BatchNorm + ReLU + 2x2 average pooling run as one kernel."""

    def norm_relu_pool(self, x: paddle.Tensor) -> paddle.Tensor:
        return batch_norm_relu_pool(x, self.norm, self.pool)


class CpuBasicBlock(BasicBlock):
    """A ResNet basic block whose BatchNorm + ReLU (after ``conv1``) runs fused."""

    def norm_relu(self, x: paddle.Tensor, norm: nn.BatchNorm2D) -> paddle.Tensor:
        return batch_norm_relu(x, norm)


class CpuBottleneck(Bottleneck):
    """A ResNet bottleneck block whose two BatchNorm + ReLU steps run fused."""

    def norm_relu(self, x: paddle.Tensor, norm: nn.BatchNorm2D) -> paddle.Tensor:
        return batch_norm_relu(x, norm)


class FusingSequential(nn.Sequential):
    """``nn.Sequential`` that runs a ``BatchNorm2D`` directly followed by a ``ReLU`` as one fused kernel."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        layers = list(self._sub_layers.values())
        i = 0
        while i < len(layers):
            if type(layers[i]) is nn.BatchNorm2D and i + 1 < len(layers) and type(layers[i + 1]) is nn.ReLU:
                x = batch_norm_relu(x, layers[i])
                i += 2
            else:
                x = layers[i](x)
                i += 1
        return x


def _fuses(layer: nn.Sequential) -> bool:
    """True for a Sequential with a ``BatchNorm2D`` directly followed by a ``ReLU`` (DenseNet's ``features``)."""
    layers = list(layer._sub_layers.values())
    return any(type(a) is nn.BatchNorm2D and type(b) is nn.ReLU for a, b in zip(layers, layers[1:]))


def _is_conv3x3(layer: nn.Layer) -> bool:
    return (_pair(layer._kernel_size) == [3, 3] and _pair(layer._stride) == [1, 1]
            and list(layer._updated_padding) == [1, 1] and _pair(layer._dilation) == [1, 1])


def _plain_conv(layer: nn.Layer, groups: int = 1) -> bool:
    return (layer.bias is None and layer._groups == groups and layer._data_format == "NCHW"
            and layer._padding_mode == "zeros" and layer._padding_algorithm == "EXPLICIT")


def _is_depthwise(layer: nn.Layer) -> bool:
    kernel, stride, padding = _pair(layer._kernel_size), _pair(layer._stride), list(layer._updated_padding)
    return (layer._groups > 1 and layer._in_channels == layer._out_channels == layer._groups
            and _plain_conv(layer, layer._groups) and kernel[0] == kernel[1] and stride[0] == stride[1] in (1, 2)
            and len(padding) == 2 and padding[0] == padding[1] and _pair(layer._dilation) == [1, 1])


def _is_stem_conv(layer: nn.Layer) -> bool:
    kernel, stride, padding = _pair(layer._kernel_size), _pair(layer._stride), list(layer._updated_padding)
    return (kernel[0] == kernel[1] >= 5 and stride[0] == stride[1] and len(padding) == 2
            and padding[0] == padding[1] and _pair(layer._dilation) == [1, 1])


def _is_square_max_pool(layer: nn.Layer) -> bool:
    try:
        for value, name in ((layer.ksize, "kernel"), (layer.stride, "stride"), (layer.padding, "padding")):
            _square(value, name)
    except (TypeError, ValueError):
        return False
    return not layer.ceil_mode and not layer.return_mask and layer.data_format == "NCHW"


def _cpu_class(layer: nn.Layer) -> type | None:
    """The CPU-training class for ``layer``, or ``None`` where none applies."""
    kind = type(layer)
    if kind is nn.Conv2D and _plain_conv(layer):
        if _is_conv3x3(layer):
            return Conv3x3
        if _is_stem_conv(layer):
            return ThreadedConv2D
    if kind is nn.Conv2D and _is_depthwise(layer):
        return ThreadedDepthwiseConv2D
    if kind is nn.MaxPool2D and _is_square_max_pool(layer):
        return ThreadedMaxPool2D
    if kind is nn.Sequential:
        return FusingSequential if _fuses(layer) else None
    return {_DenseLayer: CpuDenseLayer, _DenseBlock: CpuDenseBlock, _Transition: CpuTransition,
            BasicBlock: CpuBasicBlock, Bottleneck: CpuBottleneck}.get(kind)


_PLAIN_CLASS = {Conv3x3: nn.Conv2D, ThreadedConv2D: nn.Conv2D, ThreadedMaxPool2D: nn.MaxPool2D,
                ThreadedDepthwiseConv2D: nn.Conv2D, CpuDenseLayer: _DenseLayer, CpuDenseBlock: _DenseBlock,
                CpuTransition: _Transition, FusingSequential: nn.Sequential, CpuBasicBlock: BasicBlock,
                CpuBottleneck: Bottleneck}


def use_cpu_training_layers(net: nn.Layer, exclude: Collection[str] = ()) -> Counter:
    """Swap the faster CPU-training layers into ``net``, in place; build the kernels first (one log line).

    Where the kernels cannot be built (no compiler) only the 3x3 convolutions are
    swapped: their fold path needs no kernels.

    Args:
        net (nn.Layer): the network (any of :mod:`paddle_chexnet.models`).
        exclude (Collection[str], optional): names of CPU classes not to swap in (``'Conv3x3'`` ...), for
            measuring what each one brings (``benchmarks/bench_architectures.py --layer-variants``). Default: ().

    Returns:
        Counter: how many layers of each CPU class were swapped in.
    """
    have_kernels = prepare_kernels() is not None
    swapped: Counter = Counter()
    for layer in [net, *net.sublayers()]:
        cpu_class = _cpu_class(layer)
        if cpu_class is None or cpu_class.__name__ in exclude or (not have_kernels and cpu_class is not Conv3x3):
            continue
        layer.__class__ = cpu_class
        swapped[cpu_class.__name__] += 1
    logger.debug("CPU training layers: %s", dict(swapped))
    return swapped


def use_plain_layers(net: nn.Layer) -> None:
    """Undo :func:`use_cpu_training_layers`: every swapped layer gets its plain class back."""
    for layer in [net, *net.sublayers()]:
        plain = _PLAIN_CLASS.get(type(layer))
        if plain is not None:
            layer.__class__ = plain


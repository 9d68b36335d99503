"""Where the network looks: CAM, Grad-CAM, Grad-CAM++ and PCAM maps for any finding, in batches, on every backbone.

The first three weigh the channels of a feature map ``A`` (``[B, C, h, w]``) and sum them:

* **CAM** (Zhou et al., CVPR 2016), CheXNet's own method: ``A`` is the last
  map after the backbone's final activation (``net.forward_features``: DenseNet's
  ``norm5`` + ReLU, ResNet's ``layer4``, EfficientNet's ``features.8``), the
  weights are the classifier's (``net.head_linear()``): ``M_k = sum_c W[c, k] A_c``.
  With average pooling the logit is ``mean(M_k) + b_k``, so the map is the
  logit spread over the image; the bias ``b_k`` is the same everywhere and is
  left out by default (``include_bias=True`` adds it to every cell, so the
  map's mean IS the logit). CAM is signed: negative cells argue against the
  finding. (With max, LSE or PCAM pooling the map is still the classifier's
  evidence at each cell, but the logit is no longer its mean.)
* **Grad-CAM** (Selvaraju et al., ICCV 2017): weights ``mean_ij dS_k/dA_cij``
  of the LOGIT ``S_k`` (the pre-sigmoid score, as the paper uses the
  pre-softmax one), map ``ReLU(sum_c w_c A_c)``. On the last map of a
  network with average pooling then a linear layer the gradient is
  ``W[c, k] / (h w)`` everywhere, so Grad-CAM equals ``ReLU(CAM) / (h w)``;
  it differs from CAM on earlier layers (``layer=``: any name of
  ``net.feature_stages()``) and with the other poolings.
* **Grad-CAM++** (Chattopadhay et al., WACV 2018), the paper's exponential
  variant: with ``Y_k = exp(S_k)`` and a network piecewise linear in ``A``,
  the higher derivatives are powers of the first and
  ``alpha_cij = g^2 / (2 g^2 + sum_ab A_cab g^3)`` with ``g = dS_k/dA_cij``;
  weights ``w_c = sum_ij alpha_cij ReLU(g_cij)``, map ``ReLU(sum_c w_c A_c)``.
  The paper's weights carry an extra factor ``exp(S_k)``, positive and the
  same for every cell: we drop it (it overflows for large logits and changes
  neither the shape of the map nor any box, since box thresholds are relative).

and the fourth is the network's own:

* **PCAM** (Ye et al. 2020), only for networks with ``pooling='pcam'``: the
  probability maps ``sigmoid(W_k . A_ij + b_k)`` that the pooling itself
  weighs the cells with (:func:`~paddle_chexnet.models.heads.probability_maps`),
  each cell's probability of the finding, in [0, 1].

Everything runs on Paddle's current device (CPU or GPU); results come back as
NumPy arrays.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import paddle
import paddle.nn.functional as F

from paddle_chexnet.models.heads import class_maps, probability_maps

METHODS: tuple[str, ...] = ("cam", "gradcam", "gradcampp", "pcam")

#: how figures and logs name each method
METHOD_TITLES: dict[str, str] = {"cam": "CAM", "gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "pcam": "PCAM"}


class Heatmaps(NamedTuple):
    """Heatmaps and the predictions of the same forward pass.

    Attributes:
        maps (numpy.ndarray): ``[B, K, h, w]`` float32, one map per image and requested class.
        probabilities (numpy.ndarray): ``[B, num_classes]`` sigmoid outputs.
        class_ids (numpy.ndarray): ``[K]``, the class index of each map.
    """

    maps: np.ndarray
    probabilities: np.ndarray
    class_ids: np.ndarray


def _as_tensor(images: paddle.Tensor | np.ndarray) -> paddle.Tensor:
    if isinstance(images, paddle.Tensor):
        return images
    return paddle.to_tensor(np.ascontiguousarray(images, dtype=np.float32))


def _class_ids(net, class_ids: Sequence[int] | None) -> np.ndarray:
    num_classes = int(net.num_classes)
    if class_ids is None:
        return np.arange(num_classes)
    ids = np.asarray(list(class_ids), dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
        raise ValueError(f"class ids must be in [0, {num_classes}), got {ids.tolist()}")
    return ids


def _check_net(net) -> None:
    if not all(hasattr(net, name) for name in ("feature_stages", "head_linear", "forward_features",
                                                 "logits_from_features")):
        raise TypeError(
            f"heatmaps need a network of paddle_chexnet.models (feature_stages, head_linear, forward_features), "
            f"got {type(net).__name__}"
        )


def stage_names(net) -> list[str]:
    """The layers Grad-CAM can explain: the names of the network's feature stages, in order."""
    return [name for name, _ in net.feature_stages()]


def resolve_layer(net, layer: str) -> str:
    """``layer`` as a stage name; ``features.denseblock2`` (the state dict's spelling) is ``denseblock2``."""
    names = stage_names(net)
    if layer in names:
        return layer
    for prefix in ("features.", "backbone."):
        if layer.startswith(prefix) and layer[len(prefix):] in names:
            return layer[len(prefix):]
    raise ValueError(f"unknown layer {layer!r} for {type(net).__name__}; choose one of {', '.join(names)}")


def _target_and_logits(net, images: paddle.Tensor, layer: str | None) -> tuple[paddle.Tensor, paddle.Tensor]:
    """The activation to explain (a leaf that requires grad) and the logits computed from it.

    ``layer=None`` is the last map after the final activation; otherwise the
    output of the named feature stage (e.g. ``'denseblock4'``, ``'transition3'``).
    Everything before the target runs without a graph.
    """
    if layer is None:
        with paddle.no_grad():
            target = net.forward_features(images)
        target = target.detach()
        target.stop_gradient = False
        return target, net.logits_from_features(target)
    stages = net.feature_stages()
    split = stage_names(net).index(resolve_layer(net, layer)) + 1
    with paddle.no_grad():
        x = images
        for _, stage in stages[:split]:
            x = stage(x)
    target = x.detach()
    target.stop_gradient = False
    x = target
    for _, stage in stages[split:]:
        x = stage(x)
    return target, net.logits_from_features(net.final_activation(x))


class _EvalMode:
    """Run a network in eval mode (BatchNorm uses running statistics, so images in a batch are independent)."""

    def __init__(self, net) -> None:
        self.net, self.was_training = net, net.training

    def __enter__(self):
        self.net.eval()
        return self.net

    def __exit__(self, *exc) -> None:
        if self.was_training:
            self.net.train()


def class_activation_maps(
    net,
    images: paddle.Tensor | np.ndarray,
    class_ids: Sequence[int] | None = None,
    include_bias: bool = False,
) -> Heatmaps:
    """CAM: the classifier's weights over the last feature map (after the backbone's final activation).

    Args:
        net (ChestXrayNet): the network (switched to eval mode for the call).
        images (paddle.Tensor | numpy.ndarray): ``[B, 3, H, W]`` normalised inputs, any size.
        class_ids (Sequence[int], optional): classes to map. Default: None (all).
        include_bias (bool, optional): add the classifier bias to every cell, so
            that each map's mean equals the logit. Default: False.

    Returns:
        Heatmaps: ``maps [B, K, h, w]`` (h, w = H/32, W/32 for every registered backbone but ``tiny``),
        probabilities, class ids.

    Examples:
        >>> from paddle_chexnet import DenseNet
        >>> net = DenseNet(growth_rate=4, block_config=(1, 2), num_init_features=8, bn_size=2, num_classes=14)
        >>> out = class_activation_maps(net, np.zeros((2, 3, 64, 64), "float32"), class_ids=[0, 5])
        >>> out.maps.shape
        (2, 2, 8, 8)
    """
    _check_net(net)
    ids = _class_ids(net, class_ids)
    with _EvalMode(net), paddle.no_grad():
        features = net.forward_features(_as_tensor(images))
        logits = net.logits_from_features(features)
        maps = class_maps(features, net.head_linear(), paddle.to_tensor(ids), include_bias)
        return Heatmaps(maps.numpy().astype(np.float32), F.sigmoid(logits).numpy(), ids)


def pcam_probability_maps(
    net,
    images: paddle.Tensor | np.ndarray,
    class_ids: Sequence[int] | None = None,
) -> Heatmaps:
    """PCAM: the per-class probability maps of a network that pools with ``'pcam'`` (values in [0, 1]).

    Args:
        net (ChestXrayNet): a network built with ``pooling='pcam'`` (switched to eval mode for the call).
        images (paddle.Tensor | numpy.ndarray): ``[B, 3, H, W]`` normalised inputs.
        class_ids (Sequence[int], optional): classes to map. Default: None (all).

    Raises:
        ValueError: the network pools otherwise (its logits are not computed from these maps).
    """
    _check_net(net)
    if getattr(net, "pooling", None) != "pcam":
        raise ValueError(
            f"PCAM heatmaps are the probability maps of a network trained with --pooling pcam; this one pools "
            f"with {getattr(net, 'pooling', None)!r}. Use cam, gradcam or gradcampp"
        )
    ids = _class_ids(net, class_ids)
    with _EvalMode(net), paddle.no_grad():
        features = net.forward_features(_as_tensor(images))
        logits = net.logits_from_features(features)
        maps = probability_maps(features, net.head_linear(), paddle.to_tensor(ids))
        return Heatmaps(maps.numpy().astype(np.float32), F.sigmoid(logits).numpy(), ids)


def _gradient_maps(net, images, class_ids, layer: str | None, plus_plus: bool) -> Heatmaps:
    _check_net(net)
    ids = _class_ids(net, class_ids)
    with _EvalMode(net):
        target, logits = _target_and_logits(net, _as_tensor(images), layer)
        activations = target.numpy().astype(np.float64)  # [B, C, h, w]
        batch, _, height, width = activations.shape
        maps = np.zeros((batch, len(ids), height, width), dtype=np.float64)
        for j, k in enumerate(ids):
            # images are independent in eval mode, so the gradient of the batch sum is per image
            (grad,) = paddle.grad(logits[:, int(k)].sum(), target, retain_graph=j < len(ids) - 1)
            g = grad.numpy().astype(np.float64)
            if plus_plus:
                g2, g3 = g * g, g * g * g
                denominator = 2.0 * g2 + activations.sum(axis=(2, 3), keepdims=True) * g3
                alpha = g2 / np.where(denominator != 0.0, denominator, 1.0)
                weights = (alpha * np.maximum(g, 0.0)).sum(axis=(2, 3))
            else:
                weights = g.mean(axis=(2, 3))
            maps[:, j] = np.maximum(np.einsum("bc,bchw->bhw", weights, activations), 0.0)
        probabilities = F.sigmoid(logits).numpy()
    return Heatmaps(maps.astype(np.float32), probabilities, ids)


def grad_cam(
    net, images: paddle.Tensor | np.ndarray, class_ids: Sequence[int] | None = None, layer: str | None = None
) -> Heatmaps:
    """Grad-CAM of the logits (see the module docstring).

    Args:
        net (ChestXrayNet): the network (switched to eval mode for the call).
        images (paddle.Tensor | numpy.ndarray): ``[B, 3, H, W]`` normalised inputs.
        class_ids (Sequence[int], optional): classes to map. Default: None (all).
        layer (str, optional): a feature stage to explain (``net.feature_stages()``, e.g.
            ``'denseblock4'``, ``'layer3'``, ``'7'``); None is the last map after the final activation. Default: None.

    Returns:
        Heatmaps: non-negative ``maps [B, K, h, w]``, probabilities, class ids.
    """
    return _gradient_maps(net, images, class_ids, layer, plus_plus=False)


def grad_cam_plus_plus(
    net, images: paddle.Tensor | np.ndarray, class_ids: Sequence[int] | None = None, layer: str | None = None
) -> Heatmaps:
    """Grad-CAM++ of the logits with the exponential output (see the module docstring).

    Arguments and result as :func:`grad_cam`.
    """
    return _gradient_maps(net, images, class_ids, layer, plus_plus=True)


def compute_heatmaps(
    net,
    images: paddle.Tensor | np.ndarray,
    method: str = "cam",
    class_ids: Sequence[int] | None = None,
    layer: str | None = None,
) -> Heatmaps:
    """Dispatch to :func:`class_activation_maps`, :func:`grad_cam`, :func:`grad_cam_plus_plus` or
    :func:`pcam_probability_maps`.

    Args:
        method (str, optional): one of :data:`METHODS`: ``'cam'``, ``'gradcam'``, ``'gradcampp'`` or ``'pcam'``
            (networks with ``pooling='pcam'`` only). Default: 'cam'.
        layer (str, optional): only for the gradient methods. Default: None.
    """
    if method in ("cam", "pcam"):
        if layer is not None:
            raise ValueError(f"{method.upper()} uses the last feature map by definition; layer= is for gradcam "
                             "and gradcampp")
        if method == "pcam":
            return pcam_probability_maps(net, images, class_ids)
        return class_activation_maps(net, images, class_ids)
    if method == "gradcam":
        return grad_cam(net, images, class_ids, layer)
    if method == "gradcampp":
        return grad_cam_plus_plus(net, images, class_ids, layer)
    raise ValueError(f"unknown heatmap method {method!r}; use one of {', '.join(METHODS)}")

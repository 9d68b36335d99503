"""From the last feature map to logits: global pooling and the linear classifier, shared by every backbone.

The classifier is an ``nn.Linear`` named ``classifier`` on the network itself
(torchvision's name for DenseNet's, so checkpoints map by name); the pooling
holds no parameters, so choosing another one never changes a state dict's keys.

* ``'avg'``: global average pooling, then the classifier (CheXNet, torchvision).

:func:`class_maps` gives the classifier applied at every cell of the map, the
class activation maps of CAM: with average pooling a logit is the mean of its
map plus the bias.
"""
from __future__ import annotations

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

POOLINGS: tuple[str, ...] = ("avg",)


def check_pooling(pooling: str) -> str:
    """``pooling`` if it is one of :data:`POOLINGS`, else a ``ValueError`` listing them."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    return pooling


def classify(features: paddle.Tensor, classifier: nn.Linear, pooling: str = "avg") -> paddle.Tensor:
    """Logits ``[B, K]`` from a feature map ``[B, C, h, w]``.

    Args:
        features (paddle.Tensor): the backbone's last map (after its final activation).
        classifier (nn.Linear): ``Linear(C, K)``.
        pooling (str, optional): one of :data:`POOLINGS`. Default: 'avg'.
    """
    if pooling == "avg":
        return classifier(paddle.flatten(F.adaptive_avg_pool2d(features, 1), 1))
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")


def class_maps(features: paddle.Tensor, classifier: nn.Linear, class_ids: paddle.Tensor | None = None,
               include_bias: bool = False) -> paddle.Tensor:
    """The classifier at every cell: ``[B, K, h, w]`` (CAM), for all classes or ``class_ids``.

    Args:
        features (paddle.Tensor): ``[B, C, h, w]``.
        classifier (nn.Linear): ``Linear(C, num_classes)`` (Paddle's weight is ``[C, num_classes]``).
        class_ids (paddle.Tensor, optional): int64 ``[K]``. Default: None (all classes).
        include_bias (bool, optional): add the bias to every cell. Default: False.
    """
    batch, channels, height, width = features.shape
    weight, bias = classifier.weight, classifier.bias
    if class_ids is not None:
        weight = paddle.index_select(weight, class_ids, axis=1)
        bias = None if bias is None else paddle.index_select(bias, class_ids)
    maps = paddle.matmul(weight, features.reshape([batch, channels, height * width]), transpose_x=True)
    if include_bias and bias is not None:
        maps = maps + bias.reshape([1, -1, 1])
    return maps.reshape([batch, weight.shape[1], height, width])

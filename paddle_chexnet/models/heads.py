"""From the last feature map to logits: global pooling and the linear classifier, shared by every backbone.

The classifier is one ``nn.Linear(C, K)`` of the network (reached by
:meth:`~paddle_chexnet.models.base.ChestXrayNet.head_linear`; torchvision's
names: DenseNet's ``classifier``, ResNet's ``fc``, EfficientNet's
``classifier.1``); the poolings hold no parameters, so choosing another one
never changes a state dict's keys.

* ``'avg'``: global average pooling, then the classifier (CheXNet, torchvision).
* ``'max'``: global max pooling, then the classifier.
* ``'lse'``: log-sum-exp pooling (Wang et al., ChestX-ray8, CVPR 2017), per
  channel ``m + log(mean_ij exp(r (A_ij - m))) / r`` with ``m = max_ij A_ij``
  (the subtraction keeps ``exp`` finite). ``r`` (:data:`LSE_R`) moves it
  between average pooling (``r -> 0``) and max pooling (``r -> inf``); it is
  fixed, not learned: 10, the value Wang et al. found best on ChestX-ray14
  (jfhealthcare/Chexpert's configuration uses 0.5).
* ``'pcam'``: probabilistic-CAM pooling (Ye et al. 2020, arXiv 2005.14480, as
  jfhealthcare/Chexpert's ``PcamPool``). Per class ``k`` the classifier at
  every cell gives the logit map ``M_k = W_k . A_ij + b_k``; its sigmoid, the
  probability map ``P_k``, normalised to sum to 1, weighs the cells of the
  feature map into one feature vector per class, ``f_k = sum_ij P_kij A_ij /
  sum_ij P_kij``, and the same classifier gives the logit ``W_k . f_k + b_k``.
  The probability maps are the method's heatmaps (:func:`probability_maps`).

:func:`class_maps` gives the classifier applied at every cell, the class
activation maps of CAM: with average pooling a logit is the mean of its map
plus the bias (with the other poolings the map is still the classifier's
evidence at each cell, but the logit is not its mean).
"""
from __future__ import annotations

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

POOLINGS: tuple[str, ...] = ("avg", "max", "lse", "pcam")

#: the fixed sharpness ``r`` of ``'lse'`` pooling (Wang et al. 2017's best on ChestX-ray14)
LSE_R = 10.0


def check_pooling(pooling: str) -> str:
    """``pooling`` if it is one of :data:`POOLINGS`, else a ``ValueError`` listing them."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    return pooling


def log_sum_exp_pool(features: paddle.Tensor, r: float | None = None) -> paddle.Tensor:
    """``[B, C]``: per channel ``m + log(mean exp(r (A - m))) / r`` over the ``h x w`` cells (see the module).

    Args:
        features (paddle.Tensor): ``[B, C, h, w]``.
        r (float, optional): the sharpness. Default: None (:data:`LSE_R`).
    """
    # (a default of LSE_R itself would not survive paddle.jit's rewrite of the function)
    r = LSE_R if r is None else float(r)
    flat = paddle.flatten(features, 2)
    # the value does not depend on m, and neither does the gradient (d/dm is 0), so m needs no graph
    m = paddle.max(flat, axis=2, keepdim=True).detach()
    mean = paddle.mean(paddle.exp(r * (flat - m)), axis=2)
    return m.squeeze(2) + paddle.log(mean) / r


def probability_maps(features: paddle.Tensor, classifier: nn.Linear,
                     class_ids: paddle.Tensor | None = None) -> paddle.Tensor:
    """PCAM's probability maps ``sigmoid(W_k . A_ij + b_k)``: ``[B, K, h, w]`` in [0, 1]."""
    return F.sigmoid(class_maps(features, classifier, class_ids, include_bias=True))


def pcam_pool(features: paddle.Tensor, classifier: nn.Linear) -> paddle.Tensor:
    """``[B, K, C]``: one feature vector per class, the cells weighted by its normalised probability map."""
    probabilities = paddle.flatten(probability_maps(features, classifier), 2)  # [B, K, hw]
    weights = probabilities / paddle.sum(probabilities, axis=2, keepdim=True)
    # an explicit transpose and bmm, not matmul(transpose_y=True): with a 1x1 map (32 px inputs) Paddle
    # Inference's oneDNN matmul on AVX-512 gave wrong products for that form (the export's verification caught it)
    return paddle.bmm(weights, paddle.transpose(paddle.flatten(features, 2), [0, 2, 1]))


def pool(features: paddle.Tensor, pooling: str = "avg") -> paddle.Tensor:
    """``[B, C]`` from ``[B, C, h, w]`` by ``'avg'``, ``'max'`` or ``'lse'`` (``'pcam'`` needs the classifier)."""
    if pooling == "avg":
        return paddle.flatten(F.adaptive_avg_pool2d(features, 1), 1)
    if pooling == "max":
        return paddle.flatten(F.adaptive_max_pool2d(features, 1), 1)
    if pooling == "lse":
        return log_sum_exp_pool(features)
    raise ValueError(f"unknown pooling {pooling!r} for pool(); choose one of avg, max, lse")


def classify(features: paddle.Tensor, classifier: nn.Linear, pooling: str = "avg",
             dropout: nn.Layer | None = None) -> paddle.Tensor:
    """Logits ``[B, K]`` from a feature map ``[B, C, h, w]``.

    Args:
        features (paddle.Tensor): the backbone's last map (after its final activation).
        classifier (nn.Linear): ``Linear(C, K)``.
        pooling (str, optional): one of :data:`POOLINGS`. Default: 'avg'.
        dropout (nn.Layer, optional): applied to the pooled features before the classifier
            (EfficientNet's ``classifier.0``). Default: None.
    """
    if pooling == "pcam":
        pooled = pcam_pool(features, classifier)  # [B, K, C]
        if dropout is not None:
            pooled = dropout(pooled)
        # class k's logit from class k's vector: W[:, k] . f_k + b_k
        logits = paddle.sum(pooled * paddle.transpose(classifier.weight, [1, 0]).unsqueeze(0), axis=2)
        return logits if classifier.bias is None else logits + classifier.bias
    pooled = pool(features, check_pooling(pooling))
    if dropout is not None:
        pooled = dropout(pooled)
    return classifier(pooled)


def class_maps(features: paddle.Tensor, classifier: nn.Linear, class_ids: paddle.Tensor | None = None,
               include_bias: bool = False) -> paddle.Tensor:
    """The classifier at every cell: ``[B, K, h, w]`` (CAM), for all classes or ``class_ids``.

    Args:
        features (paddle.Tensor): ``[B, C, h, w]``.
        classifier (nn.Linear): ``Linear(C, num_classes)`` (Paddle's weight is ``[C, num_classes]``).
        class_ids (paddle.Tensor, optional): int64 ``[K]``. Default: None (all classes).
        include_bias (bool, optional): add the bias to every cell. Default: False.
    """
    height, width = features.shape[2], features.shape[3]
    weight, bias = classifier.weight, classifier.bias
    if class_ids is not None:
        weight = paddle.index_select(weight, class_ids, axis=1)
        bias = None if bias is None else paddle.index_select(bias, class_ids)
    maps = paddle.matmul(weight, paddle.flatten(features, 2), transpose_x=True)
    if include_bias and bias is not None:
        maps = maps + bias.reshape([1, -1, 1])
    return maps.reshape([-1, weight.shape[1], height, width])

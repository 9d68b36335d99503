"""What every network of the registry offers, whatever its backbone.

:class:`ChestXrayNet` is the interface the trainer, the evaluation, the heatmaps
and the exports rely on:

* ``class_names`` / ``targets``: one name per output, in output order;
* ``forward(x)``: logits ``[B, K]`` (the sigmoid is applied by
  :meth:`predict_proba` and :class:`WithSigmoid`, never inside the network, so
  training uses the numerically stable BCE on logits);
* ``forward_features(x)``: the last feature map ``[B, C, h, w]`` after the
  backbone's final activation: what CAM weighs with the classifier;
* ``feature_stages()``: the backbone as named stages, run in order, whose
  result passed through :meth:`final_activation` is ``forward_features``; Grad-CAM
  explains the output of any of them;
* ``head_linear()``: the ``nn.Linear`` classifier, wherever the family's
  torchvision names put it (:attr:`ChestXrayNet.head_name`: DenseNet's
  ``classifier``, ResNet's ``fc``, EfficientNet's ``classifier.1``), and
  ``pooling``, the name of the parameter-free global pooling of
  :mod:`paddle_chexnet.models.heads`;
* ``spec``: the :class:`~paddle_chexnet.models.spec.ModelSpec` that rebuilds it
  (set by :func:`~paddle_chexnet.models.registry.build_network`).
"""
from __future__ import annotations

from collections.abc import Sequence

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from paddle_chexnet.models.heads import check_pooling, classify


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """CheXNet's 14 findings for 14 outputs, else ``class_0 ... class_{K-1}``."""
    from paddle_chexnet.data.labels import CLASS_NAMES

    return CLASS_NAMES if num_classes == len(CLASS_NAMES) else tuple(f"class_{i}" for i in range(num_classes))


class ChestXrayNet(nn.Layer):
    """Base class: output names, pooling and the shared forward; subclasses build the classifier and the backbone.

    A subclass names its ``nn.Linear`` classifier in :attr:`head_name` (a dotted path of sublayers,
    torchvision's name for it) and may apply a dropout before it (:meth:`head_dropout`).

    Args:
        num_classes (int): outputs.
        class_names (Sequence[str], optional): one name per output; ``None``: :func:`default_class_names`.
        pooling (str, optional): global pooling before the classifier. Default: 'avg'.

    Raises:
        ValueError: ``class_names`` does not have ``num_classes`` names, or the pooling is unknown.
    """

    spec = None  # a ModelSpec, set by the registry
    #: where the ``nn.Linear`` classifier sits, as a dotted path of sublayers (its state-dict prefix)
    head_name = "classifier"

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, pooling: str = "avg") -> None:
        super().__init__()
        names = tuple(class_names) if class_names is not None else default_class_names(num_classes)
        if len(names) != num_classes:
            raise ValueError(
                f"class_names has {len(names)} names but num_classes is {num_classes}; give one name per output"
            )
        self.num_classes = int(num_classes)
        self.class_names = names
        self.pooling = check_pooling(pooling)

    @property
    def targets(self) -> tuple[str, ...]:
        """The output names, as torchxrayvision calls them."""
        return self.class_names

    def head_linear(self) -> nn.Linear:
        """The ``nn.Linear(C, num_classes)`` classifier (at :attr:`head_name`)."""
        layer = self
        for part in self.head_name.split("."):
            layer = getattr(layer, part)
        return layer

    def head_keys(self) -> tuple[str, str]:
        """The classifier's state-dict keys: ``(<head_name>.weight, <head_name>.bias)``."""
        return f"{self.head_name}.weight", f"{self.head_name}.bias"

    def head_dropout(self) -> nn.Layer | None:
        """A dropout applied to the pooled features before the classifier (training only); none by default."""
        return None

    def feature_stages(self) -> list[tuple[str, nn.Layer]]:
        """The backbone's named stages, in order (see the module docstring)."""
        raise NotImplementedError

    def final_activation(self, x: paddle.Tensor) -> paddle.Tensor:
        """Applied after the last stage (DenseNet's ReLU after ``norm5``); identity by default."""
        return x

    def forward_features(self, x: paddle.Tensor) -> paddle.Tensor:
        """The last feature map ``[B, C, h, w]``, after the final activation."""
        for _, stage in self.feature_stages():
            x = stage(x)
        return self.final_activation(x)

    def logits_from_features(self, features: paddle.Tensor) -> paddle.Tensor:
        """Pooling and classifier: logits ``[B, K]`` from :meth:`forward_features`' map."""
        return classify(features, self.head_linear(), self.pooling, self.head_dropout())

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        """Logits ``[B, num_classes]`` (apply a sigmoid for probabilities)."""
        return self.logits_from_features(self.forward_features(x))

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

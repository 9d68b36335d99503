"""Converting DenseNet-121 weights from PyTorch and Paddle layouts to this package's names.

Four layouts are recognised from their keys (:func:`detect_format`), never
from a flag:

* ``'arnoweng'``: torchvision < 0.3 names (``denselayer1.norm.1.weight``,
  ``conv.2.weight``), as in arnoweng/CheXNet's ``model.pth.tar`` (usually with
  the ``module.densenet121.`` prefix of its ``DataParallel(CheXNet)`` wrapper)
  and in every module pickled by that torchvision (jrzech/reproduce-chexnet).
* ``'torchvision'``: today's torchvision names (``norm1``, ``conv2``), with a
  plain ``classifier.*`` or the ``classifier.0.*`` of ``Sequential(Linear,
  Sigmoid)``.
* ``'paddle_vision'``: ``paddle.vision.models.densenet121`` (``conv1_func``,
  ``db_conv_*``, ``tr_conv*``, ``batch_norm``, ``out``), the naming of Paddle's
  ImageNet weights and of jm12138/Paddle-CheXNet (``densenet121.`` prefix,
  ``out.0.*`` head).
* ``'paddle_chexnet'``: this package's own names, passed through.

Every path ends in one strict check: zero missing keys, zero unexpected keys,
every shape equal, or :class:`~paddle_chexnet.models.state_dict.StateDictMismatchError`
listing them. The reference implementations loaded with ``strict=False`` after
a rename that missed keys, and their users lost accuracy without an error.

The functions here are pure: they take a mapping of name -> array and return a
new ``dict[str, numpy.ndarray]``; reading files is :mod:`paddle_chexnet.conversion.readers`'s
job (only :func:`load_pretrained_backbone` reads, through it).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import paddle

from paddle_chexnet.data.labels import NUM_CLASSES
from paddle_chexnet.models.densenet import densenet121
from paddle_chexnet.models.state_dict import (
    StateDictMismatchError,
    expected_shapes,
    mismatch_report,
)

FORMATS: tuple[str, ...] = ("arnoweng", "torchvision", "paddle_vision", "paddle_chexnet")


HEADS: tuple[str, ...] = ("keep", "drop", "resize")


FORMAT_DESCRIPTIONS: dict[str, str] = {
    "arnoweng": "PyTorch, torchvision < 0.3 names (arnoweng/CheXNet, old pickled models, torchvision's ImageNet file)",
    "torchvision": "PyTorch, current torchvision names",
    "paddle_vision": "paddle.vision densenet121 names (Paddle's ImageNet file, jm12138/Paddle-CheXNet)",
    "paddle_chexnet": "this package's names",
}


CLASSIFIER_KEYS: tuple[str, str] = ("classifier.weight", "classifier.bias")


# Wrappers that training scripts put around the network: nn.DataParallel adds
# 'module.'; arnoweng's and jm12138's CheXNet classes hold it as 'densenet121'.
_WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "densenet121.")


# torchvision < 0.3 built _DenseLayer as an nn.Sequential whose children were
# named 'norm.1', 'relu.1', 'conv.1', 'norm.2', 'relu.2', 'conv.2'. Dots are no
# longer allowed in module names, so today's keys read 'norm1', 'conv2'; old
# checkpoints are fixed by joining the number back onto the layer name.
_LEGACY_DENSE_LAYER = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")


# Sequential(Linear, Sigmoid) heads (arnoweng, jrzech, jm12138) store the Linear as child 0.
_SEQUENTIAL_HEAD = re.compile(r"^(classifier|out)\.0\.")


# torch Linear stores [out, in], Paddle Linear [in, out]. The explicit list of
# the weights to transpose (DenseNet has exactly one Linear).
_TORCH_LINEAR_WEIGHTS: tuple[str, ...] = ("classifier.weight",)


_TORCH_BN_BUFFERS = {"running_mean": "_mean", "running_var": "_variance"}


_PADDLE_VISION_LAYER = re.compile(
    r"db_conv_(\d+)\.conv\d+_(\d+)\.bn_ac_func([12])\.(_batch_norm|_conv)\.(\w+)"
)


_PADDLE_VISION_TRANSITION = re.compile(r"tr_conv(\d+)_blk\.conv_ac_func\.(_batch_norm|_conv)\.(\w+)")


_PADDLE_VISION_SIMPLE = {
    "conv1_func._conv.": "features.conv0.",
    "conv1_func._batch_norm.": "features.norm0.",
    "batch_norm.": "features.norm5.",
    "out.": "classifier.",
}


@dataclass
class Conversion:
    """The result of :func:`convert_state_dict`.

    Attributes:
        state (dict[str, numpy.ndarray]): the converted weights, in the model's key order.
        format (str): the detected source layout, one of :data:`FORMATS`.
        num_classes (int | None): outputs of the converted classifier (``None`` when dropped).
        head (str): what was done with the classifier, one of :data:`HEADS`.
    """

    state: dict[str, np.ndarray]
    format: str
    num_classes: int | None
    head: str


def strip_wrapper_prefixes(key: str) -> str:
    """Remove leading ``module.`` / ``densenet121.`` wrappers from a parameter name."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def rename_legacy_key(key: str) -> str:
    """``...denselayer1.norm.1.weight`` -> ``...denselayer1.norm1.weight`` (other keys unchanged)."""
    return _LEGACY_DENSE_LAYER.sub(r"\1\2.", key)


def _describe_keys(keys: list[str]) -> str:
    if not keys:
        return "it is empty"
    if any(k.startswith("layer1.") for k in keys) and any(k.startswith("fc.") for k in keys):
        guess = "a ResNet (conv1, layer1..layer4, fc)"
    elif any(k.startswith("features.") for k in keys):
        guess = "a torchvision 'features' network other than DenseNet"
    else:
        guess = "something else"
    more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
    return f"its {len(keys)} keys look like {guess}: {', '.join(keys[:5])}{more}"


def detect_format(state: Mapping[str, object], source: str = "state dict") -> str:
    """Tell which DenseNet layout a state dict uses, from its keys.

    Args:
        state (Mapping[str, object]): parameter name -> array or tensor.
        source (str, optional): what to call ``state`` in messages (a file name). Default: "state dict".

    Returns:
        str: one of ``'arnoweng'``, ``'torchvision'``, ``'paddle_vision'``, ``'paddle_chexnet'``.

    Raises:
        ValueError: not a DenseNet state dict; the message says what the keys look like.

    Examples:
        >>> detect_format({"module.densenet121.features.denseblock1.denselayer1.norm.1.running_mean": 0})
        'arnoweng'
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"{source}: expected a state dict (name -> array), got a {type(state).__name__}")
    keys = [strip_wrapper_prefixes(str(k)) for k in state]
    if any(k.startswith(("conv1_func.", "db_conv_", "tr_conv")) for k in keys):
        return "paddle_vision"
    if any(k.startswith("features.denseblock") for k in keys):
        if any(k.endswith((".running_mean", ".running_var")) for k in keys):
            return "arnoweng" if any(_LEGACY_DENSE_LAYER.search(k) for k in keys) else "torchvision"
        if any(k.endswith(("._mean", "._variance")) for k in keys):
            return "paddle_chexnet"
    raise ValueError(
        f"{source} is not a DenseNet checkpoint: {_describe_keys(keys)}. Supported are DenseNet-121 weights from "
        "torchvision, arnoweng/CheXNet, jrzech/reproduce-chexnet, paddle.vision and this package."
    )


def to_numpy(key: str, value: object) -> np.ndarray:
    """A framework tensor or array as a NumPy array (floating point as float32)."""
    if hasattr(value, "detach"):
        value = value.detach()
    if hasattr(value, "cpu"):
        value = value.cpu()
    if hasattr(value, "numpy"):
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype == object:
        raise ValueError(f"entry {key!r} holds a {type(value).__name__}, not an array of weights")
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32, copy=False)
    return array


def _put(out: dict[str, np.ndarray], name: str, source_key: str, array: np.ndarray) -> None:
    if name in out:
        raise ValueError(f"two entries map to {name!r} (the second is {source_key!r}); the checkpoint is ambiguous")
    out[name] = array


def _torch_names(state: Mapping[str, object]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        name = strip_wrapper_prefixes(str(key))
        if name.endswith("num_batches_tracked"):  # a counter for momentum=None; Paddle has no such buffer
            continue
        name = _SEQUENTIAL_HEAD.sub(r"\1.", rename_legacy_key(name))
        parent, dot, last = name.rpartition(".")
        name = f"{parent}{dot}{_TORCH_BN_BUFFERS.get(last, last)}"
        array = to_numpy(str(key), value)
        if name in _TORCH_LINEAR_WEIGHTS:
            array = np.ascontiguousarray(array.T)
        _put(out, name, str(key), array)
    return out


def _paddle_vision_name(key: str) -> str:
    """Map one ``paddle.vision.models.densenet121`` name to ours (unknown names are returned unchanged)."""
    match = _PADDLE_VISION_LAYER.fullmatch(key)
    if match:
        block, layer, which, kind, param = match.groups()
        module = "norm" if kind == "_batch_norm" else "conv"
        return f"features.denseblock{int(block) - 1}.denselayer{layer}.{module}{which}.{param}"
    match = _PADDLE_VISION_TRANSITION.fullmatch(key)
    if match:
        block, kind, param = match.groups()
        module = "norm" if kind == "_batch_norm" else "conv"
        return f"features.transition{int(block) - 1}.{module}.{param}"
    for old, new in _PADDLE_VISION_SIMPLE.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key  # reported as unexpected by the strict check


def _paddle_vision_names(state: Mapping[str, object]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        name = _SEQUENTIAL_HEAD.sub(r"\1.", strip_wrapper_prefixes(str(key)))
        _put(out, _paddle_vision_name(name), str(key), to_numpy(str(key), value))
    return out


def _own_names(state: Mapping[str, object]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        _put(out, strip_wrapper_prefixes(str(key)), str(key), to_numpy(str(key), value))
    return out


def _strict_check(
    expected: Mapping[str, tuple[int, ...]], state: Mapping[str, np.ndarray], source: str, fmt: str
) -> None:
    report = mismatch_report(expected, state)
    if report:
        raise StateDictMismatchError(
            f"{source} ({fmt} layout) does not fit DenseNet-121 after renaming:\n{report}\n"
            "Nothing was converted: loading only the keys that match would silently lose accuracy. "
            "Is the file a DenseNet-121 checkpoint, complete and unmodified?"
        )


def _finish(
    state: dict[str, np.ndarray],
    fmt: str,
    model: paddle.nn.Layer | None,
    head: str,
    num_classes: int | None,
    source: str,
) -> Conversion:
    """Apply the head policy and the strict check; order the keys as the model's."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}; got {head!r}")
    file_classes = int(state["classifier.weight"].shape[1]) if "classifier.weight" in state else None
    if head == "keep":
        if file_classes is None:
            raise StateDictMismatchError(
                f"{source} has no classifier (classifier.weight); use head='drop' (--head drop) for a "
                "backbone, or head='resize' (--head resize) for a fresh classifier"
            )
        if num_classes is not None and num_classes != file_classes:
            raise ValueError(
                f"{source} has a {file_classes}-output classifier but num_classes is {num_classes}; use "
                f"head='resize' (--head resize) for a fresh {num_classes}-output classifier, or head='drop'"
            )
        num_classes = file_classes
    elif head == "resize" and num_classes is None:
        num_classes = int(model.classifier.weight.shape[1]) if model is not None else NUM_CLASSES
    if model is None:
        model = densenet121(num_classes=num_classes if num_classes is not None else NUM_CLASSES)
    expected = expected_shapes(model)
    backbone_expected = {k: v for k, v in expected.items() if k not in CLASSIFIER_KEYS}

    if head == "keep":
        _strict_check(expected, state, source, fmt)
        return Conversion({k: state[k] for k in expected}, fmt, num_classes, head)
    backbone = {k: v for k, v in state.items() if k not in CLASSIFIER_KEYS}
    _strict_check(backbone_expected, backbone, source, fmt)
    ordered = {k: backbone[k] for k in backbone_expected}
    if head == "drop":
        return Conversion(ordered, fmt, None, head)
    # resize: a freshly initialised classifier, as the model would start training with.
    fresh = model.state_dict()
    if int(fresh["classifier.weight"].shape[1]) != num_classes:
        raise ValueError(
            f"the model has {fresh['classifier.weight'].shape[1]} outputs but num_classes is {num_classes}; "
            "build the model with the num_classes you ask for"
        )
    for key in CLASSIFIER_KEYS:
        ordered[key] = np.asarray(fresh[key].numpy(), dtype=np.float32)
    return Conversion({k: ordered[k] for k in expected}, fmt, num_classes, head)


def torch_to_paddle(
    state: Mapping[str, object],
    model: paddle.nn.Layer | None = None,
    head: str = "keep",
    num_classes: int | None = None,
    source: str = "state dict",
) -> dict[str, np.ndarray]:
    """Convert a PyTorch DenseNet state dict (arnoweng legacy or torchvision names) to this package's names.

    Strips ``module.``/``densenet121.`` prefixes, renames the legacy ``norm.1``/``conv.2``
    keys, maps ``classifier.0.*`` to ``classifier.*``, ``running_mean`` to ``_mean`` and
    ``running_var`` to ``_variance``, drops ``num_batches_tracked``, transposes the Linear
    weight, then checks every key and shape against ``model``.

    Args:
        state (Mapping[str, object]): torch tensors or NumPy arrays by name.
        model (paddle.nn.Layer, optional): the network the weights are for. Default: None
            (a DenseNet-121 with the classifier size the head policy gives).
        head (str, optional): ``'keep'`` the classifier, ``'drop'`` it (backbone only, for
            training initialisation) or ``'resize'`` it (a fresh ``num_classes`` classifier). Default: 'keep'.
        num_classes (int, optional): wanted outputs; with ``'keep'`` it must equal the file's. Default: None.
        source (str, optional): what to call the weights in messages (a file name). Default: "state dict".

    Returns:
        dict[str, numpy.ndarray]: the converted weights, float32, in the model's key order.

    Raises:
        StateDictMismatchError: missing, unexpected or wrongly shaped keys (all listed).
        ValueError: not a PyTorch DenseNet state dict, or conflicting head options.

    Examples:
        >>> import torchvision  # doctest: +SKIP
        >>> weights = torch_to_paddle(torchvision.models.densenet121().state_dict(), head="drop")  # doctest: +SKIP
    """
    fmt = detect_format(state, source)
    if fmt not in ("arnoweng", "torchvision"):
        raise ValueError(f"{source} uses the {fmt} layout, not a PyTorch one; use convert_state_dict")
    return _finish(_torch_names(state), fmt, model, head, num_classes, source).state


def paddle_vision_to_chexnet(
    state: Mapping[str, object],
    model: paddle.nn.Layer | None = None,
    head: str = "keep",
    num_classes: int | None = None,
    source: str = "state dict",
) -> dict[str, np.ndarray]:
    """Convert ``paddle.vision.models.densenet121`` weights (or jm12138/Paddle-CheXNet's) to this package's names.

    Args and Returns are as in :func:`torch_to_paddle`; no weight is transposed (both are Paddle layouts).

    Examples:
        >>> from paddle.vision.models import densenet121 as paddle_densenet121
        >>> weights = paddle_vision_to_chexnet(paddle_densenet121().state_dict(), head="drop")
        >>> weights["features.conv0.weight"].shape
        (64, 3, 7, 7)
    """
    fmt = detect_format(state, source)
    if fmt != "paddle_vision":
        raise ValueError(f"{source} uses the {fmt} layout, not paddle.vision's; use convert_state_dict")
    return _finish(_paddle_vision_names(state), fmt, model, head, num_classes, source).state


def convert_state_dict(
    state: Mapping[str, object],
    model: paddle.nn.Layer | None = None,
    head: str = "keep",
    num_classes: int | None = None,
    source: str = "state dict",
) -> Conversion:
    """Detect the layout of ``state`` and convert it to this package's names (see :func:`torch_to_paddle`).

    Returns:
        Conversion: the weights with the detected format and the classifier size.
    """
    fmt = detect_format(state, source)
    if fmt in ("arnoweng", "torchvision"):
        renamed = _torch_names(state)
    elif fmt == "paddle_vision":
        renamed = _paddle_vision_names(state)
    else:
        renamed = _own_names(state)
    return _finish(renamed, fmt, model, head, num_classes, source)

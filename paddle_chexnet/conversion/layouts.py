"""Converting DenseNet, ResNet and EfficientNet weights from PyTorch and Paddle layouts to this package's names.

The family (DenseNet, ResNet, EfficientNet) and the layout are recognised from
the keys (:func:`detect_layout`), and the architecture (DenseNet-121/169/201,
ResNet-18/50/101, EfficientNet-B0..B3) from the keys and shapes
(:func:`~paddle_chexnet.models.loading.recognise_architecture`), never from a
flag. The layouts:

* ``'arnoweng'``: torchvision < 0.3 names (``denselayer1.norm.1.weight``,
  ``conv.2.weight``), as in arnoweng/CheXNet's ``model.pth.tar`` (usually with
  the ``module.densenet121.`` prefix of its ``DataParallel(CheXNet)`` wrapper)
  and in every module pickled by that torchvision (jrzech/reproduce-chexnet).
* ``'torchvision'``: today's torchvision names (DenseNet's ``norm1``,
  ``conv2``; ResNet's ``layer1.0.conv1``, ``fc``; EfficientNet's
  ``features.1.0.block.0.0``, ``classifier.1``), with a plain head or the
  ``classifier.0.*`` / ``fc.0.*`` of a ``Sequential(Linear, Sigmoid)`` head.
* ``'paddle_vision'``: ``paddle.vision.models.densenet*`` (``conv1_func``,
  ``db_conv_*``, ``tr_conv*``, ``batch_norm``, ``out``), the naming of Paddle's
  ImageNet DenseNets and of jm12138/Paddle-CheXNet (``densenet121.`` prefix,
  ``out.0.*`` head).
* ``'paddle_chexnet'``: this package's own names, passed through. Paddle's
  ``paddle.vision.models.resnet*`` (and its ImageNet files) use exactly these
  names, torchvision's with Paddle's BatchNorm buffers and Linear layout.

The torch-to-Paddle rename is torchvision's names plus three layout facts:
``running_mean -> _mean``, ``running_var -> _variance``, the Linear weight
transposed (the family's one classifier Linear); ``num_batches_tracked`` dropped.

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
    "paddle_vision": "paddle.vision densenet names (Paddle's ImageNet DenseNets, jm12138/Paddle-CheXNet)",
    "paddle_chexnet": "this package's names (paddle.vision's ResNets too)",
}


FAMILIES: tuple[str, ...] = ("densenet", "resnet", "efficientnet")


#: DenseNet's classifier keys (see :meth:`~paddle_chexnet.models.base.ChestXrayNet.head_keys` for any family)
CLASSIFIER_KEYS: tuple[str, str] = ("classifier.weight", "classifier.bias")


#: the classifier (the one Linear) of each family, in torchvision's names
HEAD_NAMES: dict[str, str] = {"densenet": "classifier", "resnet": "fc", "efficientnet": "classifier.1"}


SUPPORTED = (
    "Supported are DenseNet-121/169/201, ResNet-18/50/101 and EfficientNet-B0..B3 weights from torchvision, "
    "DenseNet-121 checkpoints of arnoweng/CheXNet and jrzech/reproduce-chexnet, paddle.vision's DenseNets and "
    "ResNets, and this package's files."
)


# Wrappers that training scripts put around the network: nn.DataParallel adds
# 'module.'; arnoweng's and jm12138's CheXNet classes hold it as 'densenet121'.
_WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "densenet121.")


# torchvision < 0.3 built _DenseLayer as an nn.Sequential whose children were
# named 'norm.1', 'relu.1', 'conv.1', 'norm.2', 'relu.2', 'conv.2'. Dots are no
# longer allowed in module names, so today's keys read 'norm1', 'conv2'; old
# checkpoints are fixed by joining the number back onto the layer name.
_LEGACY_DENSE_LAYER = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")


# Sequential(Linear, Sigmoid) heads (arnoweng, jrzech, jm12138) store the Linear as child 0. (EfficientNet's
# classifier.1 is torchvision's own Sequential(Dropout, Linear), kept as it is.)
_SEQUENTIAL_HEAD = re.compile(r"^(classifier|out)\.0\.")
_SEQUENTIAL_HEADS: dict[str, re.Pattern | None] = {
    "densenet": _SEQUENTIAL_HEAD, "resnet": re.compile(r"^(fc)\.0\."), "efficientnet": None,
}


# torch Linear stores [out, in], Paddle Linear [in, out]. The explicit list of
# the weights to transpose: each family has exactly one Linear, its classifier
# (EfficientNet's squeeze-excitation fc1/fc2 are 1x1 convolutions, same layout in both).
_TORCH_LINEAR_WEIGHTS: dict[str, tuple[str, ...]] = {
    "densenet": ("classifier.weight",), "resnet": ("fc.weight",), "efficientnet": ("classifier.1.weight",),
}


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
        arch (str | None): the registered architecture the weights are for (``None`` for a network given
            without a spec whose structure is not a registered one).
        family (str): the backbone family, one of :data:`FAMILIES`.
    """

    state: dict[str, np.ndarray]
    format: str
    num_classes: int | None
    head: str
    arch: str | None = "densenet121"
    family: str = "densenet"


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
        guess = "a ResNet (conv1, layer1..layer4, fc) without its BatchNorm statistics"
    elif any(k.startswith("features.") for k in keys):
        guess = "a torchvision 'features' network other than DenseNet and EfficientNet"
    else:
        guess = "something else"
    more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
    return f"its {len(keys)} keys look like {guess}: {', '.join(keys[:5])}{more}"


def _family(keys: list[str]) -> str | None:
    """The backbone family of (wrapper-stripped) keys, or ``None``."""
    if any(k.startswith(("conv1_func.", "db_conv_", "tr_conv")) for k in keys):
        return "paddle_vision_densenet"
    if any(k.startswith("features.denseblock") for k in keys):
        return "densenet"
    names = set(keys)
    if "conv1.weight" in names and any(k.startswith("layer1.0.") for k in keys):
        return "resnet"
    if "features.0.0.weight" in names and any(k.startswith("features.1.0.block.") for k in keys):
        return "efficientnet"
    return None


def detect_layout(state: Mapping[str, object], source: str = "state dict") -> tuple[str, str]:
    """Tell a state dict's layout and backbone family from its keys.

    Args:
        state (Mapping[str, object]): parameter name -> array or tensor.
        source (str, optional): what to call ``state`` in messages (a file name). Default: "state dict".

    Returns:
        tuple[str, str]: the layout (one of :data:`FORMATS`) and the family (one of :data:`FAMILIES`).

    Raises:
        ValueError: not a state dict of a supported network; the message says what the keys look like.

    Examples:
        >>> detect_layout({"conv1.weight": 0, "layer1.0.conv1.weight": 0, "bn1.running_mean": 0})
        ('torchvision', 'resnet')
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"{source}: expected a state dict (name -> array), got a {type(state).__name__}")
    keys = [strip_wrapper_prefixes(str(k)) for k in state]
    family = _family(keys)
    if family == "paddle_vision_densenet":
        return "paddle_vision", "densenet"
    if family is not None:
        if any(k.endswith((".running_mean", ".running_var")) for k in keys):
            legacy = family == "densenet" and any(_LEGACY_DENSE_LAYER.search(k) for k in keys)
            return ("arnoweng" if legacy else "torchvision"), family
        if any(k.endswith(("._mean", "._variance")) for k in keys):
            return "paddle_chexnet", family
    raise ValueError(f"{source} is not a checkpoint of a supported network: {_describe_keys(keys)}. {SUPPORTED}")


def detect_format(state: Mapping[str, object], source: str = "state dict") -> str:
    """Tell which layout a state dict uses, from its keys (:func:`detect_layout` without the family).

    Returns:
        str: one of ``'arnoweng'``, ``'torchvision'``, ``'paddle_vision'``, ``'paddle_chexnet'``.

    Raises:
        ValueError: not a state dict of a supported network; the message says what the keys look like.

    Examples:
        >>> detect_format({"module.densenet121.features.denseblock1.denselayer1.norm.1.running_mean": 0})
        'arnoweng'
    """
    return detect_layout(state, source)[0]


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


def _torch_names(state: Mapping[str, object], family: str = "densenet") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    sequential_head = _SEQUENTIAL_HEADS[family]
    for key, value in state.items():
        name = strip_wrapper_prefixes(str(key))
        if name.endswith("num_batches_tracked"):  # a counter for momentum=None; Paddle has no such buffer
            continue
        if family == "densenet":
            name = rename_legacy_key(name)
        if sequential_head is not None:
            name = sequential_head.sub(r"\1.", name)
        parent, dot, last = name.rpartition(".")
        name = f"{parent}{dot}{_TORCH_BN_BUFFERS.get(last, last)}"
        array = to_numpy(str(key), value)
        if name in _TORCH_LINEAR_WEIGHTS[family]:
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
    expected: Mapping[str, tuple[int, ...]], state: Mapping[str, np.ndarray], source: str, fmt: str,
    target: str = "DenseNet-121", note: str = "",
) -> None:
    report = mismatch_report(expected, state)
    if report:
        raise StateDictMismatchError(
            f"{source} ({fmt} layout) does not fit {target} after renaming:{note}\n{report}\n"
            "Nothing was converted: loading only the keys that match would silently lose accuracy. "
            f"Is the file a {target} checkpoint, complete and unmodified?"
        )


def _model_family(model: paddle.nn.Layer) -> str | None:
    from paddle_chexnet.models.densenet import DenseNet
    from paddle_chexnet.models.efficientnet import EfficientNet
    from paddle_chexnet.models.resnet import ResNet

    for family, kind in (("densenet", DenseNet), ("resnet", ResNet), ("efficientnet", EfficientNet)):
        if isinstance(model, kind):
            return family
    return None


def _target(state: Mapping[str, np.ndarray], model: paddle.nn.Layer | None, source: str):
    """The architecture the weights are checked against, its name for messages, and a note on the match."""
    from paddle_chexnet.models.loading import recognise_architecture

    recognised = recognise_architecture(state)
    if model is not None:
        spec = getattr(model, "spec", None)
        target = spec.arch if spec is not None else type(model).__name__
        arch = spec.arch if spec is not None else (recognised.arch if recognised is not None else None)
        note = ""
        if recognised is not None and _model_family(model) not in (None, recognised.family):
            note = f" it holds {recognised.describe()}, the network is {target}"
        elif recognised is not None and spec is not None and recognised.arch not in (None, spec.arch) \
                and spec.arch != recognised.family:
            note = f" it holds {recognised.arch} weights, the network is {spec.arch}"
        return arch, target, note
    if recognised is None:  # a family whose telltale keys are there but not the structure's
        raise ValueError(f"{source} is not a checkpoint of a supported network: {_describe_keys(list(state))}. "
                         f"{SUPPORTED}")
    if recognised.arch is not None:
        return recognised.arch, recognised.arch, ""
    from paddle_chexnet.models.registry import architectures

    known = ", ".join(n for n, a in architectures().items() if a.family == recognised.family)
    note = (f" its keys are {recognised.describe()}, which is not a registered architecture "
            f"(the {recognised.family} ones: {known}); compared with the closest, {recognised.nearest}")
    return recognised.nearest, recognised.nearest, note


def _finish(
    state: dict[str, np.ndarray],
    fmt: str,
    model: paddle.nn.Layer | None,
    head: str,
    num_classes: int | None,
    source: str,
    family: str = "densenet",
) -> Conversion:
    """Apply the head policy and the strict check; order the keys as the model's."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}; got {head!r}")
    arch, target, note = _target(state, model, source)
    head_name = model.head_name if model is not None and hasattr(model, "head_name") else HEAD_NAMES[family]
    head_keys = (f"{head_name}.weight", f"{head_name}.bias")
    file_classes = int(state[head_keys[0]].shape[1]) if head_keys[0] in state else None
    if head == "keep":
        if file_classes is None:
            raise StateDictMismatchError(
                f"{source} has no classifier ({head_keys[0]}); use head='drop' (--head drop) for a "
                "backbone, or head='resize' (--head resize) for a fresh classifier"
            )
        if num_classes is not None and num_classes != file_classes:
            raise ValueError(
                f"{source} has a {file_classes}-output classifier but num_classes is {num_classes}; use "
                f"head='resize' (--head resize) for a fresh {num_classes}-output classifier, or head='drop'"
            )
        num_classes = file_classes
    elif head == "resize" and num_classes is None:
        num_classes = int(model.head_linear().weight.shape[1]) if model is not None else NUM_CLASSES
    if model is None:
        from paddle_chexnet.models.registry import build_network

        model = build_network(arch, num_classes=num_classes if num_classes is not None else NUM_CLASSES)
    expected = expected_shapes(model)
    backbone_expected = {k: v for k, v in expected.items() if k not in head_keys}

    def done(weights: dict[str, np.ndarray], classes: int | None) -> Conversion:
        return Conversion(weights, fmt, classes, head, arch, family)

    if head == "keep":
        _strict_check(expected, state, source, fmt, target, note)
        return done({k: state[k] for k in expected}, num_classes)
    backbone = {k: v for k, v in state.items() if k not in head_keys}
    _strict_check(backbone_expected, backbone, source, fmt, target, note)
    ordered = {k: backbone[k] for k in backbone_expected}
    if head == "drop":
        return done(ordered, None)
    # resize: a freshly initialised classifier, as the model would start training with.
    fresh = model.state_dict()
    if int(fresh[head_keys[0]].shape[1]) != num_classes:
        raise ValueError(
            f"the model has {fresh[head_keys[0]].shape[1]} outputs but num_classes is {num_classes}; "
            "build the model with the num_classes you ask for"
        )
    for key in head_keys:
        ordered[key] = np.asarray(fresh[key].numpy(), dtype=np.float32)
    return done({k: ordered[k] for k in expected}, num_classes)


def torch_to_paddle(
    state: Mapping[str, object],
    model: paddle.nn.Layer | None = None,
    head: str = "keep",
    num_classes: int | None = None,
    source: str = "state dict",
) -> dict[str, np.ndarray]:
    """Convert a PyTorch state dict (torchvision names, or DenseNet's arnoweng legacy ones) to this package's names.

    Strips ``module.``/``densenet121.`` prefixes, renames DenseNet's legacy ``norm.1``/``conv.2``
    keys, maps a ``Sequential(Linear, Sigmoid)`` head (``classifier.0.*``, ``fc.0.*``) to the Linear's
    name, ``running_mean`` to ``_mean`` and ``running_var`` to ``_variance``, drops
    ``num_batches_tracked``, transposes the classifier's Linear weight, then checks every key and
    shape against ``model``.

    Args:
        state (Mapping[str, object]): torch tensors or NumPy arrays by name.
        model (paddle.nn.Layer, optional): the network the weights are for. Default: None
            (the registered architecture the keys and shapes are, with the classifier size the head
            policy gives).
        head (str, optional): ``'keep'`` the classifier, ``'drop'`` it (backbone only, for
            training initialisation) or ``'resize'`` it (a fresh ``num_classes`` classifier). Default: 'keep'.
        num_classes (int, optional): wanted outputs; with ``'keep'`` it must equal the file's. Default: None.
        source (str, optional): what to call the weights in messages (a file name). Default: "state dict".

    Returns:
        dict[str, numpy.ndarray]: the converted weights, float32, in the model's key order.

    Raises:
        StateDictMismatchError: missing, unexpected or wrongly shaped keys (all listed).
        ValueError: not a PyTorch state dict of a supported network, or conflicting head options.

    Examples:
        >>> import torchvision  # doctest: +SKIP
        >>> weights = torch_to_paddle(torchvision.models.densenet121().state_dict(), head="drop")  # doctest: +SKIP
    """
    fmt, family = detect_layout(state, source)
    if fmt not in ("arnoweng", "torchvision"):
        raise ValueError(f"{source} uses the {fmt} layout, not a PyTorch one; use convert_state_dict")
    return _finish(_torch_names(state, family), fmt, model, head, num_classes, source, family).state


def paddle_vision_to_chexnet(
    state: Mapping[str, object],
    model: paddle.nn.Layer | None = None,
    head: str = "keep",
    num_classes: int | None = None,
    source: str = "state dict",
) -> dict[str, np.ndarray]:
    """Convert ``paddle.vision.models.densenet*`` weights (or jm12138/Paddle-CheXNet's) to this package's names.

    Args and Returns are as in :func:`torch_to_paddle`; no weight is transposed (both are Paddle layouts).

    Examples:
        >>> from paddle.vision.models import densenet121 as paddle_densenet121
        >>> weights = paddle_vision_to_chexnet(paddle_densenet121().state_dict(), head="drop")
        >>> weights["features.conv0.weight"].shape
        (64, 3, 7, 7)
    """
    fmt, family = detect_layout(state, source)
    if fmt != "paddle_vision":
        raise ValueError(f"{source} uses the {fmt} layout, not paddle.vision's; use convert_state_dict")
    return _finish(_paddle_vision_names(state), fmt, model, head, num_classes, source, family).state


def convert_state_dict(
    state: Mapping[str, object],
    model: paddle.nn.Layer | None = None,
    head: str = "keep",
    num_classes: int | None = None,
    source: str = "state dict",
) -> Conversion:
    """Detect the layout, family and architecture of ``state`` and convert it to this package's names.

    See :func:`torch_to_paddle` for the arguments.

    Returns:
        Conversion: the weights with the detected format, family and architecture, and the classifier size.

    Examples:
        >>> import torchvision  # doctest: +SKIP
        >>> conversion = convert_state_dict(torchvision.models.resnet18().state_dict())  # doctest: +SKIP
        >>> conversion.arch, conversion.format, conversion.num_classes  # doctest: +SKIP
        ('resnet18', 'torchvision', 1000)
    """
    fmt, family = detect_layout(state, source)
    if fmt in ("arnoweng", "torchvision"):
        renamed = _torch_names(state, family)
    elif fmt == "paddle_vision":
        renamed = _paddle_vision_names(state)
    else:
        renamed = _own_names(state)
    return _finish(renamed, fmt, model, head, num_classes, source, family)

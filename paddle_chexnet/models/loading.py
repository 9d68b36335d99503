"""The one loader: any weights file this project writes (or converts) back into its network.

:func:`load_network` reads the :class:`~paddle_chexnet.models.spec.ModelSpec`
from the file's JSON sidecar, builds the network through the registry and
loads the weights strictly (every key and shape, finite values). Weights
without a spec are recognised from their keys where that is unambiguous
(:func:`recognise_architecture`): every registered architecture, and a
DenseNet of any growth rate, blocks and width (read off its shapes), so CheXNet
files converted by earlier versions, or copied without their JSON, load too.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paddle_chexnet.errors import UnusableFileError
from paddle_chexnet.models.registry import architectures, build_network
from paddle_chexnet.models.spec import ModelSpec, read_sidecar, sidecar_path, spec_from_record
from paddle_chexnet.models.state_dict import check_state_dict, read_state_dict

logger = logging.getLogger(__name__)


def _shape(state: Mapping[str, object], key: str) -> tuple[int, ...]:
    return tuple(int(s) for s in getattr(state[key], "shape", np.shape(state[key])))


def infer_densenet_options(state: Mapping[str, object]) -> dict[str, object] | None:
    """A DenseNet's hyper-parameters read off its state dict (this package's names), or ``None`` if not one."""
    needed = ("features.conv0.weight", "features.denseblock1.denselayer1.conv1.weight",
              "features.denseblock1.denselayer1.conv2.weight")
    if not all(key in state for key in needed):
        return None
    growth_rate = _shape(state, "features.denseblock1.denselayer1.conv2.weight")[0]
    block_config = []
    block = 1
    while f"features.denseblock{block}.denselayer1.conv1.weight" in state:
        layers = 1
        while f"features.denseblock{block}.denselayer{layers + 1}.conv1.weight" in state:
            layers += 1
        block_config.append(layers)
        block += 1
    return {
        "growth_rate": growth_rate,
        "block_config": tuple(block_config),
        "num_init_features": _shape(state, "features.conv0.weight")[0],
        "bn_size": _shape(state, "features.denseblock1.denselayer1.conv1.weight")[0] // growth_rate,
    }


@dataclass(frozen=True)
class Recognised:
    """What a state dict (this package's names) is, read off its keys and shapes.

    Attributes:
        family (str): ``'densenet'``, ``'resnet'`` or ``'efficientnet'``.
        arch (str | None): the registered (``--arch``) architecture with exactly this structure, or ``None``.
        nearest (str): the registered architecture of the family closest to it (to check the keys against).
        structure (dict): what was read off the keys (a DenseNet's or ResNet's options, an EfficientNet's
            stem width, blocks per stage and head width).
        head_name (str): the classifier's state-dict prefix in this family.
    """

    family: str
    arch: str | None
    nearest: str
    structure: dict
    head_name: str

    def num_classes(self, state: Mapping[str, object]) -> int | None:
        """Outputs of the classifier in ``state`` (Paddle's Linear weight is ``[in, out]``), ``None`` without one."""
        key = f"{self.head_name}.weight"
        return _shape(state, key)[1] if key in state else None

    def describe(self) -> str:
        """One line: ``'a ResNet (bottleneck blocks 3-4-6-3)'``."""
        parts = []
        for key, value in self.structure.items():
            shown = "-".join(map(str, value)) if isinstance(value, tuple) else value
            parts.append(f"{key.replace('_', ' ')} {shown}")
        return f"a {FAMILY_TITLES[self.family]} ({', '.join(parts)})"


#: how messages name the families
FAMILY_TITLES = {"densenet": "DenseNet", "resnet": "ResNet", "efficientnet": "EfficientNet"}


def _structure_readers() -> dict[str, tuple]:
    """family -> (read the structure off a state dict, the structure of registered defaults, head name)."""
    from paddle_chexnet.models.densenet import DenseNet
    from paddle_chexnet.models.efficientnet import EfficientNet, efficientnet_structure, infer_efficientnet_structure
    from paddle_chexnet.models.resnet import ResNet, infer_resnet_options

    def densenet_options(defaults: Mapping) -> dict:
        return {k: defaults[k] for k in ("growth_rate", "block_config", "num_init_features", "bn_size")}

    return {
        "densenet": (infer_densenet_options, densenet_options, DenseNet.head_name),
        "resnet": (infer_resnet_options, lambda defaults: {k: defaults[k] for k in ("block", "layers")},
                   ResNet.head_name),
        "efficientnet": (infer_efficientnet_structure, lambda defaults: efficientnet_structure(**defaults),
                         EfficientNet.head_name),
    }


def _distance(a: Mapping[str, object], b: Mapping[str, object]) -> float:
    """How far two structures are: block-count differences, plus a large step for any other difference."""
    total = 0.0
    for key in set(a) | set(b):
        x, y = a.get(key), b.get(key)
        if isinstance(x, tuple) and isinstance(y, tuple) and len(x) == len(y):
            total += sum(abs(int(i) - int(j)) for i, j in zip(x, y))
        elif x != y:
            total += 1000.0
    return total


def recognise_architecture(state: Mapping[str, object]) -> Recognised | None:
    """The family and registered architecture of a state dict in this package's names; ``None`` if no family fits.

    Only the ``--arch`` architectures are matched (a damaged DenseNet-121 missing a dense layer is
    reported as nearest ``densenet121``, never accepted as another network).

    Examples:
        >>> from paddle_chexnet.models.registry import build_network
        >>> recognise_architecture(build_network("tiny", 3).state_dict()).arch
        'tiny'
    """
    for family, (read, structure_of, head_name) in _structure_readers().items():
        structure = read(state)
        if structure is None:
            continue
        candidates = {name: structure_of(a.defaults) for name, a in architectures().items() if a.family == family}
        exact = [name for name, s in candidates.items() if s == structure]
        nearest = exact[0] if exact else min(candidates, key=lambda n: _distance(candidates[n], structure))
        return Recognised(family, exact[0] if exact else None, nearest, dict(structure), head_name)
    return None


def infer_spec(state: Mapping[str, object], class_names: Sequence[str] | None = None,
               source: str = "weights") -> ModelSpec:
    """The spec of weights that came without one, from their keys and shapes.

    Every registered architecture is recognised; a DenseNet of other hyper-parameters is the generic
    ``'densenet'`` with its options (they can be read off its shapes).

    Raises:
        UnusableFileError: the keys are not a known network's; the message asks for the sidecar.
    """
    recognised = recognise_architecture(state)
    num_classes = None if recognised is None else recognised.num_classes(state)
    if recognised is None or num_classes is None or (recognised.arch is None and recognised.family != "densenet"):
        what = "are not a known network's" if recognised is None else (
            f"are {recognised.describe()}, " + ("without a classifier" if num_classes is None
                                                else "which is not a registered architecture"))
        raise UnusableFileError(
            f"{source} has no JSON sidecar ({sidecar_path(source).name}) saying what network it is, and its keys "
            f"{what}. Keep the .json that train.py or tools/convert_torch.py wrote beside it; "
            "PyTorch checkpoints must be converted first (tools/convert_torch.py)"
        )
    if class_names is None:
        from paddle_chexnet.models.base import default_class_names

        class_names = default_class_names(num_classes)
    if recognised.arch is not None:
        return ModelSpec(arch=recognised.arch, num_classes=num_classes, class_names=tuple(class_names))
    return ModelSpec(arch="densenet", num_classes=num_classes, class_names=tuple(class_names),
                     options=recognised.structure)


def network_spec(weights: str | Path, state: Mapping[str, object] | None = None) -> ModelSpec:
    """The spec of a weights file: from its sidecar, else inferred from its keys (reading them if not given)."""
    record = read_sidecar(weights)
    spec = None if record is None else spec_from_record(record, str(sidecar_path(weights)))
    if spec is not None:
        return spec
    state = read_state_dict(weights) if state is None else state
    names = record.get("class_names") if record else None  # earlier conversion sidecars
    return infer_spec(state, names or None, str(weights))


def load_network(weights: str | Path, class_names: Sequence[str] | None = None, train: bool = False):
    """Build the network a weights file describes and load it strictly; eval mode unless ``train``.

    Args:
        weights (str | Path): a ``.pdparams`` written by ``train.py`` or ``tools/convert_torch.py``
            (with or without its JSON sidecar).
        class_names (Sequence[str], optional): rename the outputs (same count). Default: None (the spec's).
        train (bool, optional): leave the network in training mode. Default: False.

    Raises:
        FileNotFoundError: no such file.
        UnusableFileError: unreadable, non-finite, or not fitting its spec
            (:class:`~paddle_chexnet.models.state_dict.StateDictMismatchError` lists the keys).

    Examples:
        >>> net = load_network("outputs/demo/best.pdparams")  # doctest: +SKIP
        >>> net.spec.arch, net.class_names[:2]  # doctest: +SKIP
        ('densenet121', ('Atelectasis', 'Cardiomegaly'))
    """
    state = read_state_dict(weights)
    spec = network_spec(weights, state)
    if class_names is not None:
        spec = spec.with_updates(class_names=tuple(class_names))
    net = build_network(spec.arch, spec.num_classes, spec.class_names, spec.pooling, spec.task, **spec.options)
    net.spec = spec
    check_state_dict(net, state, source=str(weights))
    net.set_state_dict(state)
    if not train:
        net.eval()
    return net

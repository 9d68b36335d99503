"""The one loader: any weights file this project writes (or converts) back into its network.

:func:`load_network` reads the :class:`~paddle_chexnet.models.spec.ModelSpec`
from the file's JSON sidecar, builds the network through the registry and
loads the weights strictly (every key and shape, finite values). Weights
without a spec are recognised from their keys where that is unambiguous: a
DenseNet's growth rate, blocks and width can be read off its shapes, so
CheXNet files converted by earlier versions, or copied without their JSON, load
too.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
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
              "features.denseblock1.denselayer1.conv2.weight", "classifier.weight")
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


def infer_spec(state: Mapping[str, object], class_names: Sequence[str] | None = None,
               source: str = "weights") -> ModelSpec:
    """The spec of weights that came without one (DenseNets only: their shapes tell the architecture).

    Raises:
        UnusableFileError: the keys are not a DenseNet's; the message asks for the sidecar.
    """
    options = infer_densenet_options(state)
    if options is None:
        raise UnusableFileError(
            f"{source} has no JSON sidecar ({sidecar_path(source).name}) saying what network it is, and its keys "
            "are not a DenseNet's. Keep the .json that train.py or tools/convert_torch.py wrote beside it; "
            "PyTorch checkpoints must be converted first (tools/convert_torch.py)"
        )
    num_classes = _shape(state, "classifier.weight")[1]  # Paddle's Linear weight is [in, out]
    if class_names is None:
        from paddle_chexnet.models.base import default_class_names

        class_names = default_class_names(num_classes)
    for name, architecture in architectures(listed_only=False).items():
        if architecture.family == "densenet" and architecture.listed and dict(architecture.defaults) == options:
            return ModelSpec(arch=name, num_classes=num_classes, class_names=tuple(class_names))
    return ModelSpec(arch="densenet", num_classes=num_classes, class_names=tuple(class_names), options=options)


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

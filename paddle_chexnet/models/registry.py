"""The one place networks are built by name.

Each backbone family module registers its architectures when it is imported
(:func:`register`); :func:`build_network` imports the families on first use,
so naming an architecture is enough. A new architecture is added by
registering it in its family module and listing that module in
:data:`FAMILY_MODULES`, nowhere else: ``train.py --arch``, the weights loader,
the exports and the conversion all read this registry.

Examples:
    >>> from paddle_chexnet.models.registry import build_network
    >>> net = build_network("tiny", num_classes=3, class_names=["a", "b", "c"])
    >>> net.spec.arch, net.class_names
    ('tiny', ('a', 'b', 'c'))
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: modules that register architectures when imported
FAMILY_MODULES: tuple[str, ...] = ("paddle_chexnet.models.densenet", "paddle_chexnet.models.resnet",
                                   "paddle_chexnet.models.efficientnet")


@dataclass(frozen=True)
class Architecture:
    """A registered network.

    Attributes:
        name (str): what ``--arch`` and the sidecar call it.
        family (str): the backbone family (``'densenet'`` ...), for the conversion of foreign weights.
        build (Callable): ``build(num_classes, class_names, pooling, **options)`` -> network.
        defaults (Mapping[str, Any]): the architecture's hyper-parameters (what ``options`` override).
        description (str): one line for ``--help`` and the docs.
        torchvision_name (str, optional): the ``torchvision.models`` constructor of the same network, for
            ``tools/convert_torch.py --verify``. Default: None.
        listed (bool): offered as a ``--arch`` choice (``False`` for the generic, option-driven entries that
            the weights loader uses). Default: True.
    """

    name: str
    family: str
    build: Callable[..., Any]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    torchvision_name: str | None = None
    listed: bool = True


_ARCHITECTURES: dict[str, Architecture] = {}


def register(architecture: Architecture) -> Architecture:
    """Add ``architecture`` to the registry (its name must be new)."""
    if architecture.name in _ARCHITECTURES:
        raise ValueError(f"architecture {architecture.name!r} is registered twice")
    _ARCHITECTURES[architecture.name] = architecture
    return architecture


def _load_families() -> None:
    for module in FAMILY_MODULES:
        importlib.import_module(module)


def architectures(listed_only: bool = True) -> dict[str, Architecture]:
    """The registered architectures by name (only the ``--arch`` choices unless ``listed_only=False``)."""
    _load_families()
    return {name: a for name, a in _ARCHITECTURES.items() if a.listed or not listed_only}


def architecture_names() -> tuple[str, ...]:
    """The ``--arch`` choices, in registration order."""
    return tuple(architectures())


def get_architecture(name: str) -> Architecture:
    """The architecture called ``name``, or a ``ValueError`` that lists the known ones."""
    known = architectures(listed_only=False)
    if name not in known:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(architecture_names())}")
    return known[name]


def build_network(
    arch: str,
    num_classes: int = 14,
    class_names: Sequence[str] | None = None,
    pooling: str = "avg",
    task: str | None = None,
    drop_rate: float = 0.0,
    **options: Any,
):
    """Build a freshly initialised network by name and attach its :class:`~paddle_chexnet.models.spec.ModelSpec`.

    Args:
        arch (str): a registered architecture (:func:`architecture_names`).
        num_classes (int, optional): outputs. Default: 14.
        class_names (Sequence[str], optional): one name per output. Default: None (CheXNet's 14 for 14 outputs).
        pooling (str, optional): global pooling (:data:`~paddle_chexnet.models.heads.POOLINGS`). Default: 'avg'.
        task (str, optional): the task the outputs belong to, recorded in the spec. Default: None.
        drop_rate (float, optional): dropout where the family has it (training only; not recorded). Default: 0.0.
        **options: architecture hyper-parameters overriding the registered defaults (recorded in the spec).

    Raises:
        ValueError: unknown architecture or pooling, or class names that do not match ``num_classes``.
    """
    from paddle_chexnet.models.spec import ModelSpec

    architecture = get_architecture(arch)
    net = architecture.build(num_classes, class_names, pooling, drop_rate=drop_rate, **options)
    net.spec = ModelSpec(arch=arch, num_classes=int(num_classes), class_names=tuple(net.class_names),
                         pooling=pooling, task=task, options=dict(options))
    return net

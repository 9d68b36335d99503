"""Networks in pure Paddle, built by name and loaded back from any weights file the project writes.

* :func:`build_network` (``registry``): a fresh network by architecture name.
* :func:`load_network` (``loading``): a weights file back into its network, reading the
  architecture, pooling, task and class names from its JSON sidecar (``spec``).
* :class:`DenseNet`, :func:`chexnet`, :func:`densenet121` (``densenet``), :class:`ResNet` (``resnet``),
  :class:`EfficientNet` (``efficientnet``); :class:`WithSigmoid` (``base``).
* :func:`recognise_architecture` (``loading``): the registered architecture a state dict's keys and shapes are.
* :func:`check_state_dict`, :func:`read_state_dict`, :class:`StateDictMismatchError` (``state_dict``).

Nothing here imports the CPU package: faster CPU-training layers are swapped in from outside.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "build_network": "registry", "architecture_names": "registry", "get_architecture": "registry",
    "register": "registry", "Architecture": "registry",
    "load_network": "loading", "network_spec": "loading", "recognise_architecture": "loading",
    "ModelSpec": "spec", "read_spec": "spec", "sidecar_path": "spec",
    "DenseNet": "densenet", "chexnet": "densenet", "densenet121": "densenet",
    "ResNet": "resnet", "EfficientNet": "efficientnet",
    "ChestXrayNet": "base", "WithSigmoid": "base",
    "check_state_dict": "state_dict", "read_state_dict": "state_dict", "load_weights": "state_dict",
    "StateDictMismatchError": "state_dict", "NonFiniteWeightsError": "state_dict",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

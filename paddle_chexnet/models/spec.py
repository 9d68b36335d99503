"""What a weights file is: the ``ModelSpec`` stored in its JSON sidecar.

Every ``.pdparams`` the project writes has a JSON file of the same name beside
it (``best.pdparams`` / ``best.json``, ``model.pdparams`` / ``model.json``),
holding under the key ``"model"`` the architecture, its options, the pooling,
the task and the class names: everything :func:`~paddle_chexnet.models.loading.load_network`
needs to rebuild the network without flags. Thresholds and calibration
temperatures that evaluation fits are stored there too
(:func:`update_sidecar_spec`, what ``eval.py --save-to-weights`` calls): every
command that prints probabilities applies the temperatures, and
``tools/predict.py`` and the web app call findings positive by the thresholds.

Sidecars of earlier versions (training checkpoints with only ``"config"`` and
``"class_names"``, conversion sidecars with ``"num_classes"`` and
``"class_names"``) are still read; weights without any sidecar are recognised
from their keys where the family allows it (DenseNets).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from paddle_chexnet.utils.io import atomic_write_text, read_json_file

SPEC_KEY = "model"


@dataclass(frozen=True)
class ModelSpec:
    """Everything that rebuilds a network, and what its outputs mean.

    Attributes:
        arch (str): the registered architecture.
        num_classes (int): outputs.
        class_names (tuple[str, ...]): one name per output.
        pooling (str): the global pooling. Default: 'avg'.
        task (str, optional): the task the outputs belong to. Default: None.
        options (dict): architecture hyper-parameters beyond the registered defaults. Default: {}.
        thresholds (dict[str, float], optional): a decision threshold per output. Default: None.
        threshold_rule (str, optional): how the thresholds were chosen (``'youden'`` ...). Default: None.
        temperatures (dict[str, float], optional): per-output temperature scaling of the logits. Default: None.
    """

    arch: str
    num_classes: int
    class_names: tuple[str, ...]
    pooling: str = "avg"
    task: str | None = None
    options: dict = field(default_factory=dict)
    thresholds: dict | None = None
    threshold_rule: str | None = None
    temperatures: dict | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"the spec names {len(self.class_names)} classes for {self.num_classes} outputs")

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["class_names"] = list(self.class_names)
        values["options"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.options.items()}
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "sidecar") -> ModelSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source}: unknown model field(s) {', '.join(unknown)}")
        try:
            options = {k: (tuple(v) if isinstance(v, list) else v) for k, v in dict(values.get("options") or {}).items()}
            return cls(**{**values, "options": options, "num_classes": int(values["num_classes"]),
                          "class_names": tuple(values["class_names"])})
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{source}: the model record is incomplete ({exc}); expected arch, num_classes, "
                             "class_names") from None

    def with_updates(self, **changes: Any) -> ModelSpec:
        return replace(self, **changes)

    def threshold_values(self, where: str = "the model's thresholds") -> tuple[float, ...] | None:
        """The thresholds in ``class_names`` order, or ``None`` when the spec has none.

        Raises:
            ValueError: a class without a threshold, an unknown class, or a value outside [0, 1];
                the message starts with ``where``.
        """
        return None if self.thresholds is None else _per_class(self.thresholds, self.class_names, where,
                                                               "threshold", lambda v: 0.0 <= v <= 1.0,
                                                               "a number in [0, 1]")

    def temperature_values(self, where: str = "the model's temperatures") -> tuple[float, ...] | None:
        """The temperatures in ``class_names`` order, or ``None`` when the spec has none.

        Raises:
            ValueError: a class without a temperature, an unknown class, or a value that is not a
                positive finite number; the message starts with ``where``.
        """
        return None if self.temperatures is None else _per_class(self.temperatures, self.class_names, where,
                                                                 "temperature", lambda v: 0.0 < v < math.inf,
                                                                 "a positive number")


def _per_class(values: object, class_names: tuple[str, ...], where: str, what: str, valid, expected: str
               ) -> tuple[float, ...]:
    if not isinstance(values, Mapping):
        raise ValueError(f"{where}: expected an object {{class name: {what}}}, got {type(values).__name__}")
    unknown = [k for k in values if k not in class_names]
    if unknown:
        raise ValueError(f"{where}: {what} for unknown class(es) {', '.join(map(str, unknown))}; the model's "
                         f"classes are {', '.join(class_names)}")
    missing = [n for n in class_names if n not in values]
    if missing:
        raise ValueError(f"{where}: no {what} for {', '.join(missing)}")
    out = []
    for name in class_names:
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not valid(float(value)):
            raise ValueError(f"{where}: the {what} of {name} must be {expected}, got {value!r}")
        out.append(float(value))
    return tuple(out)


def sidecar_path(weights: str | Path) -> Path:
    """The JSON beside a weights file: ``best.pdparams`` -> ``best.json``."""
    return Path(weights).with_suffix(".json")


def read_sidecar(weights: str | Path) -> dict[str, Any] | None:
    """The sidecar's JSON, or ``None`` when there is none; a ``ValueError`` names a malformed one."""
    path = sidecar_path(weights)
    if not path.is_file():
        return None
    record = read_json_file(path)
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return record


def spec_from_record(record: Mapping[str, Any], source: str) -> ModelSpec | None:
    """The spec in a sidecar record, this version's or an earlier one's; ``None`` if it holds none."""
    if isinstance(record.get(SPEC_KEY), Mapping):
        return ModelSpec.from_dict(record[SPEC_KEY], source)
    names = record.get("class_names")
    config = record.get("config")
    if isinstance(config, Mapping) and config.get("arch") and names:
        # a training checkpoint of an earlier version
        return ModelSpec(arch=str(config["arch"]), num_classes=len(names), class_names=tuple(names))
    return None


def read_spec(weights: str | Path) -> ModelSpec | None:
    """The :class:`ModelSpec` of a weights file from its sidecar, or ``None`` when the sidecar has none."""
    record = read_sidecar(weights)
    return None if record is None else spec_from_record(record, str(sidecar_path(weights)))


def spec_record(spec: ModelSpec) -> dict[str, Any]:
    """``{"model": spec}``, to merge into a sidecar."""
    return {SPEC_KEY: spec.to_dict()}


def update_sidecar_spec(weights: str | Path, base: ModelSpec | None = None, **changes: Any) -> ModelSpec:
    """Change fields of the spec in a weights file's sidecar, keeping every other key of the JSON.

    The sidecar is read, its ``"model"`` record updated (written from ``base`` when the sidecar
    holds no spec yet, e.g. weights without a sidecar or one of an earlier version) and the
    file replaced atomically, so a reader never sees half of it. A training checkpoint's
    other keys (epoch, metric, the digests of its files) are kept as they are.

    Args:
        weights (str | Path): the ``.pdparams``; its sidecar is :func:`sidecar_path` of it.
        base (ModelSpec, optional): the spec to start from when the sidecar has none
            (:func:`~paddle_chexnet.models.loading.network_spec` infers it). Default: None.
        **changes: fields of :class:`ModelSpec`, e.g. ``thresholds={...}, threshold_rule="youden"``
            or ``temperatures={...}``; they are checked as :meth:`ModelSpec.threshold_values` and
            :meth:`ModelSpec.temperature_values` check them.

    Returns:
        ModelSpec: the spec now stored.

    Raises:
        ValueError: an unknown field, a malformed sidecar, no spec and no ``base``, or invalid values.

    Examples:
        >>> update_sidecar_spec("outputs/run/best.pdparams", thresholds=t, threshold_rule="youden")  # doctest: +SKIP
    """
    path = sidecar_path(weights)
    unknown = sorted(set(changes) - set(ModelSpec.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown model field(s) {', '.join(unknown)}")
    record = read_sidecar(weights) or {}
    spec = spec_from_record(record, str(path)) or base
    if spec is None:
        raise ValueError(f"{path}: holds no model record to update; give the spec to start from")
    updated = spec.with_updates(**{k: (dict(v) if isinstance(v, Mapping) else v) for k, v in changes.items()})
    updated.threshold_values(f"{path}: thresholds")
    updated.temperature_values(f"{path}: temperatures")
    record[SPEC_KEY] = updated.to_dict()
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return updated

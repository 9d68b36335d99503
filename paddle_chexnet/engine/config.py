"""The settings of a training run, defined once: :class:`TrainConfig` is where ``train.py``'s flags come from.

Each field carries its help text, its group and (where it has them) its
choices, taken from the package's own constants; :func:`add_config_arguments`
turns the fields into command-line options and :func:`config_from_sources`
merges, by priority, the flags typed on the command line, a ``--config`` file
(JSON, or YAML with pyyaml) and the defaults. A value of the wrong type in a
file (``"epochs": "ten"``) is an error naming the key and the type expected.

Examples:
    >>> config = TrainConfig(data_dir="demo/ChestX-ray14-synthetic", arch="tiny", epochs=2)
    >>> config.checkpoint_dir
    PosixPath('outputs/chexnet')
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paddle_chexnet.errors import UserError

GROUPS: tuple[str, ...] = ("data", "model", "optimisation", "run")


def _architecture_names() -> tuple[str, ...]:
    from paddle_chexnet.models.registry import architecture_names

    return architecture_names()


def _datasets() -> tuple[str, ...]:
    from paddle_chexnet.data.tasks import DATASETS

    return DATASETS


def _tasks() -> tuple[str, ...]:
    from paddle_chexnet.data.tasks import TASKS

    return TASKS


def _views() -> tuple[str, ...]:
    from paddle_chexnet.data.chexpert import VIEWS

    return VIEWS


def _poolings() -> tuple[str, ...]:
    from paddle_chexnet.models.heads import POOLINGS

    return POOLINGS


def _optimizers() -> tuple[str, ...]:
    from paddle_chexnet.engine.optim import OPTIMIZERS

    return OPTIMIZERS


def _schedules() -> tuple[str, ...]:
    from paddle_chexnet.engine.optim import SCHEDULES

    return SCHEDULES


def _class_weightings() -> tuple[str, ...]:
    from paddle_chexnet.engine.losses import CLASS_WEIGHTINGS

    return CLASS_WEIGHTINGS


def setting(default: Any, help: str, group: str, choices: Callable[[], Sequence[str]] | None = None,
            minimum: int | float | None = None, flag: str | None = None) -> Any:
    """A :class:`TrainConfig` field with what its command-line option needs.

    Args:
        default (Any): the default value (a tuple for sequences).
        help (str): the option's help text.
        group (str): one of :data:`GROUPS`.
        choices (Callable, optional): returns the allowed values (package constants, read when needed).
        minimum (int | float, optional): the smallest allowed value (``None`` stays allowed where the
            default is ``None``). Default: None.
        flag (str, optional): the option's name when it is not ``--<field-name>`` (``--no-progress``).
    """
    return field(default=default, metadata={"help": help, "group": group, "choices": choices,
                                            "minimum": minimum, "flag": flag})


@dataclass
class TrainConfig:
    """Everything a training run depends on; every field is also a ``train.py`` flag (``--batch-size``)."""

    # data
    dataset: str = setting("nih", "nih (ChestX-ray14: images/, labels/*_list.txt) or chexpert (Stanford's "
                                  "CheXpert-v1.0[-small] with train.csv, valid.csv)", "data", choices=_datasets)
    data_dir: str = setting("ChestX-ray14", "data set folder (NIH: images/ and labels/ inside; CheXpert: the "
                                            "folder holding CheXpert-v1.0-small/)", "data")
    image_dir: str | None = setting(None, "image folder (default: DATA_DIR/images; NIH's nested "
                                          "images_0NN/images/ works)", "data")
    train_list: str | None = setting(None, "training label list or CheXpert CSV (default: "
                                           "DATA_DIR/labels/train_list.txt; CheXpert: train.csv)", "data")
    val_list: str | None = setting(None, "validation label list or CheXpert CSV (default: "
                                         "DATA_DIR/labels/val_list.txt; CheXpert: valid.csv)", "data")
    val_fraction: float | None = setting(None, "validate on this fraction of the training list's patients "
                                               "(a seeded patient-level split) instead of --val-list", "data",
                                         minimum=0)
    task: str | None = setting(None, "what the network predicts: chexnet14 (default on nih), nih8, abnormal, "
                                     "chexpert5 (default on chexpert), chexpert14", "data", choices=_tasks)
    uncertainty: str = setting("paper", "CheXpert's uncertain (-1) labels: ignore (masked), zeros, ones, per "
                                        "class (Atelectasis=ones,Edema=ones,...) or paper (the CheXpert "
                                        "paper's choices)", "data")
    views: str = setting("frontal", "CheXpert views: frontal or all", "data", choices=_views)
    cache: str | None = setting(None, "an image cache made by tools/build_cache.py (same pixels, decoded and "
                                      "resized once)", "data")
    skip_missing: bool = setting(False, "drop listed images that are not on disk instead of stopping", "data")
    resize: int = setting(256, "shorter side before cropping", "data", minimum=1)
    crop: int = setting(224, "random crop (training) and center crop (validation)", "data", minimum=1)
    num_workers: int = setting(4, "data-loader processes (0: load in the training process); the result does "
                                  "not depend on it", "data", minimum=0)
    shared_memory: bool = setting(True, "shared memory (/dev/shm) between the loader processes and training: "
                                        "use this switch when /dev/shm is small, as in many containers", "data",
                                  flag="--no-shared-memory")
    # model
    arch: str = setting("densenet121", "network (tiny: a few thousand parameters, for a first look)", "model",
                        choices=_architecture_names)
    pooling: str = setting("avg", "global pooling before the classifier", "model", choices=_poolings)
    pretrained: str | None = setting(None, "ImageNet weights for the backbone: a torchvision .pth, a Paddle "
                                           ".pdparams, or 'imagenet' to download Paddle's (needs internet)",
                                     "model")
    # optimisation
    epochs: int = setting(20, "total epochs, resumes included", "optimisation", minimum=1)
    batch_size: int = setting(16, "images per step per process", "optimisation", minimum=1)
    lr: float = setting(1e-3, "initial learning rate (for one process; see --scale-lr)", "optimisation")
    scale_lr: bool = setting(False, "multiply --lr by the number of processes (linear scaling rule)",
                             "optimisation")
    optimizer: str = setting("adam", "adam (the paper's, betas 0.9/0.999) or sgd (momentum)", "optimisation",
                             choices=_optimizers)
    momentum: float = setting(0.9, "SGD momentum", "optimisation", minimum=0)
    weight_decay: float = setting(0.0, "L2 weight decay", "optimisation", minimum=0)
    schedule: str = setting("plateau", "plateau: lr / 10 when the validation loss stops improving; piecewise: "
                                       "x0.1 at --milestones; constant", "optimisation", choices=_schedules)
    plateau_patience: int = setting(0, "epochs without improvement before the plateau cut", "optimisation",
                                    minimum=0)
    milestones: tuple[int, ...] = setting((10, 15, 18), "epochs of the piecewise schedule's cuts",
                                          "optimisation")
    class_weighting: str = setting("none", "weighted BCE: pos_weight = N_neg/N_pos; chexnet = W+ N_neg/N and "
                                           "W- N_pos/N", "optimisation", choices=_class_weightings)
    early_stopping_patience: int = setting(3, "stop after this many epochs without a better mean validation "
                                              "AUROC (0: never)", "optimisation", minimum=0)
    max_steps_per_epoch: int | None = setting(None, "cut epochs short (demos, smoke tests)", "optimisation",
                                              minimum=1)
    max_loss: float = setting(1e4, "stop the run (exit code 2) when the training loss exceeds this: a diverged "
                                   "run (a healthy loss is below 1, or tens with class weighting); 0: no bound",
                              "optimisation", minimum=0)
    amp: bool = setting(False, "mixed precision (GPU only)", "optimisation")
    to_static: bool = setting(False, "compile the network to a static graph (paddle.jit.to_static)",
                              "optimisation")
    # run
    output_dir: str = setting("outputs", "checkpoints go to OUTPUT_DIR/RUN_NAME/{best,last}.{pdparams,pdopt,json}",
                              "run")
    log_dir: str = setting("logs", "history.csv (and VisualDL when installed) go to LOG_DIR/RUN_NAME", "run")
    run_name: str = setting("chexnet", "name of this run", "run")
    resume: bool = setting(False, "continue from OUTPUT_DIR/RUN_NAME/last.*", "run")
    overwrite: bool = setting(False, "replace the run in OUTPUT_DIR/RUN_NAME (without it, a folder holding a run "
                                     "is refused unless --resume)", "run")
    seed: int = setting(0, "initialisation, data order and augmentation", "run")
    device: str = setting("auto", "auto, cpu, gpu or gpu:N", "run")
    cpu_threads: int | None = setting(None, "math threads for CPU operators (default: this process's share of "
                                            "the cores)", "run", minimum=1)
    deterministic: bool = setting(False, "deterministic cuDNN kernels (FLAGS_cudnn_deterministic): a resumed GPU "
                                         "run then repeats an uninterrupted one, a little slower", "run")
    progress: bool = setting(True, "progress bars", "run", flag="--no-progress")

    def __post_init__(self) -> None:
        self.milestones = tuple(self.milestones)
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            choices = item.metadata.get("choices")
            if choices is not None and value is not None and value not in choices():
                raise UserError(f"{item.name} must be one of {', '.join(choices())}, got {value!r}")
            minimum = item.metadata.get("minimum")
            if minimum is not None and value is not None and value < minimum:
                raise UserError(f"{item.name} must be at least {minimum}, got {value}")
        if self.val_fraction is not None and not 0 < self.val_fraction < 1:
            raise UserError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        if self.val_fraction is not None and self.val_list:
            raise UserError("give --val-list or --val-fraction, not both")
        if self.crop > self.resize:
            raise UserError(f"crop ({self.crop}) must not exceed resize ({self.resize})")
        if not self.lr > 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        if self.resume and self.overwrite:
            raise UserError("--resume continues the run in OUTPUT_DIR/RUN_NAME and --overwrite replaces it; "
                            "choose one")

    def data_source(self):
        """The run's :class:`~paddle_chexnet.data.sources.DataSource` (checks the task and the policy)."""
        from paddle_chexnet.data.sources import DataSource

        return DataSource(self.dataset, self.data_dir, self.task, self.image_dir, self.uncertainty, self.views,
                          self.cache, self.skip_missing)

    @property
    def image_path(self) -> Path:
        return self.data_source().image_root

    @property
    def train_list_path(self) -> Path:
        return Path(self.train_list) if self.train_list else self.data_source().default_list("train")

    @property
    def val_list_path(self) -> Path:
        """The validation list (the training list itself when ``val_fraction`` splits it)."""
        if self.val_fraction is not None:
            return self.train_list_path
        return Path(self.val_list) if self.val_list else self.data_source().default_list("val")

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    @property
    def run_log_dir(self) -> Path:
        return Path(self.log_dir) / self.run_name

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> TrainConfig:
        """Build from a mapping (a JSON/YAML file); unknown keys and wrongly typed values name the key."""
        return cls(**checked_settings(values, source))


# ------------------------------------------------------------------ types


def checked_settings(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``values`` with keys as field names (``batch-size`` -> ``batch_size``) and values of the fields' types.

    Raises:
        UserError: an unknown key, or a value of the wrong type; the message names ``source`` and the key.
    """
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    normalised = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(normalised) - known)
    if unknown:
        raise UserError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(TrainConfig)
    return {name: _checked_value(name, value, hints[name], source) for name, value in normalised.items()}


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _optional_inner(annotation: Any) -> tuple[Any, bool]:
    """``(T, True)`` for ``T | None``, ``(annotation, False)`` otherwise."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _checked_value(name: str, value: Any, annotation: Any, source: str) -> Any:
    """``value`` converted to the field's type, or a :class:`UserError` naming the key and the type expected."""
    inner, optional = _optional_inner(annotation)
    if value is None:
        if optional:
            return None
        raise UserError(f"{source}: {name!r} must be {_describe(inner)}, got null")
    if typing.get_origin(inner) is tuple:
        element = typing.get_args(inner)[0]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_checked_value(f"{name}[{i}]", v, element, source) for i, v in enumerate(value))
    if inner is bool:
        if isinstance(value, bool):
            return value
    elif inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif inner is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif inner is str:
        if isinstance(value, str):
            return value
    else:
        return value
    shown = f"{value!r} (a {type(value).__name__})"
    raise UserError(f"{source}: {name!r} must be {_describe(inner)}, got {shown}")


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is tuple:
        return f"a list of {_describe(typing.get_args(annotation)[0]).split(' ', 1)[1]}s"
    return _TYPE_WORDS.get(annotation, str(annotation))


# ------------------------------------------------------------------ command line


def option_name(item: dataclasses.Field) -> str:
    return item.metadata.get("flag") or "--" + item.name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one option per :class:`TrainConfig` field, in its group, with its help, default and choices.

    The options default to ``argparse.SUPPRESS``: only what the user typed reaches the
    namespace, so :func:`config_from_sources` can let a typed flag win over a config file even
    when its value equals the default. Every option also accepts its underscore spelling.
    """
    hints = typing.get_type_hints(TrainConfig)
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for item in dataclasses.fields(TrainConfig):
        inner, _ = _optional_inner(hints[item.name])
        flag = option_name(item)
        names = [flag] + ([flag.replace("-", "_").replace("__", "--", 1)] if "-" in flag[2:] else [])
        kwargs: dict[str, Any] = {"dest": item.name, "default": argparse.SUPPRESS}
        default = item.default
        help_text = item.metadata["help"]
        if inner is bool:
            kwargs["action"] = "store_false" if default else "store_true"
            if default:
                help_text = f"no {help_text}"
        else:
            if typing.get_origin(inner) is tuple:
                kwargs.update(nargs="+", type=typing.get_args(inner)[0])
                shown = " ".join(str(v) for v in default)
            else:
                kwargs["type"] = inner
                shown = default
            choices = item.metadata.get("choices")
            if choices is not None:
                kwargs["choices"] = list(choices())
            if default is not None:
                help_text = f"{help_text} (default: {shown})"
        groups[item.metadata["group"]].add_argument(*names, help=help_text.replace("%", "%%"), **kwargs)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a JSON or YAML file (a mapping of :class:`TrainConfig` fields)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise UserError(f"--config {path} is YAML: `pip install pyyaml`, or write it as JSON") from None
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UserError(f"--config {path}: not valid YAML ({exc})") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"--config {path} line {exc.lineno}: {exc.msg}") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path} must hold a mapping of settings, not {type(values).__name__}")
    return values


def config_from_sources(typed: Mapping[str, Any], config_file: str | Path | None = None) -> TrainConfig:
    """Merge, by priority: flags typed on the command line > the ``--config`` file > the defaults.

    Args:
        typed (Mapping[str, Any]): the options the user typed (a namespace built by
            :func:`add_config_arguments` holds nothing else).
        config_file (str | Path, optional): a JSON or YAML file of settings. Default: None.
    """
    values = checked_settings(read_config_file(config_file), f"--config {config_file}") if config_file else {}
    values.update(checked_settings(typed, "command line"))
    return TrainConfig(**values)


def options_markdown() -> str:
    """The table of ``train.py``'s options (flag, default, meaning) in Markdown, made from the fields.

    ``docs/training.md`` holds this table between its ``options`` markers; a test keeps the two equal
    (regenerate with ``python -c "from paddle_chexnet.engine.config import options_markdown as o; print(o())"``).
    """
    hints = typing.get_type_hints(TrainConfig)
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for item in dataclasses.fields(TrainConfig):
        inner, _ = _optional_inner(hints[item.name])
        flag = option_name(item)
        choices = item.metadata.get("choices")
        if choices is not None:
            flag = f"{flag} {{{','.join(choices())}}}"
        default = item.default
        if inner is bool:
            shown = "off" if not default else "on"
        elif default is None:
            shown = ""
        elif isinstance(default, tuple):
            shown = " ".join(str(v) for v in default)
        else:
            shown = str(default)
        rows.append(f"| `{flag}` | {shown} | {item.metadata['help']} |")
    return "\n".join(rows)

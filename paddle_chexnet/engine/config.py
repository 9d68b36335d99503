"""The settings of a training run (:class:`TrainConfig`), the one place ``train.py``'s flags come from."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paddle_chexnet.engine.losses import CLASS_WEIGHTINGS
from paddle_chexnet.engine.optim import (
    OPTIMIZERS,
    SCHEDULES,
)

logger = logging.getLogger(__name__)


ARCHITECTURES = {
    # name: DenseNet keyword arguments (besides num_classes)
    "densenet121": {"growth_rate": 32, "block_config": (6, 12, 24, 16), "num_init_features": 64, "bn_size": 4},
    # a few thousand parameters: for tests and a first look at the loop on a laptop
    "tiny": {"growth_rate": 4, "block_config": (1, 2), "num_init_features": 8, "bn_size": 2},
}


@dataclass
class TrainConfig:
    """Everything a training run depends on; the fields mirror ``train.py``'s flags.

    Data:
        data_dir (str): the data set folder. Default: 'ChestX-ray14'.
        image_dir (str, optional): images (flat or NIH's nested folders). Default: DATA_DIR/images.
        train_list (str, optional): training label list. Default: DATA_DIR/labels/train_list.txt.
        val_list (str, optional): validation label list. Default: DATA_DIR/labels/val_list.txt.
        skip_missing (bool): drop listed images that are not on disk. Default: False.
        resize (int): shorter side before cropping. Default: 256.
        crop (int): training random crop and validation center crop. Default: 224.
        num_workers (int): data-loader processes. Default: 4.

    Model:
        arch (str): ``'densenet121'`` (CheXNet) or ``'tiny'`` (tests and demos). Default: 'densenet121'.
        pretrained (str, optional): an ImageNet DenseNet-121 file (torchvision ``.pth``,
            paddle.vision or converted ``.pdparams``) for the backbone, or ``'imagenet'`` to
            download Paddle's (needs internet). Default: None (random initialisation).

    Optimisation:
        epochs (int): total epochs, resumes included. Default: 20.
        batch_size (int): images per step per process. Default: 16.
        lr (float): initial learning rate (for one process; see ``scale_lr``). Default: 1e-3.
        scale_lr (bool): multiply ``lr`` by the number of processes (linear scaling rule). Default: False.
        optimizer (str): ``'adam'`` (paper) or ``'sgd'`` (momentum 0.9). Default: 'adam'.
        momentum (float): SGD momentum. Default: 0.9.
        weight_decay (float): L2 coefficient. Default: 0.0.
        schedule (str): ``'plateau'`` (lr / 10 when the validation loss stops improving),
            ``'piecewise'`` or ``'constant'``. Default: 'plateau'.
        plateau_patience (int): epochs without improvement before reducing. Default: 0.
        milestones (tuple[int, ...]): epochs where ``'piecewise'`` multiplies by 0.1. Default: (10, 15, 18)
            (Paddle-CheXNet's).
        class_weighting (str): ``'none'``, ``'pos_weight'`` (N_neg/N_pos) or ``'chexnet'``
            (W+ = N_neg/N, W- = N_pos/N). Default: 'none'.
        early_stopping_patience (int): epochs without a better mean validation AUROC before
            stopping; 0 disables. Default: 3.
        max_steps_per_epoch (int, optional): cut epochs short (demos). Default: None.
        amp (bool): mixed precision (GPU only). Default: False.
        to_static (bool): run the network as a static graph (``paddle.jit.to_static``); same
            weights and checkpoints, see BENCHMARKS.md for the speed. Default: False.

    Run:
        output_dir (str): checkpoints go to OUTPUT_DIR/RUN_NAME. Default: 'outputs'.
        log_dir (str): CSV and VisualDL go to LOG_DIR/RUN_NAME. Default: 'logs'.
        run_name (str): Default: 'chexnet'.
        resume (bool): continue from OUTPUT_DIR/RUN_NAME's ``last`` checkpoint. Default: False.
        seed (int): initialisation, data order and augmentation. Default: 0.
        device (str): ``'auto'``, ``'cpu'``, ``'gpu'``. Default: 'auto'.
        cpu_threads (int, optional): math threads for CPU operators; ``None``: the cores this
            process may use, divided among the processes launched on this machine. Default: None.
        progress (bool): show progress bars. Default: True.
    """

    data_dir: str = "ChestX-ray14"
    image_dir: str | None = None
    train_list: str | None = None
    val_list: str | None = None
    skip_missing: bool = False
    resize: int = 256
    crop: int = 224
    num_workers: int = 4
    arch: str = "densenet121"
    pretrained: str | None = None
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    scale_lr: bool = False
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "plateau"
    plateau_patience: int = 0
    milestones: tuple[int, ...] = (10, 15, 18)
    class_weighting: str = "none"
    early_stopping_patience: int = 3
    max_steps_per_epoch: int | None = None
    amp: bool = False
    to_static: bool = False
    output_dir: str = "outputs"
    log_dir: str = "logs"
    run_name: str = "chexnet"
    resume: bool = False
    seed: int = 0
    device: str = "auto"
    cpu_threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.milestones = tuple(int(m) for m in self.milestones)
        choices = {"arch": tuple(ARCHITECTURES), "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
                   "class_weighting": CLASS_WEIGHTINGS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "resize", "crop"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.crop > self.resize:
            raise ValueError(f"crop ({self.crop}) must not exceed resize ({self.resize})")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        for name in ("max_steps_per_epoch", "cpu_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (or None), got {getattr(self, name)}")

    @property
    def image_path(self) -> Path:
        return Path(self.image_dir) if self.image_dir else Path(self.data_dir) / "images"

    @property
    def train_list_path(self) -> Path:
        return Path(self.train_list) if self.train_list else Path(self.data_dir) / "labels" / "train_list.txt"

    @property
    def val_list_path(self) -> Path:
        return Path(self.val_list) if self.val_list else Path(self.data_dir) / "labels" / "val_list.txt"

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
        """Build from a mapping (a JSON/YAML file); unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        normalised = {str(k).replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(normalised) - known)
        if unknown:
            raise ValueError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**normalised)

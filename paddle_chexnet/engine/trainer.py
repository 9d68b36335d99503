"""Training CheXNet with ``paddle.Model``: the configuration, the wiring, and :func:`run_training`.

The loop is Paddle's: ``paddle.Model(net)``, ``prepare(optimizer, loss,
metrics)``, ``fit(..., callbacks)``. This module builds the pieces from a
:class:`TrainConfig`; the pieces live in their own modules (losses, optim,
sampling, callbacks, checkpoint, distributed).

Outputs of a run named ``RUN``:

* ``OUTPUT_DIR/RUN/{last,best}.{pdparams,pdopt,json}``: checkpoints
  (``.pdparams`` loads with ``chexnet(weights=...)``);
* ``LOG_DIR/RUN/history.csv`` (one row per epoch), ``config.json``, and
  VisualDL scalars when ``visualdl`` is installed.

Under ``python -m paddle.distributed.launch`` every process runs this same
code; ``batch_size`` is per process, only rank 0 writes files, and the
validation AUROC is computed over the whole validation set.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from paddle_chexnet.data.sampling import SeededAugmentation, SeededBatchSampler
from paddle_chexnet.engine.callbacks import (
    CheckpointSaver,
    CSVLogger,
    DivergenceGuard,
    EpochSetup,
    EpochSummary,
    LRStepper,
    MeanLoss,
    ProgressBar,
    ResumableEarlyStopping,
    RunState,
    ValidationOnly,
    VisualDLLogger,
    history_columns,
)
from paddle_chexnet.engine.checkpoint import (
    CheckpointError,
    checkpoint_paths,
    find_resumable,
    load_checkpoint,
    read_checkpoint_meta,
)
from paddle_chexnet.engine.config import TrainConfig
from paddle_chexnet.engine.distributed import is_main_process, use_cpu_backend, world_size
from paddle_chexnet.engine.losses import make_loss
from paddle_chexnet.engine.optim import (
    build_optimizer,
    build_scheduler,
)
from paddle_chexnet.errors import UserError
from paddle_chexnet.models.base import ChestXrayNet
from paddle_chexnet.models.registry import build_network as registry_build_network
from paddle_chexnet.models.spec import spec_record
from paddle_chexnet.utils.device import prepare_device
from paddle_chexnet.utils.hashing import file_sha256
from paddle_chexnet.utils.io import atomic_write_text
from paddle_chexnet.utils.system import usable_cores

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`run_training` returns.

    Attributes:
        best_metric (float): best mean validation AUROC (NaN if no epoch had a defined one).
        best_epoch (int): its epoch, 1-based (0 if none).
        best_checkpoint (Path | None): ``best.pdparams``.
        last_checkpoint (Path | None): ``last.pdparams``.
        history (list[dict]): one row per epoch, the CSV's columns.
        stopped_early (bool): early stopping ended the run.
        network (ChestXrayNet): the trained network (the last epoch's weights), in eval mode.
        checkpoint_dir (Path): OUTPUT_DIR/RUN_NAME.
        log_dir (Path): LOG_DIR/RUN_NAME.
    """

    best_metric: float
    best_epoch: int
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    history: list[dict[str, Any]]
    stopped_early: bool
    network: ChestXrayNet = field(repr=False)
    checkpoint_dir: Path = Path()
    log_dir: Path = Path()


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and Paddle (weight initialisation)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    paddle.seed(seed)


def build_network(config: TrainConfig, num_classes: int, class_names: Sequence[str]):
    """The network of ``config.arch`` (through the registry), with the ImageNet backbone of ``config.pretrained``."""
    net = registry_build_network(config.arch, num_classes=num_classes, class_names=class_names,
                                 pooling=config.pooling, task=config.data_source().task)
    if config.pretrained:
        from paddle_chexnet.conversion.pretrained import load_pretrained

        logger.info("%s", load_pretrained(net, config.pretrained))
    return net


def build_datasets(config: TrainConfig) -> tuple[Any, Any]:
    """Training (random crop + flip, seeded) and validation (center crop) datasets of the run's data source.

    NIH or CheXpert, a folder or an image cache (:class:`~paddle_chexnet.data.sources.DataSource`);
    the labels are the task's classes. With ``val_fraction`` the validation set is a seeded
    patient-level split of the training list.
    """
    from paddle_chexnet.data.transforms import EvalTransform, TrainTransform

    source = config.data_source()
    source.check_layout(lists_given=bool(config.train_list and (config.val_list or config.val_fraction)))
    index = source.image_index()  # the image folder first: a wrong --data-dir is named as such
    train_labels = source.labels(config.train_list_path)
    if config.val_fraction is not None:
        train_labels, val_labels = split_by_patient_labels(train_labels, config.dataset, config.val_fraction,
                                                           config.seed)
    else:
        val_labels = source.labels(config.val_list_path)
    train = source.dataset_of(train_labels, TrainTransform(config.resize, config.crop), index, config.resize)
    val = source.dataset_of(val_labels, EvalTransform("center", config.resize, config.crop), index, config.resize)
    if tuple(train.class_names) != tuple(val.class_names):
        raise ValueError(
            f"{config.train_list_path} and {config.val_list_path} have different classes: "
            f"{train.class_names} vs {val.class_names}"
        )
    return SeededAugmentation(train, seed=config.seed), val


def split_by_patient_labels(labels: Any, dataset: str, val_fraction: float, seed: int) -> tuple[Any, Any]:
    """(train, val) label lists: whole patients in each, ``val_fraction`` of the images in val, seeded."""
    if dataset == "chexpert":
        from paddle_chexnet.data.chexpert import split_by_patient_chexpert

        return split_by_patient_chexpert(labels, val_fraction, seed)
    from paddle_chexnet.data.nih import split_by_patient
    from paddle_chexnet.evaluation.grouping import patient_of

    train, val = split_by_patient(labels.names, [patient_of(n) for n in labels.names], val_fraction, seed)
    return labels.subset(train), labels.subset(val)


def use_uint8_batches(train_set: Any, val_set: Any, net: paddle.nn.Layer, config: TrainConfig):
    """On a GPU with an image cache: loader workers crop uint8 pixels and the GPU normalises them.

    The same crops and flips as the float transforms (the same seeded draws), normalised with
    the same float32 arithmetic, so the network sees the same tensors; the loader moves a quarter
    of the bytes (a twelfth for gray images). Returns the normalisation hook's handle.
    """
    from paddle_chexnet.data.uint8 import (
        Uint8EvalTransform,
        Uint8TrainTransform,
        attach_uint8_normalization,
        device_normalization_is_exact,
    )

    channels = val_set.cache.channels()
    train_set.dataset.transform = Uint8TrainTransform(config.resize, config.crop, channels=channels)
    val_set.transform = Uint8EvalTransform("center", config.resize, config.crop, channels=channels)
    exact = device_normalization_is_exact()
    if not exact:
        logger.info("this device's float32 arithmetic differs from the CPU's; normalising by an exact table")
    return attach_uint8_normalization(net, exact_table=not exact)


def _worker_init(worker_id: int) -> None:
    # augmentation is seeded per image (SeededAugmentation); this only keeps any
    # other NumPy use in a worker from repeating the parent's stream
    np.random.seed([int(np.random.get_state()[1][0]), worker_id])


def build_loaders(config: TrainConfig, train: Any, val: Any) -> tuple[paddle.io.DataLoader, paddle.io.DataLoader,
                                                                       SeededBatchSampler]:
    """Data loaders whose batch samplers split every batch between the processes."""
    train_sampler = SeededBatchSampler(len(train), config.batch_size, shuffle=True, seed=config.seed)
    if config.max_steps_per_epoch is not None:
        train_sampler = _Truncated(train_sampler, config.max_steps_per_epoch)
    val_sampler = SeededBatchSampler(len(val), config.batch_size, shuffle=False, seed=config.seed)
    kwargs = {"num_workers": config.num_workers, "return_list": True, "use_shared_memory": config.shared_memory}
    if config.num_workers > 0:
        kwargs["worker_init_fn"] = _worker_init
    train_loader = paddle.io.DataLoader(train, batch_sampler=train_sampler, **kwargs)
    val_loader = paddle.io.DataLoader(val, batch_sampler=val_sampler, **kwargs)
    return train_loader, val_loader, train_sampler


class _Truncated(paddle.io.BatchSampler):
    """The first ``max_batches`` batches of a sampler (``--max-steps-per-epoch``)."""

    def __init__(self, sampler: SeededBatchSampler, max_batches: int) -> None:
        self.sampler, self.max_batches = sampler, int(max_batches)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        for i, batch in enumerate(self.sampler):
            if i >= self.max_batches:
                return
            yield batch

    def __len__(self) -> int:
        return min(len(self.sampler), self.max_batches)


def build_model(net: ChestXrayNet, config: TrainConfig, num_classes: int) -> paddle.Model:
    """``paddle.Model(net)``; with ``config.to_static`` the network's forward is compiled to a static graph.

    A compiled forward hides its Python signature, so the model then gets explicit input specs. The
    compiled forward gets the same spec, with a free batch size: without it Paddle compiles one program
    per input shape, again for the short last batch of each split.
    """
    if not config.to_static:
        return paddle.Model(net)
    inputs = [paddle.static.InputSpec([None, 3, config.crop, config.crop], "float32", "image")]
    labels = [paddle.static.InputSpec([None, num_classes], "float32", "labels")]
    return paddle.Model(paddle.jit.to_static(net, input_spec=inputs, full_graph=True), inputs, labels)


def build_callbacks(
    config: TrainConfig,
    state: RunState,
    seeded: Sequence[Any],
    auroc: ValidationOnly,
    mean_loss: ValidationOnly,
    class_names: Sequence[str],
    early_stopping: ResumableEarlyStopping | None,
    meta: Any,
) -> list[paddle.callbacks.Callback]:
    """The callbacks, in the order their ``on_eval_end`` must run (see :mod:`paddle_chexnet.engine.callbacks`)."""
    callbacks: list[paddle.callbacks.Callback] = [
        EpochSetup(state, seeded, [auroc, mean_loss]),
        DivergenceGuard(state, config.checkpoint_dir, max_loss=config.max_loss),
    ]
    if config.progress:
        callbacks.append(ProgressBar(state, config.epochs))
    callbacks.append(LRStepper(monitor="mean_loss"))
    if early_stopping is not None:
        callbacks.append(early_stopping)
    callbacks += [
        EpochSummary(state, auroc, class_names),
        CheckpointSaver(state, config.checkpoint_dir, meta),
        CSVLogger(state, config.run_log_dir / "history.csv", history_columns(class_names)),
    ]
    try:
        import visualdl  # noqa: F401
    except ImportError:
        logger.debug("visualdl is not installed; epoch scalars go to the CSV only")
    else:
        callbacks.append(VisualDLLogger(state, config.run_log_dir / "visualdl"))
    return callbacks


def run_training(config: TrainConfig) -> TrainResult:
    """Train (or resume training) CheXNet as ``config`` says.

    Args:
        config (TrainConfig): the run's settings.

    Returns:
        TrainResult: best metric and epoch, checkpoint paths, per-epoch history, the network.

    Raises:
        NonFiniteLossError: training diverged: a NaN, infinite or exploding (``max_loss``) loss, or
            non-finite weights (the message gives the step; the last good checkpoint is kept).
        RunFolderInUseError: another process trains into the same run folder.
        RunExistsError: the run folder holds a run and neither ``resume`` nor ``overwrite`` is set.
        CheckpointError: ``resume`` was asked but no consistent checkpoint exists.
        UserError: ``resume`` with another architecture, classes or task than the checkpoint's.
        FileNotFoundError, LabelListError, MissingImagesError: bad data paths or files.

    Examples:
        >>> cfg = TrainConfig(data_dir="demo/data", arch="tiny", epochs=2, resize=64, crop=56)  # doctest: +SKIP
        >>> result = run_training(cfg)  # doctest: +SKIP
        >>> result.best_checkpoint  # doctest: +SKIP
        PosixPath('outputs/chexnet/best.pdparams')
    """
    if config.amp and config.device.lower() == "cpu":
        raise ValueError("--amp needs a GPU (mixed precision on the CPU is slower, not faster); drop --amp")
    with contextlib.ExitStack() as stack:
        return _run_training(config, stack)


def _run_training(config: TrainConfig, stack: contextlib.ExitStack) -> TrainResult:
    # the data paths and lists first (seconds): a typo leaves no run folder behind
    train_set, val_set = build_datasets(config)
    if is_main_process():
        from paddle_chexnet.engine.run_folder import claim_run_folder

        stack.enter_context(claim_run_folder(config.checkpoint_dir, config.resume, config.overwrite))
        for stale in config.run_log_dir.glob(".*.tmp"):  # an atomic write of history.csv a kill interrupted
            stale.unlink(missing_ok=True)
    device = prepare_device(config.device, config.cpu_threads)
    if config.amp and not device.startswith("gpu"):
        raise ValueError("--amp needs a GPU (mixed precision on the CPU is slower, not faster); drop --amp")
    use_cpu_backend(device)
    if config.deterministic:
        use_deterministic_kernels()
    seed_everything(config.seed)
    class_names = tuple(train_set.class_names)
    size_check = _check_image_sizes_in_background(train_set, val_set, config.crop) if is_main_process() else None
    net = build_network(config, len(class_names), class_names)
    kernels_missing = False
    if config.cache and device.startswith("gpu"):
        stack.callback(use_uint8_batches(train_set, val_set, net, config).remove)
    if device == "cpu" and not config.to_static:
        from paddle_chexnet.cpu.kernels import cpu_kernels
        from paddle_chexnet.cpu.layers import use_cpu_training_layers

        use_cpu_training_layers(net)  # same parameters; builds the C++ kernels first, once
        kernels_missing = cpu_kernels() is None

    lr = config.lr * (world_size() if config.scale_lr else 1)
    scheduler = build_scheduler(config.schedule, lr, plateau_patience=config.plateau_patience,
                                milestones=config.milestones)
    optimizer = build_optimizer(config.optimizer, net.parameters(), scheduler,
                                weight_decay=config.weight_decay, momentum=config.momentum)
    loss_fn = make_loss(config.class_weighting, train_set.labels, class_names)

    state = RunState()
    early_stopping = (ResumableEarlyStopping(config.early_stopping_patience)
                      if config.early_stopping_patience > 0 else None)
    data_digests = _data_digests(config)
    resumed_meta = _resume(config, net, optimizer, state, early_stopping, data_digests) if config.resume else None

    from paddle_chexnet.evaluation.metrics import AUROC

    # paddle.Model gathers every process's validation outputs before the metrics see them
    auroc = ValidationOnly(AUROC(class_names=class_names, gather=False))
    mean_loss = ValidationOnly(MeanLoss(loss_fn))
    model = build_model(net, config, len(class_names))
    model.prepare(optimizer=optimizer, loss=loss_fn, metrics=[auroc, mean_loss],
                  amp_configs="O1" if config.amp else None)
    if config.amp:
        restore_grad_scaler(model, (resumed_meta or {}).get("grad_scaler"))

    train_loader, val_loader, train_sampler = build_loaders(config, train_set, val_set)

    def meta() -> dict[str, Any]:
        return {
            **spec_record(net.spec),
            "config": config.to_dict(),
            "class_names": list(class_names),
            "world_size": world_size(),
            "run_state": state.state_dict(),
            "early_stopping": early_stopping.state_dict() if early_stopping is not None else None,
            "grad_scaler": grad_scaler_state(model),
            "data_digests": data_digests,
        }

    callbacks = build_callbacks(config, state, [train_sampler, train_set], auroc, mean_loss, class_names,
                                early_stopping, meta)
    if is_main_process():
        atomic_write_text(config.run_log_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
        logger.info("training %s on %d images (validation %d), %d process(es), batch %d per process, lr %.3g",
                    config.arch, len(train_set), len(val_set), world_size(), config.batch_size, lr)
        if kernels_missing and world_size() == 1 and usable_cores() > 1:
            # Paddle's own CPU kernels for BatchNorm, ReLU, concat, pooling run on one core
            logger.info("without the package's C++ CPU kernels one process per core is faster (BENCHMARKS.md): "
                        "python -m paddle.distributed.launch --nproc_per_node %d train.py ... (batch size is then "
                        "per process)", usable_cores())
        if config.num_workers > 0 and config.shared_memory:
            _warn_if_shared_memory_is_small(config, train_set)

    remaining = config.epochs - state.epoch_offset
    if remaining > 0:
        with quiet_paddle_warnings(), _explain_loader_crash(config):
            model.fit(train_loader, val_loader, epochs=remaining, eval_freq=1, verbose=0, callbacks=callbacks)
    else:
        logger.info("nothing to do: the checkpoint already finished %d of %d epochs", state.epoch_offset,
                    config.epochs)
    if size_check is not None:
        size_check.join()
    if device == "cpu" and not config.to_static:
        from paddle_chexnet.cpu.layers import use_plain_layers

        use_plain_layers(net)
    net.eval()
    return _result(config, state, net, early_stopping)


def use_deterministic_kernels() -> bool:
    """Ask cuDNN for deterministic kernels (``FLAGS_cudnn_deterministic``), so a resumed GPU run repeats.

    cuDNN's fastest convolution algorithms add in a varying order; with the flag a run and
    its resume agree as they do on the CPU, at some cost in speed. The environment variable
    is set too, for processes started later; a CPU build has no such flag (nothing to do).

    Returns:
        bool: the flag was set in this process's Paddle.
    """
    import os

    os.environ["FLAGS_cudnn_deterministic"] = "1"
    try:
        paddle.set_flags({"FLAGS_cudnn_deterministic": True})
    except ValueError:  # a CPU build: no cuDNN
        return False
    return True


# Warnings Paddle's own code gives for how paddle.Model and BatchNorm are used here, on every epoch,
# that tell a user nothing: paddle.Model's train_batch calls paddle.to_tensor on the labels the
# DataLoader already made tensors, and BatchNorm says in training mode that it tracks statistics.
QUIET_PADDLE_WARNINGS = (
    "To copy construct from a tensor",
    "When training, we now always track global mean and variance",
)


@contextlib.contextmanager
def quiet_paddle_warnings() -> Iterator[None]:
    """Silence :data:`QUIET_PADDLE_WARNINGS` inside the block; every other warning is kept."""
    with warnings.catch_warnings():
        for message in QUIET_PADDLE_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        yield


SHARED_MEMORY_HELP = ("if /dev/shm is small (`df -h /dev/shm`; Docker gives 64 MB unless run with --shm-size), "
                      "pass --no-shared-memory, or --num-workers 0")


# what Paddle's DataLoader raises or says when a loader process dies (killed by SIGBUS when /dev/shm is full)
_LOADER_CRASH_MESSAGES = ("Blocking queue is killed", "reader thread raised", "workers exit unexpectedly",
                          "DataLoader worker", "Bus error", "BUS error")


@contextlib.contextmanager
def _explain_loader_crash(config: TrainConfig) -> Iterator[None]:
    """Turn Paddle's report of a loader process killed by a signal (a bus error: /dev/shm full) into advice."""
    try:
        yield
    except (RuntimeError, SystemError) as exc:
        text = str(exc)
        if config.num_workers > 0 and any(key in text for key in _LOADER_CRASH_MESSAGES):
            hint = SHARED_MEMORY_HELP if config.shared_memory else "try --num-workers 0 to see the error"
            raise UserError(f"a data-loader process died ({text.strip().splitlines()[-1]}); {hint}") from exc
        raise


def _warn_if_shared_memory_is_small(config: TrainConfig, train_set: Any) -> None:
    """Warn before training when /dev/shm cannot hold the batches the loader processes keep in flight."""
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return
    # each process keeps a few batches in flight (Paddle's prefetch factor is 2) of float32 crops and labels
    batch_bytes = config.batch_size * (3 * config.crop * config.crop + len(train_set.class_names)) * 4
    needed = batch_bytes * max(config.num_workers, 1) * 4
    if free < needed:
        logger.warning("/dev/shm has %.0f MB free, less than the %.0f MB the %d loader processes may need: the "
                       "loader can die with a bus error; %s", free / 2**20, needed / 2**20, config.num_workers,
                       SHARED_MEMORY_HELP)


def _check_image_sizes_in_background(train_set: Any, val_set: Any, crop: int) -> threading.Thread:
    """Read every image's header in a thread while training starts; warn once about images far too small."""
    from paddle_chexnet.data.images import find_small_images, small_images_message

    paths = list(train_set.paths if hasattr(train_set, "paths") else train_set.dataset.paths) + list(val_set.paths)

    def check() -> None:
        found = find_small_images(paths, crop, threads=1)
        if found:
            logger.warning("%s", small_images_message(found, len(paths), crop))

    thread = threading.Thread(target=check, name="image-size-check", daemon=True)
    thread.start()
    return thread


def _data_digests(config: TrainConfig) -> dict[str, str]:
    """SHA-256 of the label lists, so a resume notices a list edited in place."""
    return {key: file_sha256(path) for key, path in (("train_list", config.train_list_path),
                                                      ("val_list", config.val_list_path)) if path.is_file()}


def grad_scaler_state(model: paddle.Model) -> dict[str, Any] | None:
    """The AMP loss scaler's state (scale and counters) as JSON values, ``None`` without AMP."""
    scaler = getattr(model, "_scaler", None)
    state = scaler.state_dict() if scaler is not None else {}
    if not state:
        return None
    return {key: (np.asarray(value).reshape(-1).tolist() if key == "scale" else
                  value.item() if isinstance(value, np.generic) else value) for key, value in state.items()}


def restore_grad_scaler(model: paddle.Model, state: Mapping[str, Any] | None) -> None:
    """Create ``paddle.Model``'s GradScaler now (it would on the first step) and load ``state`` into it.

    Without this a resumed AMP run would start again from the initial loss scale (2**15) and
    repeat the overflows and skipped steps that found the right one.
    """
    adapter = getattr(model, "_adapter", None)
    if adapter is None or getattr(adapter, "_amp_level", "O0") == "O0":
        return
    if getattr(model, "_scaler", None) is None:
        model._scaler = paddle.amp.GradScaler(**adapter._amp_configs)
    if state:
        model._scaler.load_state_dict({**state, "scale": np.asarray(state["scale"], dtype=np.float32)})


#: settings that may change on resume without changing what is computed
RESUME_FREE_SETTINGS = frozenset({
    "resume", "overwrite", "epochs", "progress", "num_workers", "shared_memory", "cpu_threads", "device",
    "max_loss", "output_dir", "run_name", "log_dir",
})
#: path settings compared as the files they resolve to (a default and the same path typed agree)
_PATH_SETTINGS = {"data_dir": None, "image_dir": "image_path", "train_list": "train_list_path",
                  "val_list": "val_list_path"}


def resume_differences(saved: Mapping[str, Any], config: TrainConfig) -> list[str]:
    """``'batch_size: 4 -> 8'`` for each setting of ``config`` that differs from a checkpoint's ``saved`` config."""
    current = config.to_dict()
    try:
        before = TrainConfig.from_dict({k: v for k, v in saved.items() if k in current and k != "overwrite"},
                                       "the checkpoint's config")
    except (UserError, ValueError, TypeError):
        before = None
    differences = []
    for key, value in current.items():
        if key in RESUME_FREE_SETTINGS or key not in saved:
            continue
        old = saved[key]
        if key in _PATH_SETTINGS and before is not None:
            attribute = _PATH_SETTINGS[key]
            if attribute is None or str(getattr(before, attribute).resolve()) == str(getattr(config, attribute)
                                                                                     .resolve()):
                continue
            old, value = str(getattr(before, attribute)), str(getattr(config, attribute))
        elif isinstance(old, list):
            old = list(old)
        if old != value:
            differences.append(f"{key}: {old!r} -> {value!r}")
    return differences


def _check_resume_model(config: TrainConfig, net: ChestXrayNet, meta: Mapping[str, Any], where: Path) -> None:
    """Refuse a resume whose network cannot take the checkpoint: another architecture, classes or task."""
    saved = meta.get("model") or {}
    spec = net.spec
    checks = [("architecture (--arch)", saved.get("arch", meta.get("config", {}).get("arch")), spec.arch),
              ("number of classes", saved.get("num_classes"), spec.num_classes),
              ("classes", tuple(saved["class_names"]) if saved.get("class_names") else None, spec.class_names),
              ("task", saved.get("task"), spec.task)]
    for what, old, new in checks:
        if old is not None and old != new:
            raise UserError(
                f"--resume: the checkpoint in {where} has {what} {old!r}, this run {new!r}, so it cannot continue "
                "it; resume with the checkpoint's settings and label lists, or start a new run (another "
                "--run-name, or --overwrite)"
            )


def _resume(config: TrainConfig, net: ChestXrayNet, optimizer: paddle.optimizer.Optimizer, state: RunState,
            early_stopping: ResumableEarlyStopping | None, data_digests: Mapping[str, str]) -> dict[str, Any]:
    name = find_resumable(config.checkpoint_dir)
    if name is None:
        raise CheckpointError(
            f"--resume: no checkpoint in {config.checkpoint_dir} (expected last.json); check --output-dir "
            "and --run-name, or start without --resume"
        )
    _check_resume_model(config, net, read_checkpoint_meta(config.checkpoint_dir, name, verify=False),
                        config.checkpoint_dir)
    meta = load_checkpoint(config.checkpoint_dir, name, net, optimizer)
    if is_main_process():
        differences = resume_differences(meta.get("config", {}), config)
        for key, digest in (meta.get("data_digests") or {}).items():
            if key in data_digests and data_digests[key] != digest:
                differences.append(f"{key}: the file changed since the checkpoint (SHA-256 differs)")
        if differences:
            logger.warning("--resume with %d setting(s) that differ from the checkpoint's, so the run will not "
                           "repeat an uninterrupted one: %s", len(differences), "; ".join(differences))
    saved_ws = int(meta.get("world_size", 1))
    if saved_ws != world_size():
        logger.warning("the checkpoint was written by %d process(es), this run has %d: the data order differs "
                       "from an uninterrupted run", saved_ws, world_size())
    state.load_state_dict(meta["run_state"])
    state.epoch_offset = int(meta["epoch"]) + 1
    state.last_saved_epoch = int(meta["epoch"])
    if early_stopping is not None and meta.get("early_stopping"):
        early_stopping.load_state_dict(meta["early_stopping"])
    state.history = state.history[: state.epoch_offset]
    if is_main_process():
        logger.info("resuming from %s (epoch %d finished, best mean AUROC %.4f at epoch %d)",
                    checkpoint_paths(config.checkpoint_dir, name)["params"], state.epoch_offset,
                    state.best_metric, state.best_epoch + 1)
    return meta


def _result(config: TrainConfig, state: RunState, net: ChestXrayNet,
            early_stopping: ResumableEarlyStopping | None) -> TrainResult:
    best = checkpoint_paths(config.checkpoint_dir, "best")["params"]
    last = checkpoint_paths(config.checkpoint_dir, "last")["params"]
    return TrainResult(
        best_metric=state.best_metric if math.isfinite(state.best_metric) else math.nan,
        best_epoch=state.best_epoch + 1,
        best_checkpoint=best if best.is_file() else None,
        last_checkpoint=last if last.is_file() else None,
        history=list(state.history),
        stopped_early=bool(early_stopping is not None and early_stopping.stopped),
        network=net,
        checkpoint_dir=config.checkpoint_dir,
        log_dir=config.run_log_dir,
    )

"""``paddle.callbacks`` for CheXNet training: epochs, metrics, schedule, logs, checkpoints, guards.

``paddle.Model.fit`` calls callbacks in list order. At the end of an epoch it
calls ``on_epoch_end`` (training only), then runs validation, then
``on_eval_end``; everything that needs validation results therefore happens in
``on_eval_end``, in this order (see :func:`paddle_chexnet.training.build_callbacks`):

1. :class:`LRStepper` steps the schedule (on the validation loss for ``plateau``);
2. :class:`ResumableEarlyStopping` updates its counters and may stop the run;
3. :class:`EpochSummary` builds the epoch's row (losses, AUROCs, lr, time);
4. :class:`CheckpointSaver` saves ``last`` then, if the AUROC improved, ``best``
   (after 1-3, so a checkpoint holds their updated state);
5. :class:`CSVLogger` / :class:`VisualDLLogger` write the row.

``fit`` counts its epochs from 0; a resumed run starts at a later epoch, so the
callbacks share a :class:`RunState` that holds the offset.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from paddle_chexnet.engine.checkpoint import checkpoint_paths, save_checkpoint
from paddle_chexnet.engine.distributed import (
    all_reduce_sum,
    broadcast_buffers,
    is_main_process,
    world_size,
)
from paddle_chexnet.utils.io import atomic_write_text

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training diverged (a NaN, infinite or exploding loss, or non-finite weights); the message gives the step."""


#: the training loss above which :class:`DivergenceGuard` stops a run (``--max-loss``). A healthy
#: binary cross-entropy over 14 findings stays below 1; class weighting can raise it to tens.
DEFAULT_MAX_LOSS = 1e4


@dataclass
class RunState:
    """What the callbacks share about the run (and what a checkpoint stores of it).

    Attributes:
        epoch_offset (int): the absolute epoch of ``fit``'s epoch 0 (> 0 after a resume).
        epoch (int): the absolute epoch in progress (0-based).
        global_step (int): optimizer steps done since the run began, resumes included.
        history (list[dict]): one row per finished epoch.
        best_metric (float): best mean validation AUROC so far (``-inf`` before any).
        best_epoch (int): its epoch (-1 before any).
        last_saved_epoch (int): epoch of the newest ``last`` checkpoint (-1 before any).
    """

    epoch_offset: int = 0
    epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float = -math.inf
    best_epoch: int = -1
    last_saved_epoch: int = -1

    def state_dict(self) -> dict[str, Any]:
        return {
            "global_step": self.global_step,
            "history": self.history,
            "best_metric": None if math.isinf(self.best_metric) else self.best_metric,
            "best_epoch": self.best_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.global_step = int(state["global_step"])
        self.history = list(state["history"])
        self.best_metric = -math.inf if state["best_metric"] is None else float(state["best_metric"])
        self.best_epoch = int(state["best_epoch"])


class ValidationOnly(paddle.metric.Metric):
    """Run a metric on validation only, and compute it once, on the last validation batch.

    ``paddle.Model`` updates and accumulates every metric on every batch, in
    training too. For AUROC that is wasted work (and quadratic in the epoch's
    size: each ``accumulate`` ranks everything seen so far). :class:`EpochSetup`
    switches the wrapped metric on for validation and marks the last batch;
    at other times ``accumulate`` returns NaN.

    Args:
        metric (paddle.metric.Metric): the metric to wrap.
    """

    def __init__(self, metric: paddle.metric.Metric) -> None:
        super().__init__()
        self.metric = metric
        self.enabled = False
        self.final = False
        self.last_value: Any = math.nan
        self.last_details: dict[str, float] = {}

    def name(self) -> list[str]:
        return list(self.metric.name()) if isinstance(self.metric.name(), (list, tuple)) else [self.metric.name()]

    def reset(self) -> None:
        self.metric.reset()

    def compute(self, *args: Any) -> Any:
        # paddle.Model copies whatever compute returns to NumPy and passes it to update: nothing
        # while switched off, so training steps do not copy logits and labels off the device
        return self.metric.compute(*args) if self.enabled else []

    def update(self, *args: Any) -> None:
        if self.enabled:
            self.metric.update(*args)

    def accumulate(self) -> Any:
        if not (self.enabled and self.final):
            return math.nan if len(self.name()) == 1 else [math.nan] * len(self.name())
        self.last_value = self.metric.accumulate()
        per_class = getattr(self.metric, "per_class", None)
        self.last_details = dict(per_class()) if callable(per_class) else {}
        return self.last_value


class MeanLoss(paddle.metric.Metric):
    """The loss averaged over every validation image (Paddle's eval ``loss`` log is the last batch's).

    Under ``paddle.distributed`` ``paddle.Model`` gathers the outputs of all
    processes before the metrics see them, so this is the loss over the whole
    validation set, identical on every process (the plateau schedule needs that).

    Args:
        loss_fn (Callable): ``loss_fn(logits, labels)`` -> mean loss of a batch.
        metric_name (str, optional): the log key. Default: 'mean_loss'.
    """

    def __init__(self, loss_fn: Callable[[paddle.Tensor, paddle.Tensor], paddle.Tensor],
                 metric_name: str = "mean_loss") -> None:
        super().__init__()
        self.loss_fn = loss_fn
        self.metric_name = metric_name
        self.reset()

    def name(self) -> list[str]:
        return [self.metric_name]

    def reset(self) -> None:
        self.total = 0.0
        self.count = 0

    def compute(self, logits: paddle.Tensor, labels: paddle.Tensor) -> tuple[paddle.Tensor, paddle.Tensor]:
        count = logits.shape[0]
        with paddle.no_grad():
            loss = self.loss_fn(logits, labels).astype("float64") * count
        return loss.reshape([1]), paddle.to_tensor([count], dtype="float64")

    def update(self, loss_sum: np.ndarray, count: np.ndarray) -> None:
        self.total += float(np.sum(loss_sum))
        self.count += int(np.sum(count))

    def accumulate(self) -> float:
        return self.total / self.count if self.count else math.nan


class EpochSetup(paddle.callbacks.Callback):
    """Seed the epoch's data order and augmentation, and switch validation metrics on and off.

    Args:
        state (RunState): the shared run state.
        seeded (Sequence): objects with ``set_epoch(epoch)`` (samplers, datasets).
        metrics (Sequence[ValidationOnly]): metrics to enable during validation.
    """

    def __init__(self, state: RunState, seeded: Sequence[Any], metrics: Sequence[ValidationOnly]) -> None:
        super().__init__()
        self.state, self.seeded, self.metrics = state, list(seeded), list(metrics)
        self.eval_steps: int | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.state.epoch = self.state.epoch_offset + epoch
        for item in self.seeded:
            item.set_epoch(self.state.epoch)
        for metric in self.metrics:
            metric.enabled = metric.final = False

    def on_train_batch_end(self, step: int, logs: dict | None = None) -> None:
        self.state.global_step += 1

    def on_eval_begin(self, logs: dict | None = None) -> None:
        # every process must evaluate (and rank 0 save) the same model
        broadcast_buffers(self.model.network)
        self.eval_steps = (logs or {}).get("steps")
        for metric in self.metrics:
            metric.enabled, metric.final = True, False

    def on_eval_batch_begin(self, step: int, logs: dict | None = None) -> None:
        last = self.eval_steps is None or step == self.eval_steps - 1
        for metric in self.metrics:
            metric.final = last

    def on_eval_end(self, logs: dict | None = None) -> None:
        for metric in self.metrics:
            metric.enabled = metric.final = False


class DivergenceGuard(paddle.callbacks.Callback):
    """Stop a diverging run with :class:`NonFiniteLossError` at the step it happens.

    After every training step it checks that the loss is finite and at most
    ``max_loss``, and that every weight (BatchNorm statistics included) is
    finite. A too-high learning rate can give NaN weights while the loss stays
    finite (ReLU and pooling turn NaN activations into numbers), so the loss
    alone is not enough. Non-finite gradients are caught too: Adam and SGD turn
    them into non-finite weights in the step that applies them. The weights are
    checked with one sum per tensor (NaN and infinity survive a sum), a small
    fraction of a DenseNet step.

    The weights in memory are then already damaged: they are never saved
    (checkpoints are written only after a finished epoch, and
    :func:`~paddle_chexnet.engine.checkpoint.save_checkpoint` refuses non-finite
    values) and the message names the last good checkpoint. Under
    ``paddle.distributed`` the verdict is summed over the processes, so every
    process stops at the same step instead of the others waiting forever in the
    next gradient all-reduce.

    Args:
        state (RunState): the shared run state (epoch, step, last saved epoch).
        checkpoint_dir (str | Path): where ``last.pdparams`` is, for the message.
        max_loss (float, optional): the largest training loss taken as healthy; 0 turns the bound
            off. Default: :data:`DEFAULT_MAX_LOSS`.
        check_weights (bool, optional): also check the weights after every step. Default: True.
    """

    def __init__(self, state: RunState, checkpoint_dir: str | Path, max_loss: float | None = None,
                 check_weights: bool = True) -> None:
        super().__init__()
        self.state, self.checkpoint_dir = state, Path(checkpoint_dir)
        self.max_loss = DEFAULT_MAX_LOSS if max_loss is None else float(max_loss)
        self.check_weights = check_weights

    def _weights_finite(self) -> bool:
        tensors = [t for t in self.model.network.state_dict().values() if t.dtype in (paddle.float32, paddle.float64,
                                                                                        paddle.float16,
                                                                                        paddle.bfloat16)]
        if not tensors:
            return True
        with paddle.no_grad():
            total = paddle.add_n([t.astype("float32").sum() for t in tensors])
        return bool(np.isfinite(float(total)))

    def _problem(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return f"training loss became {loss}"
        if self.max_loss > 0 and abs(loss) > self.max_loss:
            return f"training loss reached {loss:.4g}, above --max-loss {self.max_loss:g},"
        if self.check_weights and not self._weights_finite():
            from paddle_chexnet.models.state_dict import non_finite_tensors

            bad = non_finite_tensors(self.model.network.state_dict())
            return (f"weights became NaN or infinite in {len(bad)} tensor(s) (first: {', '.join(bad[:3])}; "
                    f"the loss was {loss:.4g})")
        return None

    def on_train_batch_end(self, step: int, logs: dict | None = None) -> None:
        loss = _first((logs or {}).get("loss"))
        problem = self._problem(loss)
        if world_size() > 1:
            if all_reduce_sum(np.array([0.0 if problem is None else 1.0]))[0] == 0:
                return
            problem = problem or "another process's training diverged"
        elif problem is None:
            return
        if self.state.last_saved_epoch >= 0:
            kept = (f"the last good checkpoint is {checkpoint_paths(self.checkpoint_dir, 'last')['params']} "
                    f"(end of epoch {self.state.last_saved_epoch + 1}); continue from it with --resume")
        else:
            kept = "no checkpoint was saved (the run diverged during its first epoch)"
        raise NonFiniteLossError(
            f"{problem} at epoch {self.state.epoch + 1}, step {step + 1} of the epoch "
            f"(global step {self.state.global_step}); stopping. {kept}. Try a lower learning rate (--lr)."
        )


#: kept for code written against the earlier name
NonFiniteLossGuard = DivergenceGuard


class LRStepper(paddle.callbacks.LRScheduler):
    """Step the epoch-level schedule once per epoch, after validation.

    Subclasses Paddle's ``LRScheduler`` callback so ``fit`` does not add its
    default one, which would step the schedule after every batch.
    ``ReduceOnPlateau`` is stepped with the validation ``mean_loss``.

    Args:
        monitor (str, optional): the validation log key for the plateau schedule. Default: 'mean_loss'.
    """

    def __init__(self, monitor: str = "mean_loss") -> None:
        super().__init__(by_step=False, by_epoch=False)
        self.monitor = monitor

    def on_eval_end(self, logs: dict | None = None) -> None:
        scheduler = getattr(self.model._optimizer, "_learning_rate", None)
        if isinstance(scheduler, paddle.optimizer.lr.ReduceOnPlateau):
            value = _first((logs or {}).get(self.monitor))
            if not math.isfinite(value):
                raise NonFiniteLossError(f"validation {self.monitor} is {value}; the plateau schedule cannot use it")
            scheduler.step(value)
        elif isinstance(scheduler, paddle.optimizer.lr.LRScheduler):
            scheduler.step()


class ResumableEarlyStopping(paddle.callbacks.EarlyStopping):
    """Paddle's ``EarlyStopping`` on mean validation AUROC (``mode='max'``), with state for resuming.

    ``mode`` is given explicitly: Paddle's ``'auto'`` would pick ``'min'`` for a
    name without ``acc`` in it and stop on the best AUROC. Paddle's own
    best-model saving is off; :class:`CheckpointSaver` does it atomically.

    Args:
        patience (int): epochs without improvement before stopping.
        monitor (str, optional): the validation log key. Default: 'auroc'.
    """

    def __init__(self, patience: int, monitor: str = "auroc") -> None:
        super().__init__(monitor=monitor, mode="max", patience=patience, verbose=0, save_best_model=False)
        self._restored: dict[str, Any] | None = None
        self.stopped = False

    def on_train_begin(self, logs: dict | None = None) -> None:
        super().on_train_begin(logs)
        if self._restored is not None:
            self.best_value = self._restored["best_value"]
            self.wait_epoch = self._restored["wait_epoch"]

    def on_eval_end(self, logs: dict | None = None) -> None:
        super().on_eval_end(logs)
        self.stopped = bool(self.model.stop_training)

    def state_dict(self) -> dict[str, Any]:
        best = float(self.best_value)
        return {"best_value": None if math.isinf(best) else best, "wait_epoch": int(self.wait_epoch)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        best = state["best_value"]
        self._restored = {"best_value": -np.inf if best is None else float(best),
                          "wait_epoch": int(state["wait_epoch"])}


def history_columns(class_names: Sequence[str]) -> list[str]:
    """The CSV columns: epoch summary, then one ``auroc_<finding>`` per class (from the class list)."""
    return ["epoch", "train_loss", "val_loss", "mean_auroc", "lr", "time_s"] + [f"auroc_{c}" for c in class_names]


class EpochSummary(paddle.callbacks.Callback):
    """Build each epoch's row (train/val loss, per-class and mean AUROC, lr, time) and print it.

    The train loss is the mean over every image of the epoch and every process.

    Args:
        state (RunState): receives the row in ``history``.
        auroc (ValidationOnly): the wrapped AUROC metric (its per-class values).
        class_names (Sequence[str]): the findings, for the per-class columns.
        val_loss_key (str, optional): validation log key of the mean loss. Default: 'mean_loss'.
        auroc_key (str, optional): validation log key of the mean AUROC. Default: 'auroc'.
    """

    def __init__(self, state: RunState, auroc: ValidationOnly, class_names: Sequence[str],
                 val_loss_key: str = "mean_loss", auroc_key: str = "auroc") -> None:
        super().__init__()
        self.state, self.auroc, self.class_names = state, auroc, list(class_names)
        self.val_loss_key, self.auroc_key = val_loss_key, auroc_key

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()
        self.loss_sum, self.count = 0.0, 0
        self.lr = float(self.model._optimizer.get_lr())

    def on_train_batch_end(self, step: int, logs: dict | None = None) -> None:
        logs = logs or {}
        per_process = int(logs.get("batch_size", 1)) // max(world_size(), 1)
        self.loss_sum += _first(logs.get("loss")) * per_process
        self.count += per_process

    def on_eval_end(self, logs: dict | None = None) -> None:
        logs = logs or {}
        loss_sum, count = all_reduce_sum(np.array([self.loss_sum, self.count]))
        per_class = self.auroc.last_details
        row: dict[str, Any] = {
            "epoch": self.state.epoch + 1,
            "train_loss": loss_sum / count if count else math.nan,
            "val_loss": _first(logs.get(self.val_loss_key)),
            "mean_auroc": _first(logs.get(self.auroc_key)),
            "lr": self.lr,
            "time_s": time.perf_counter() - self.started,
        }
        for name in self.class_names:
            row[f"auroc_{name}"] = float(per_class.get(name, math.nan))
        self.state.history.append(row)
        if is_main_process():
            logger.info(
                "epoch %d: train loss %.4f, val loss %.4f, mean AUROC %.4f, lr %.3g, %.1f s",
                row["epoch"], row["train_loss"], row["val_loss"], row["mean_auroc"], row["lr"], row["time_s"],
            )


class CheckpointSaver(paddle.callbacks.Callback):
    """After each validation save ``last.*``, and ``best.*`` when the mean AUROC improved (rank 0 only).

    Args:
        state (RunState): epoch, history and best-so-far.
        directory (str | Path): the checkpoint folder.
        meta (Callable[[], dict]): returns the JSON facts to store (config, callback states).
        monitor (str, optional): validation log key to maximise. Default: 'auroc'.
    """

    def __init__(self, state: RunState, directory: str | Path, meta: Callable[[], dict[str, Any]],
                 monitor: str = "auroc") -> None:
        super().__init__()
        self.state, self.directory, self.meta, self.monitor = state, Path(directory), meta, monitor

    def on_eval_end(self, logs: dict | None = None) -> None:
        value = _first((logs or {}).get(self.monitor))
        improved = math.isfinite(value) and value > self.state.best_metric
        if improved:
            self.state.best_metric, self.state.best_epoch = value, self.state.epoch
        if is_main_process():
            record = {"epoch": self.state.epoch, "metric": {self.monitor: value}, **self.meta()}
            save_checkpoint(self.directory, "last", self.model.network, self.model._optimizer, record)
            if improved:
                save_checkpoint(self.directory, "best", self.model.network, self.model._optimizer, record)
        self.state.last_saved_epoch = self.state.epoch


class CSVLogger(paddle.callbacks.Callback):
    """Rewrite ``history.csv`` from the run's history after each epoch (atomically, rank 0 only).

    Rewriting the whole file (it is small) instead of appending means a resumed
    run never repeats or loses a row: the history comes from the checkpoint.

    Args:
        state (RunState): the history.
        path (str | Path): the CSV file.
        columns (Sequence[str]): :func:`history_columns`.
    """

    def __init__(self, state: RunState, path: str | Path, columns: Sequence[str]) -> None:
        super().__init__()
        self.state, self.path, self.columns = state, Path(path), list(columns)

    def on_eval_end(self, logs: dict | None = None) -> None:
        if is_main_process():
            write_history_csv(self.path, self.state.history, self.columns)


def write_history_csv(path: str | Path, history: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Write ``history`` rows with ``columns`` as a CSV file, atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


class VisualDLLogger(paddle.callbacks.Callback):
    """Write each epoch's row as VisualDL scalars (rank 0; only when ``visualdl`` is installed).

    Args:
        state (RunState): the history.
        log_dir (str | Path): VisualDL's folder.
    """

    def __init__(self, state: RunState, log_dir: str | Path) -> None:
        super().__init__()
        from visualdl import (
            LogWriter,  # optional dependency; build_callbacks checks it is importable
        )

        self.state = state
        self.writer = LogWriter(logdir=str(log_dir)) if is_main_process() else None

    def on_eval_end(self, logs: dict | None = None) -> None:
        if self.writer is None or not self.state.history:
            return
        row = self.state.history[-1]
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(tag=key, value=value, step=int(row["epoch"]))

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.writer is not None:
            self.writer.close()


class ProgressBar(paddle.callbacks.Callback):
    """A tqdm bar per training epoch and per validation (rank 0), showing the running loss."""

    def __init__(self, state: RunState, total_epochs: int) -> None:
        super().__init__()
        self.state, self.total_epochs = state, total_epochs
        self.bar = None

    def _open(self, total: int | None, desc: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=not is_main_process())

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._open(self.params.get("steps"), f"epoch {self.state.epoch_offset + epoch + 1}/{self.total_epochs}")

    def on_train_batch_end(self, step: int, logs: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{_first((logs or {}).get('loss')):.4f}", refresh=False)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._close()

    def on_eval_begin(self, logs: dict | None = None) -> None:
        self._open((logs or {}).get("steps"), "validation")

    def on_eval_batch_end(self, step: int, logs: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_eval_end(self, logs: dict | None = None) -> None:
        self._close()

    def on_train_end(self, logs: dict | None = None) -> None:
        self._close()


def _first(value: Any) -> float:
    """A log value as a float: Paddle logs losses as one-element lists."""
    if value is None:
        return math.nan
    if isinstance(value, (list, tuple, np.ndarray)):
        value = np.asarray(value).reshape(-1)
        return float(value[0]) if value.size else math.nan
    return float(value)

"""Callbacks in isolation: early stopping on AUROC (mode max), plateau and piecewise schedules, metrics."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import paddle
import pytest

from paddle_chexnet.engine.callbacks import (
    LRStepper,
    MeanLoss,
    ResumableEarlyStopping,
    RunState,
    ValidationOnly,
    write_history_csv,
)
from paddle_chexnet.engine.losses import WeightedBCEWithLogits
from paddle_chexnet.engine.optim import build_optimizer, build_scheduler
from paddle_chexnet.evaluation.metrics import AUROC


def fake_model(schedule: str = "plateau", **kwargs) -> SimpleNamespace:
    net = paddle.nn.Linear(2, 1)
    scheduler = build_scheduler(schedule, 1e-3, **kwargs)
    return SimpleNamespace(network=net, _optimizer=build_optimizer("adam", net.parameters(), scheduler),
                           stop_training=False)


def run_early_stopping(values, patience) -> tuple[int | None, ResumableEarlyStopping]:
    callback = ResumableEarlyStopping(patience=patience)
    model = fake_model()
    callback.set_model(model)
    callback.on_train_begin()
    for epoch, value in enumerate(values):
        callback.on_eval_end({"auroc": value, "loss": [1.0]})
        if model.stop_training:
            return epoch, callback
    return None, callback


def test_early_stopping_maximises_auroc() -> None:
    # rising AUROC never stops (mode 'auto' would treat it as a loss and stop at once)
    stopped, _ = run_early_stopping([0.60, 0.65, 0.70, 0.75], patience=1)
    assert stopped is None
    stopped, callback = run_early_stopping([0.60, 0.70, 0.69, 0.68, 0.80], patience=2)
    assert stopped == 3 and callback.stopped
    assert callback.best_value == pytest.approx(0.70)


def test_early_stopping_state_survives_a_restart() -> None:
    _, first = run_early_stopping([0.60, 0.70, 0.69], patience=2)  # one bad epoch so far
    state = first.state_dict()
    assert state == {"best_value": pytest.approx(0.70), "wait_epoch": 1}
    resumed = ResumableEarlyStopping(patience=2)
    resumed.load_state_dict(state)
    model = fake_model()
    resumed.set_model(model)
    resumed.on_train_begin()  # Paddle's on_train_begin resets; the restored state must win
    resumed.on_eval_end({"auroc": 0.65})
    assert model.stop_training  # second bad epoch in a row


def test_plateau_divides_the_learning_rate_by_ten() -> None:
    model = fake_model("plateau", plateau_patience=0)
    stepper = LRStepper()
    stepper.set_model(model)
    lrs = []
    for val_loss in (1.0, 0.9, 0.95, 0.96, 0.5):
        stepper.on_eval_end({"mean_loss": val_loss})
        lrs.append(model._optimizer.get_lr())
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5, 1e-5])


def test_plateau_patience_and_nan_loss() -> None:
    model = fake_model("plateau", plateau_patience=1)
    stepper = LRStepper()
    stepper.set_model(model)
    for val_loss in (1.0, 1.1, 1.2):
        stepper.on_eval_end({"mean_loss": val_loss})
    assert model._optimizer.get_lr() == pytest.approx(1e-4)  # the second bad epoch, not the first
    with pytest.raises(RuntimeError, match="validation mean_loss is nan"):
        stepper.on_eval_end({"mean_loss": float("nan")})


def test_piecewise_steps_once_per_epoch_not_per_batch() -> None:
    model = fake_model("piecewise", milestones=(2,))
    stepper = LRStepper()
    stepper.set_model(model)
    for step in range(50):  # paddle's default LRScheduler callback would step here
        stepper.on_train_batch_end(step, {})
    assert model._optimizer.get_lr() == pytest.approx(1e-3)
    lrs = []
    for _ in range(3):
        stepper.on_eval_end({"mean_loss": 1.0})
        lrs.append(model._optimizer.get_lr())
    assert lrs == pytest.approx([1e-3, 1e-4, 1e-4])


def test_validation_only_metric_computes_once_at_the_end() -> None:
    inner = AUROC(class_names=["a", "b"], gather=False)
    metric = ValidationOnly(inner)
    preds = np.array([[0.9, 0.1], [0.2, 0.7], [0.3, 0.8]])
    labels = np.array([[1, 0], [0, 1], [0, 1]])
    metric.update(preds, labels)  # disabled (training): ignored
    assert math.isnan(metric.accumulate())
    metric.enabled = True
    metric.update(preds[:2], labels[:2])
    assert math.isnan(metric.accumulate())  # not the last batch yet
    metric.final = True
    metric.update(preds[2:], labels[2:])
    assert metric.accumulate() == pytest.approx(1.0)
    assert metric.last_details == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}
    assert metric.name() == ["auroc"]


def test_mean_loss_is_the_average_over_images_not_batches() -> None:
    loss_fn = WeightedBCEWithLogits()
    metric = MeanLoss(loss_fn)
    logits = paddle.to_tensor(np.array([[2.0], [-1.0], [0.5]], dtype=np.float32))
    labels = paddle.to_tensor(np.array([[1.0], [1.0], [0.0]], dtype=np.float32))
    for part in (slice(0, 1), slice(1, 3)):  # batches of 1 and 2 images
        metric.update(*[t.numpy() for t in metric.compute(logits[part], labels[part])])
    assert metric.accumulate() == pytest.approx(float(loss_fn(logits, labels)), rel=1e-6)


def test_history_csv_is_rewritten_whole(tmp_path) -> None:
    path = tmp_path / "h.csv"
    write_history_csv(path, [{"epoch": 1, "train_loss": 0.5}], ["epoch", "train_loss"])
    write_history_csv(path, [{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.25}],
                      ["epoch", "train_loss"])
    assert path.read_text().splitlines() == ["epoch,train_loss", "1,0.5", "2,0.25"]


def test_run_state_round_trip() -> None:
    state = RunState(global_step=7, history=[{"epoch": 1}], best_metric=0.8, best_epoch=0)
    restored = RunState()
    restored.load_state_dict(state.state_dict())
    assert (restored.global_step, restored.history, restored.best_metric, restored.best_epoch) == (7, [{"epoch": 1}], 0.8, 0)
    empty = RunState()
    empty.load_state_dict(RunState().state_dict())
    assert empty.best_metric == -math.inf


def test_visualdl_logger_writes_each_epoch_row(monkeypatch, tmp_path) -> None:
    """visualdl is optional (not installed here): a stand-in LogWriter records the calls."""
    import sys
    import types

    calls = []

    class LogWriter:
        def __init__(self, logdir):
            calls.append(("open", logdir))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "visualdl", types.SimpleNamespace(LogWriter=LogWriter))
    from paddle_chexnet.engine.callbacks import VisualDLLogger

    state = RunState(history=[{"epoch": 1, "train_loss": 0.5, "mean_auroc": 0.7, "auroc_Hernia": float("nan")}])
    logger = VisualDLLogger(state, tmp_path / "vdl")
    logger.on_eval_end({})
    logger.on_train_end({})
    assert calls[0] == ("open", str(tmp_path / "vdl"))
    assert ("train_loss", 0.5, 1) in calls and ("mean_auroc", 0.7, 1) in calls
    assert not any(c[0] == "auroc_Hernia" for c in calls)  # NaN is not written
    assert calls[-1] == ("close",)

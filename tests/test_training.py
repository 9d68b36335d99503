"""run_training end to end on tiny generated images: resume exactness, NaN guard, logs, CLI."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import paddle
import pytest
from conftest import make_split_dataset as make_dataset

from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.engine.callbacks import NonFiniteLossError, history_columns
from paddle_chexnet.engine.checkpoint import checkpoint_paths, read_checkpoint_meta
from paddle_chexnet.engine.config import TrainConfig, config_from_sources
from paddle_chexnet.engine.trainer import run_training
from paddle_chexnet.models.densenet import TINY, DenseNet
from paddle_chexnet.models.state_dict import load_weights


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


def tiny_config(data_dir: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(
        data_dir=str(data_dir), arch="tiny", resize=36, crop=32, batch_size=4, num_workers=0, epochs=2,
        output_dir=str(out / "outputs"), log_dir=str(out / "logs"), device="cpu", progress=False,
        early_stopping_patience=0,
    )
    values.update(overrides)
    return TrainConfig(**values)


def read_params(path: Path) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in paddle.load(str(path)).items()}


def read_opt(path: Path) -> dict[str, np.ndarray]:
    state = paddle.load(str(path))
    return {k: np.asarray(v) for k, v in state.items() if k != "LR_Scheduler"}


@pytest.mark.parametrize("schedule", ["plateau", "piecewise"])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(data_dir: Path, tmp_path: Path, schedule: str) -> None:
    extra = {"schedule": schedule, "milestones": (1,), "lr": 5e-3}
    full = run_training(tiny_config(data_dir, tmp_path / "full", epochs=3, **extra))
    first = run_training(tiny_config(data_dir, tmp_path / "split", epochs=1, **extra))
    assert len(first.history) == 1
    first_params = read_params(first.last_checkpoint)  # before the resumed run overwrites last.*
    resumed = run_training(tiny_config(data_dir, tmp_path / "split", epochs=3, resume=True, **extra))

    full_params, resumed_params = read_params(full.last_checkpoint), read_params(resumed.last_checkpoint)
    assert full_params.keys() == resumed_params.keys()
    for key in full_params:
        np.testing.assert_allclose(resumed_params[key], full_params[key], rtol=0, atol=1e-6, err_msg=key)
    # the weights changed during the resumed epochs (the comparison is not vacuous)
    assert max(np.abs(first_params[k] - full_params[k]).max() for k in full_params) > 1e-4

    full_opt, resumed_opt = read_opt(full.checkpoint_dir / "last.pdopt"), read_opt(resumed.checkpoint_dir / "last.pdopt")
    assert full_opt.keys() == resumed_opt.keys()
    assert any(k.startswith("features.conv0.weight_") for k in full_opt)  # structured names
    for key in full_opt:
        np.testing.assert_allclose(resumed_opt[key], full_opt[key], rtol=0, atol=1e-6, err_msg=key)
    full_sched = paddle.load(str(full.checkpoint_dir / "last.pdopt"))["LR_Scheduler"]
    resumed_sched = paddle.load(str(resumed.checkpoint_dir / "last.pdopt"))["LR_Scheduler"]
    assert float(full_sched["last_lr"]) == pytest.approx(float(resumed_sched["last_lr"]), rel=1e-12)

    assert len(resumed.history) == 3
    for row_full, row_resumed in zip(full.history, resumed.history):
        for key in ("epoch", "train_loss", "val_loss", "mean_auroc", "lr"):
            assert row_resumed[key] == pytest.approx(row_full[key], rel=1e-6, abs=1e-7), key
    if schedule == "piecewise":  # x0.1 after epoch index 1
        assert [r["lr"] for r in full.history] == pytest.approx([5e-3, 5e-4, 5e-4])


def test_static_graph_training_matches_eager(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A static program runs Paddle's own kernels, so the eager run does too here: with the package's
    # C++ CPU kernels the arithmetic rounds differently, and Adam (which divides by the gradient's
    # size) turns that into weight differences of a few 1e-4 within two epochs. Those kernels are
    # compared with Paddle's operators in tests/test_cpu_kernels.py.
    monkeypatch.setenv("PADDLE_CHEXNET_CPU_KERNELS", "0")
    eager = run_training(tiny_config(data_dir, tmp_path / "eager", epochs=2))
    static = run_training(tiny_config(data_dir, tmp_path / "static", epochs=2, to_static=True))
    pe, ps = read_params(eager.last_checkpoint), read_params(static.last_checkpoint)
    assert pe.keys() == ps.keys()
    for key in pe:
        np.testing.assert_allclose(ps[key], pe[key], rtol=0, atol=1e-4, err_msg=key)
    for row_e, row_s in zip(eager.history, static.history):
        assert row_s["val_loss"] == pytest.approx(row_e["val_loss"], rel=1e-4)


def test_data_order_and_augmentation_do_not_depend_on_workers(data_dir: Path, tmp_path: Path) -> None:
    a = run_training(tiny_config(data_dir, tmp_path / "w0", epochs=1, num_workers=0))
    b = run_training(tiny_config(data_dir, tmp_path / "w2", epochs=1, num_workers=2))
    pa, pb = read_params(a.last_checkpoint), read_params(b.last_checkpoint)
    for key in pa:
        np.testing.assert_allclose(pb[key], pa[key], rtol=0, atol=1e-6, err_msg=key)


def test_checkpoints_and_csv_log(data_dir: Path, tmp_path: Path) -> None:
    result = run_training(tiny_config(data_dir, tmp_path, epochs=2))
    ckpt = result.checkpoint_dir
    for name in ("best", "last"):
        for path in checkpoint_paths(ckpt, name).values():
            assert path.is_file(), path
    # .pdparams loads strictly into a fresh network of the same architecture
    net = DenseNet(num_classes=len(CLASS_NAMES), **TINY)
    load_weights(net, ckpt / "best.pdparams")
    meta = read_checkpoint_meta(ckpt, "best")
    assert meta["epoch"] + 1 == result.best_epoch
    assert meta["metric"]["auroc"] == pytest.approx(result.best_metric)
    assert meta["config"]["arch"] == "tiny"
    assert read_checkpoint_meta(ckpt, "last")["epoch"] == 1

    with open(result.log_dir / "history.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == history_columns(CLASS_NAMES)
    assert rows[0][-1] == "auroc_Hernia" and len(rows[0]) == 6 + len(CLASS_NAMES)
    assert [int(r[0]) for r in rows[1:]] == [1, 2]
    per_class = [float(v) for v in rows[1][6:]]
    assert all(0.0 <= v <= 1.0 for v in per_class)
    # mean AUROC is the mean of the per-class columns
    assert float(rows[1][3]) == pytest.approx(np.mean(per_class), abs=1e-5)
    assert json.loads((result.log_dir / "config.json").read_text())["epochs"] == 2


class _NaNAtStep(paddle.nn.Layer):
    """A BCE loss that returns NaN on its ``nan_at``-th training call (eval calls run without grad)."""

    def __init__(self, base: paddle.nn.Layer, nan_at: int) -> None:
        super().__init__()
        self.base, self.nan_at, self.calls = base, nan_at, 0

    def forward(self, logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
        loss = self.base(logits, labels)
        if paddle.is_grad_enabled():
            self.calls += 1
            if self.calls == self.nan_at:
                return loss * float("nan")
        return loss


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import paddle_chexnet.engine.trainer as training

    real_make_loss = training.make_loss
    monkeypatch.setattr(training, "make_loss", lambda *a, **k: _NaNAtStep(real_make_loss(*a, **k), nan_at=5))
    config = tiny_config(data_dir, tmp_path, epochs=3)  # 12 images / batch 4 = 3 steps per epoch
    with pytest.raises(NonFiniteLossError, match=r"nan at epoch 2, step 2 of the epoch \(global step 5\)") as err:
        run_training(config)
    assert "last.pdparams" in str(err.value) and "end of epoch 1" in str(err.value)
    meta = read_checkpoint_meta(config.checkpoint_dir, "last")
    assert meta["epoch"] == 0
    params = read_params(config.checkpoint_dir / "last.pdparams")
    assert all(np.isfinite(v).all() for v in params.values())


def test_resume_without_checkpoint_is_a_clear_error(data_dir: Path, tmp_path: Path) -> None:
    from paddle_chexnet.engine.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="no checkpoint in .*--run-name"):
        run_training(tiny_config(data_dir, tmp_path, resume=True))


def test_class_weighted_training_runs_and_is_finite(data_dir: Path, tmp_path: Path) -> None:
    result = run_training(tiny_config(data_dir, tmp_path, epochs=1, class_weighting="chexnet", optimizer="sgd",
                                      weight_decay=1e-4, schedule="constant"))
    assert math.isfinite(result.history[0]["train_loss"])
    assert result.history[0]["lr"] == pytest.approx(1e-3)


def test_offline_imagenet_download_names_the_local_alternative(monkeypatch: pytest.MonkeyPatch) -> None:
    import paddle.utils.download as download

    from paddle_chexnet.conversion.pretrained import (
        PretrainedDownloadError,
        download_imagenet_weights,
    )

    def offline(url, md5sum=None):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(download, "get_weights_path_from_url", offline)
    with pytest.raises(PretrainedDownloadError, match="--pretrained PATH") as err:
        download_imagenet_weights()
    assert "Network is unreachable" in str(err.value)


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="optimizer must be one of adam, sgd"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="crop .* must not exceed resize"):
        TrainConfig(resize=200, crop=224)
    with pytest.raises(ValueError, match="unknown setting.*learning_rate"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="cpu_threads must be at least 1"):
        TrainConfig(cpu_threads=0)
    with pytest.raises(ValueError, match="needs a GPU"):
        run_training(TrainConfig(amp=True, device="cpu"))


def _typed(argv: list[str]) -> tuple[dict, str | None]:
    from paddle_chexnet.cli.train import get_args_parser

    args = vars(get_args_parser().parse_args(argv))
    return {k: v for k, v in args.items() if k not in ("config", "verbose")}, args["config"]


def test_cli_flags_aliases_and_config_file(tmp_path: Path) -> None:
    typed, config_file = _typed(["--data_dir", "D", "--batch-size", "8", "--class-weighting", "pos_weight",
                                 "--scale-lr", "--no-progress", "--milestones", "3", "5"])
    assert typed == {"data_dir": "D", "batch_size": 8, "class_weighting": "pos_weight", "scale_lr": True,
                     "progress": False, "milestones": [3, 5]}  # only what was typed
    config = config_from_sources(typed, config_file)
    assert (config.data_dir, config.batch_size, config.class_weighting) == ("D", 8, "pos_weight")
    assert config.scale_lr is True and config.progress is False and config.resume is False
    assert config.milestones == (3, 5)
    assert (config.lr, config.optimizer, config.schedule) == (1e-3, "adam", "plateau")  # the paper's defaults

    settings = tmp_path / "run.json"
    settings.write_text(json.dumps({"epochs": 7, "lr": 0.01, "batch-size": 32, "scale_lr": True}))
    config = config_from_sources(*_typed(["--config", str(settings), "--batch-size", "4"]))
    assert (config.epochs, config.lr, config.batch_size, config.scale_lr) == (7, 0.01, 4, True)
    # a typed flag wins even when its value is the default
    config = config_from_sources(*_typed(["--config", str(settings), "--batch-size", "16", "--epochs", "20"]))
    assert (config.batch_size, config.epochs) == (16, 20)
    settings.write_text("{bad json")
    with pytest.raises(ValueError, match="line 1"):
        config_from_sources(*_typed(["--config", str(settings)]))


@pytest.mark.parametrize("values, message", [
    ({"epochs": "ten"}, r"'epochs' must be an integer, got 'ten' \(a str\)"),
    ({"lr": "0.01"}, r"'lr' must be a number, got '0.01'"),
    ({"epochs": 1.5}, r"'epochs' must be an integer, got 1.5"),
    ({"batch_size": "8"}, r"'batch_size' must be an integer"),
    ({"scale_lr": "yes"}, r"'scale_lr' must be true or false"),
    ({"milestones": [1, "x"]}, r"'milestones\[1\]' must be an integer"),
    ({"epochs": None}, r"'epochs' must be an integer, got null"),
    ({"learning_rate": 0.1}, r"unknown setting\(s\) learning_rate"),
    ({"num_workers": -1}, r"num_workers must be at least 0, got -1"),
    ({"arch": "resnet9000"}, r"arch must be one of densenet121, tiny"),
])
def test_config_file_values_of_the_wrong_type_name_the_key(tmp_path: Path, values, message) -> None:
    settings = tmp_path / "c.json"
    settings.write_text(json.dumps(values))
    with pytest.raises(ValueError, match=message) as err:
        config_from_sources({}, settings)
    if "unknown" not in message and "must be at least" not in message and "one of" not in message:
        assert str(settings) in str(err.value)


def test_cli_help_lists_every_setting_with_its_default() -> None:
    from paddle_chexnet.cli.train import get_args_parser

    text = get_args_parser().format_help()
    for option in ("--batch-size", "--class-weighting", "--no-progress", "--cpu-threads", "--pooling"):
        assert option in text
    assert "(default: 16)" in text and "{adam,sgd}" in text


def test_cli_trains_and_writes_outputs(data_dir: Path, tmp_path: Path) -> None:
    from paddle_chexnet.cli.train import entry

    assert entry([
        "--data-dir", str(data_dir), "--arch", "tiny", "--resize", "36", "--crop", "32", "--batch-size", "4",
        "--num-workers", "0", "--epochs", "1", "--output-dir", str(tmp_path / "o"), "--log-dir", str(tmp_path / "l"),
        "--device", "cpu", "--no-progress",
    ]) == 0
    assert (tmp_path / "o" / "chexnet" / "best.pdparams").is_file()
    assert (tmp_path / "l" / "chexnet" / "history.csv").is_file()
    meta = json.loads((tmp_path / "o" / "chexnet" / "best.json").read_text())
    assert meta["model"]["arch"] == "tiny" and meta["model"]["class_names"] == list(CLASS_NAMES)


def test_cli_reports_user_errors_without_a_traceback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from paddle_chexnet.cli.train import entry

    assert entry(["--data-dir", str(tmp_path / "nowhere"), "--device", "cpu"]) == 1
    assert "image folder not found" in caplog.text and "nowhere" in caplog.text
    assert "Traceback" not in caplog.text
    assert entry(["--data-dir", str(tmp_path), "--resume", "--device", "cpu", "--output-dir", str(tmp_path / "o"),
                  "--crop", "300"]) == 1
    assert "crop (300) must not exceed resize (256)" in caplog.text


def test_pretrained_backbone_is_loaded_and_the_classifier_is_not(tmp_path: Path) -> None:
    from paddle_chexnet.engine.trainer import build_network

    paddle.seed(123)
    source = DenseNet(num_classes=5, **TINY)  # another head size: only features.* are used
    paddle.save(source.state_dict(), str(tmp_path / "imagenet.pdparams"))
    config = TrainConfig(arch="tiny", pretrained=str(tmp_path / "imagenet.pdparams"))
    paddle.seed(0)
    net = build_network(config, len(CLASS_NAMES), CLASS_NAMES)
    loaded, original = net.state_dict(), source.state_dict()
    features = [k for k in loaded if k.startswith("features.")]
    assert features
    for key in features:
        np.testing.assert_array_equal(loaded[key].numpy(), original[key].numpy(), err_msg=key)
    assert list(loaded["classifier.weight"].shape) == [net.num_features, len(CLASS_NAMES)]

    with pytest.raises(FileNotFoundError, match="--pretrained .*missing.pdparams: no such file"):
        build_network(TrainConfig(arch="tiny", pretrained=str(tmp_path / "missing.pdparams")), 14, CLASS_NAMES)


def test_progress_bar_run(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    result = run_training(tiny_config(data_dir, tmp_path, epochs=1, progress=True))
    assert len(result.history) == 1
    assert "epoch 1/1" in capsys.readouterr().err


def test_the_documented_options_table_is_the_one_made_from_the_config() -> None:
    """docs/training.md's options table is generated from TrainConfig; regenerate it when a field changes."""
    from paddle_chexnet.engine.config import options_markdown

    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    documented = text.split("<!-- options:begin -->\n", 1)[1].split("\n<!-- options:end -->", 1)[0]
    assert documented == options_markdown()

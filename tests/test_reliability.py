"""Nothing lost, nothing silent (issue 11) and the GPU paths that can be exercised on a CPU (issue 13).

Each test reproduces what a new user did on main 7492fd5 and asserts the new behaviour: a diverged run
is an error (exit 2) and no file holds its weights; a run folder is locked and never replaced without
--resume or --overwrite; a resume lists the settings that changed; the commands check their inputs
before the model loads and end a mistake in one line; Paddle's noise is gone.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import paddle
import pytest
from conftest import cli_env
from conftest import make_split_dataset as make_dataset
from conftest import make_test_images as _make_dataset
from PIL import Image
from test_training import tiny_config

from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.engine.callbacks import DivergenceGuard, NonFiniteLossError, RunState, ValidationOnly
from paddle_chexnet.engine.run_folder import RunExistsError, RunFolderInUseError, RunLock
from paddle_chexnet.engine.trainer import run_training
from paddle_chexnet.models.densenet import TINY, DenseNet

REPO = Path(__file__).resolve().parents[1]


def train_argv(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data_dir), "--arch", "tiny", "--resize", "36", "--crop", "32", "--batch-size", "4",
            "--num-workers", "0", "--epochs", "1", "--output-dir", str(out / "o"), "--log-dir", str(out / "l"),
            "--device", "cpu", "--no-progress", "--early-stopping-patience", "0", *extra]


def error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "data")


def tiny_weights(path: Path, num_classes: int = 14, nan: bool = False, seed: int = 0) -> Path:
    paddle.seed(seed)
    net = DenseNet(**TINY, num_classes=num_classes)
    state = net.state_dict()
    if nan:
        state["features.conv0.weight"].set_value(paddle.full(state["features.conv0.weight"].shape, float("nan")))
    path.parent.mkdir(parents=True, exist_ok=True)
    paddle.save(state, str(path))
    return path


def never_called(*args, **kwargs):
    raise AssertionError("the model was loaded before the cheap checks")


# ---------------------------------------------------------------- 1. a diverged run


def test_diverged_run_exits_2_names_the_step_and_saves_nothing(data_dir, tmp_path, caplog):
    """--lr 1e30: the loss reads ~1e29, not NaN; on 7492fd5 the run ended with exit 0 and NaN best weights."""
    from paddle_chexnet.cli.train import entry

    assert entry(train_argv(data_dir, tmp_path, "--lr", "1e30")) == 2
    (message,) = error_lines(caplog)
    assert "above --max-loss 10000" in message and "at epoch 1, step" in message and "--lr" in message
    assert not list((tmp_path / "o" / "chexnet").glob("*.pdparams"))  # no checkpoint of a diverged run


def test_nan_weights_with_a_finite_loss_stop_at_that_step():
    """ReLU and pooling turn NaN weights into finite logits: the loss alone does not show the divergence."""
    paddle.seed(0)
    net = DenseNet(**TINY, num_classes=3)
    guard = DivergenceGuard(RunState(epoch=1, global_step=7, last_saved_epoch=0), "out/run", max_loss=0)
    guard.set_model(SimpleNamespace(network=net))
    guard.on_train_batch_end(2, {"loss": [0.7]})  # healthy: nothing happens
    weight = net.features.denseblock1.denselayer1.conv1.weight
    weight.set_value(paddle.full(weight.shape, float("nan")))
    with pytest.raises(NonFiniteLossError) as err:
        guard.on_train_batch_end(2, {"loss": [0.7]})
    assert "weights became NaN or infinite in 1 tensor(s) (first: features.denseblock1.denselayer1.conv1.weight" \
        in str(err.value)
    assert "epoch 2, step 3 of the epoch (global step 7)" in str(err.value)
    assert "out/run/last.pdparams (end of epoch 1)" in str(err.value)


@pytest.mark.parametrize("loss, expected", [(float("inf"), "training loss became inf"),
                                            (2e4, "training loss reached 2e+04, above --max-loss 10000")])
def test_loss_guard_bounds(loss, expected):
    guard = DivergenceGuard(RunState(), "out", check_weights=False)
    with pytest.raises(NonFiniteLossError, match=expected.replace("+", r"\+")):
        guard.on_train_batch_end(0, {"loss": [loss]})
    DivergenceGuard(RunState(), "out", max_loss=0, check_weights=False).on_train_batch_end(0, {"loss": [2e4]})


def test_eval_predict_and_localize_refuse_a_nan_weights_file(tmp_path, caplog):
    from paddle_chexnet.cli import evaluate, localize_eval, predict

    weights = tiny_weights(tmp_path / "nan.pdparams", nan=True)
    _make_dataset(tmp_path / "d", n=4, nested=False)
    assert evaluate.entry(["--weights", str(weights), "--data-dir", str(tmp_path / "d"), "--output-dir",
                           str(tmp_path / "e"), "--device", "cpu", "--crops", "center", "--no-progress"]) == 2
    assert predict.entry([str(tmp_path / "d" / "images"), "--weights", str(weights), "--output-dir",
                          str(tmp_path / "p"), "--device", "cpu"]) == 2
    (tmp_path / "boxes.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                                        "00000000_000.png,Effusion,1,1,10,10\n")
    assert localize_eval.entry(["--weights", str(weights), "--bbox-csv", str(tmp_path / "boxes.csv"),
                                "--data-dir", str(tmp_path / "d" / "images"), "--device", "cpu"]) == 2
    errors = error_lines(caplog)
    assert len(errors) == 3
    assert all("NaN or infinite values in 1 of" in e and "diverged" in e for e in errors)


# ---------------------------------------------------------------- 2. run names


def test_a_run_folder_in_use_is_refused_at_start(data_dir, tmp_path, caplog):
    from paddle_chexnet.cli.train import entry

    with RunLock(tmp_path / "o" / "chexnet"):  # another train.py holds it
        assert entry(train_argv(data_dir, tmp_path)) == 1
    (message,) = error_lines(caplog)
    assert f"run folder {tmp_path / 'o' / 'chexnet'} is in use by train.py (pid {os.getpid()}" in message
    assert "--run-name" in message
    assert not (tmp_path / "o" / "chexnet" / "last.json").exists()
    assert entry(train_argv(data_dir, tmp_path)) == 0  # released: the folder can be used again


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    code = ("import sys, time; from paddle_chexnet.engine.run_folder import RunLock; "
            "lock = RunLock(sys.argv[1]); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env=cli_env())
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderInUseError, match=f"pid {proc.pid}"):
            RunLock(tmp_path)
    finally:
        proc.kill()
        proc.wait()
    RunLock(tmp_path).release()  # kill -9 leaves no stale lock


def test_a_finished_run_is_replaced_only_with_overwrite(data_dir, tmp_path, caplog):
    from paddle_chexnet.cli.train import entry

    assert entry(train_argv(data_dir, tmp_path)) == 0
    best = tmp_path / "o" / "chexnet" / "best.pdparams"
    trained = best.read_bytes()
    assert entry(train_argv(data_dir, tmp_path, "--seed", "1")) == 1
    (message,) = error_lines(caplog)
    assert "already holds a run (checkpoint of epoch 1 of 1, best mean AUROC" in message
    assert "pass --resume to continue it, --overwrite to replace it, or choose another --run-name" in message
    assert best.read_bytes() == trained
    assert entry(train_argv(data_dir, tmp_path, "--seed", "1", "--overwrite")) == 0
    assert best.read_bytes() != trained
    with pytest.raises(ValueError, match="choose one"):
        tiny_config(data_dir, tmp_path, resume=True, overwrite=True)


def test_run_exists_error_from_the_api(data_dir, tmp_path):
    run_training(tiny_config(data_dir, tmp_path, epochs=1))
    with pytest.raises(RunExistsError):
        run_training(tiny_config(data_dir, tmp_path, epochs=1))


# ---------------------------------------------------------------- 3./4. resume


def test_resume_lists_changed_settings_and_cleans_stale_files(data_dir, tmp_path, caplog):
    run_training(tiny_config(data_dir, tmp_path, epochs=1))
    folder = tmp_path / "outputs" / "chexnet"
    stale = folder / ".last.pdopt.k2j4h5.tmp"  # a kill during a save
    stale.write_bytes(b"partial")
    stale_log = tmp_path / "logs" / "chexnet" / ".history.csv.x1y2.tmp"
    stale_log.write_text("epoch,")
    with open(data_dir / "labels" / "val_list.txt", "a") as handle:  # the list is edited in place
        handle.write("\n")
    caplog.set_level(logging.WARNING)
    result = run_training(tiny_config(data_dir, tmp_path, epochs=2, resume=True, batch_size=2, lr=5e-3,
                                      schedule="constant", num_workers=1))
    assert len(result.history) == 2 and not stale.exists() and not stale_log.exists()
    (warning,) = [r.getMessage() for r in caplog.records if "differ from the checkpoint" in r.getMessage()]
    assert "--resume with 4 setting(s)" in warning
    for part in ("batch_size: 4 -> 2", "lr: 0.001 -> 0.005", "schedule: 'plateau' -> 'constant'",
                 "val_list: the file changed since the checkpoint"):
        assert part in warning
    assert "num_workers" not in warning and "epochs" not in warning  # they do not change the result


def test_resume_with_another_architecture_is_refused_before_loading(data_dir, tmp_path, caplog):
    from paddle_chexnet.cli.train import entry

    assert entry(train_argv(data_dir, tmp_path)) == 0
    assert entry(train_argv(data_dir, tmp_path, "--resume", "--epochs", "2", "--arch", "densenet121")) == 1
    (message,) = error_lines(caplog)
    assert "--resume: the checkpoint in" in message
    assert "has architecture (--arch) 'tiny', this run 'densenet121'" in message


@pytest.mark.parametrize("saved, expected", [
    ({"num_classes": 13}, "has number of classes 13, this run 14"),
    ({"class_names": list(CLASS_NAMES[::-1])}, "has classes ('Hernia',"),
    ({"task": "chexpert5"}, "has task 'chexpert5', this run None"),
])
def test_resume_with_other_classes_or_task_is_refused(data_dir, tmp_path, saved, expected):
    from paddle_chexnet.engine.trainer import _check_resume_model
    from paddle_chexnet.models.registry import build_network

    net = build_network("tiny", num_classes=14, class_names=CLASS_NAMES)
    record = {"arch": "tiny", "num_classes": 14, "class_names": list(CLASS_NAMES), "task": net.spec.task, **saved}
    with pytest.raises(ValueError, match=expected.replace("(", r"\(")):
        _check_resume_model(tiny_config(data_dir, tmp_path), net, {"model": record}, tmp_path)
    _check_resume_model(tiny_config(data_dir, tmp_path), net, {"model": {**record, **{k: net.spec.to_dict()[k]
                                                                                      for k in saved}}}, tmp_path)


# ---------------------------------------------------------------- 5./6. eval fails early


def test_eval_output_dir_is_checked_before_the_model_loads(tmp_path, monkeypatch, caplog):
    import paddle_chexnet.inference.predictors as predictors
    from paddle_chexnet.cli import evaluate

    monkeypatch.setattr(predictors, "load_predictor", never_called)
    _make_dataset(tmp_path / "d", n=4, nested=False)
    (tmp_path / "taken").write_text("a file")
    weights = tiny_weights(tmp_path / "w.pdparams")
    assert evaluate.entry(["--weights", str(weights), "--data-dir", str(tmp_path / "d"),
                           "--output-dir", str(tmp_path / "taken"), "--device", "cpu"]) == 1
    (message,) = error_lines(caplog)
    assert f"--output-dir {tmp_path / 'taken'} is a file, not a folder" in message


def test_eval_refuses_a_1000_class_file_before_exporting_it(tmp_path, monkeypatch, caplog):
    import paddle_chexnet.inference.predictors as predictors
    from paddle_chexnet.cli import evaluate

    monkeypatch.setattr(predictors, "load_predictor", never_called)
    _make_dataset(tmp_path / "d", n=4, nested=False)
    weights = tiny_weights(tmp_path / "imagenet.pdparams", num_classes=1000)
    assert evaluate.entry(["--weights", str(weights), "--data-dir", str(tmp_path / "d"), "--output-dir",
                           str(tmp_path / "o"), "--device", "cpu"]) == 2
    (message,) = error_lines(caplog)
    assert "has 1000 outputs and the label list" in message and "has 14 classes" in message
    assert "--head resize" in message


# ---------------------------------------------------------------- 7. predict and localize_eval


def _dicom_without_pixels(path: Path) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR: a report
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, generate_uid(), "SR"
    ds.save_as(str(path), enforce_file_format=True)
    return path


@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 96), dtype=np.uint8)).save(folder / "a.png")
    return folder


@pytest.mark.parametrize("case, extra, code, expected", [
    ("missing weights", ["--weights", "{tmp}/none.pdparams"], 1, "weights file {tmp}/none.pdparams does not exist"),
    ("no images", ["{tmp}/empty"], 1, "no images (.bmp"),
    ("threshold", ["--threshold", "1.5"], 1, "threshold must be in [0, 1], got 1.5"),
    ("dicom", ["{tmp}/dicom"], 1, "report.dcm has no pixel data (is it a report"),
    ("layer", ["--cam", "gradcam", "--layer", "denseblock9"], 1, "denseblock9"),
    ("batch", ["--batch-size", "0"], 1, "--batch-size must be at least 1"),
])
def test_predict_errors_are_one_line_before_the_model_loads(tmp_path, inputs, monkeypatch, caplog, case, extra,
                                                            code, expected):
    import paddle_chexnet.models.loading as loading
    from paddle_chexnet.cli import predict

    (tmp_path / "empty").mkdir()
    (tmp_path / "dicom").mkdir()
    _dicom_without_pixels(tmp_path / "dicom" / "report.dcm")
    Image.open(inputs / "a.png").save(tmp_path / "dicom" / "a.png")
    weights = tiny_weights(tmp_path / "w.pdparams")
    if case != "layer":  # the layer is checked against the loaded network, before any image is read
        monkeypatch.setattr(loading, "load_network", never_called)
    argv = [str(inputs), "--weights", str(weights), "--output-dir", str(tmp_path / "out"), "--device", "cpu",
            "--quiet"]
    extra = [e.format(tmp=tmp_path) for e in extra]
    if extra[0].startswith(str(tmp_path)) and not extra[0].endswith(".pdparams"):
        argv[0] = extra.pop(0)
    assert predict.entry(argv + extra) == code
    (message,) = error_lines(caplog)
    assert expected.format(tmp=tmp_path) in message
    if case == "dicom":
        assert "--skip-unreadable" in message
    assert "Traceback" not in caplog.text


def test_predict_accepts_the_state_dict_layer_name(tmp_path, inputs):
    from paddle_chexnet.cli import predict

    weights = tiny_weights(tmp_path / "w.pdparams")
    assert predict.entry([str(inputs), "--weights", str(weights), "--output-dir", str(tmp_path / "out"),
                          "--device", "cpu", "--cam", "gradcam", "--layer", "features.denseblock2", "--quiet"]) == 0


def test_predict_as_a_program_ends_in_one_line(tmp_path, inputs):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "predict.py"), str(inputs), "--weights",
                           str(tmp_path / "none.pdparams"), "--output-dir", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120, env=cli_env(OMP_NUM_THREADS="1"))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
    assert "none.pdparams does not exist" in proc.stderr


def test_localize_eval_errors_are_one_line(tmp_path, caplog):
    from paddle_chexnet.cli import localize_eval

    images, _ = _make_dataset(tmp_path / "d", n=2, nested=False)
    (tmp_path / "boxes.csv").write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                                        "00000000_000.png,Effusion,1,1,10,10\n")
    weights = tiny_weights(tmp_path / "w.pdparams")
    common = ["--bbox-csv", str(tmp_path / "boxes.csv"), "--data-dir", str(images), "--device", "cpu"]
    assert localize_eval.entry(["--weights", str(tmp_path / "none.pdparams"), *common]) == 1
    assert localize_eval.entry(["--weights", str(weights), *common, "--cam", "gradcam", "--layer", "nope"]) == 1
    assert localize_eval.entry(["--weights", str(weights), *common, "--box-threshold", "2"]) == 1
    errors = error_lines(caplog)
    assert len(errors) == 3 and "does not exist" in errors[0] and "nope" in errors[1] and "[0, 1]" in errors[2]


# ---------------------------------------------------------------- 8. settings of the wrong type


@pytest.mark.parametrize("argv, expected", [
    (["--num-workers", "-1"], "num_workers must be at least 0, got -1"),
    (["--config", "{tmp}/c.json"], "'epochs' must be an integer, got 'ten' (a str)"),
])
def test_train_settings_of_the_wrong_type_are_one_line(tmp_path, caplog, argv, expected):
    from paddle_chexnet.cli.train import entry

    (tmp_path / "c.json").write_text(json.dumps({"epochs": "ten", "batch_size": 8}))
    assert entry([a.format(tmp=tmp_path) for a in argv] + ["--device", "cpu"]) == 1
    (message,) = error_lines(caplog)
    assert expected in message


# ---------------------------------------------------------------- 9./10. eval --skip-unreadable, tiny images


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header parses; the pixels do not


@pytest.mark.parametrize("num_workers", ["0", "1"])
def test_eval_skip_unreadable_lists_the_image_and_the_reason(tmp_path, caplog, num_workers):
    from paddle_chexnet.cli import evaluate

    images, _ = _make_dataset(tmp_path / "d", n=8, nested=False)
    _truncate(images / "00000005_000.png")
    weights = tiny_weights(tmp_path / "w.pdparams")
    common = ["--weights", str(weights), "--data-dir", str(tmp_path / "d"), "--device", "cpu", "--crops", "center",
              "--resize", "40", "--crop", "32", "--no-progress", "--no-plot", "--num-workers", num_workers,
              "--batch-size", "3"]
    assert evaluate.entry(common + ["--output-dir", str(tmp_path / "a")]) == 1
    (message,) = error_lines(caplog)
    assert "00000005_000.png" in message and "--skip-unreadable" in message

    result = evaluate.run(evaluate.get_args_parser().parse_args(
        common + ["--output-dir", str(tmp_path / "b"), "--skip-unreadable", "--backend", "dygraph"]))
    assert len(result.names) == 7 and "00000005_000.png" not in result.names
    (line,) = (tmp_path / "b" / "skipped.txt").read_text().splitlines()
    name, reason = line.split("\t")
    assert name == "00000005_000.png" and reason.startswith("unreadable: cannot read image")
    full = evaluate.run(evaluate.get_args_parser().parse_args(common[:-2] + [
        "--output-dir", str(tmp_path / "c"), "--backend", "dygraph", "--label-list",
        str(_without(tmp_path / "d" / "labels" / "test_list.txt", "00000005_000.png", tmp_path / "l.txt"))]))
    # the other images' results are unchanged (to float rounding: the batches are made of other images)
    np.testing.assert_allclose(result.probs, full.probs, rtol=0, atol=1e-6)


def test_parallel_eval_worker_leaves_out_an_unreadable_image(tmp_path, monkeypatch):
    import paddle_chexnet.evaluation.evaluate as evaluation
    from paddle_chexnet.data.images import ImageReadError
    from paddle_chexnet.inference.predictors import DygraphPredictor

    images, _ = _make_dataset(tmp_path / "d", n=3, nested=False)
    _truncate(images / "00000001_000.png")
    monkeypatch.setattr(evaluation, "_WORKER_PREDICTOR", DygraphPredictor(DenseNet(**TINY, num_classes=14)))
    paths = [str(images / f"0000000{i}_000.png") for i in range(3)]
    out, errors = evaluation._predict_images(paths, "center", 40, 32, skip_unreadable=True)
    assert list(errors) == [1] and "00000001_000.png" in errors[1]
    assert np.isnan(out[1]).all() and np.isfinite(out[[0, 2]]).all()
    alone, _ = evaluation._predict_images([paths[2]], "center", 40, 32)
    np.testing.assert_allclose(out[2], alone[0], rtol=0, atol=1e-6)
    with pytest.raises(ImageReadError, match="00000001_000.png"):
        evaluation._predict_images(paths, "center", 40, 32)


def _without(labels: Path, name: str, out: Path) -> Path:
    out.write_text("".join(line + "\n" for line in labels.read_text().splitlines() if not line.startswith(name)))
    return out


def test_tiny_images_are_reported_once_with_a_count_and_examples(tmp_path, caplog):
    from paddle_chexnet.cli import evaluate

    images, _ = _make_dataset(tmp_path / "d", n=6, nested=False)
    for name in ("00000001_000.png", "00000003_000.png"):
        Image.fromarray(np.full((1, 1), 128, dtype=np.uint8)).save(images / name)
    weights = tiny_weights(tmp_path / "w.pdparams")
    caplog.set_level(logging.WARNING)
    assert evaluate.entry(["--weights", str(weights), "--data-dir", str(tmp_path / "d"), "--device", "cpu",
                           "--crops", "center", "--resize", "40", "--crop", "32", "--no-progress", "--no-plot",
                           "--num-workers", "0", "--output-dir", str(tmp_path / "o")]) == 0
    (warning,) = [r.getMessage() for r in caplog.records if "smaller than" in r.getMessage()]
    assert warning.startswith("2 of 6 images are smaller than 16 px on their shorter side")
    assert "00000001_000.png (1x1), 00000003_000.png (1x1)" in warning


def test_tiny_images_in_training_and_predict_are_reported(tmp_path, caplog, inputs):
    from paddle_chexnet.cli import predict

    data = make_dataset(tmp_path / "data", size=40)
    Image.fromarray(np.zeros((3, 5), dtype=np.uint8)).save(data / "images" / "train_002.png")
    caplog.set_level(logging.WARNING)
    run_training(tiny_config(data, tmp_path, epochs=1))
    Image.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(inputs / "tiny.png")
    assert predict.entry([str(inputs), "--weights", str(tiny_weights(tmp_path / "w.pdparams")), "--output-dir",
                          str(tmp_path / "p"), "--device", "cpu", "--quiet", "--resize", "100"]) == 0
    warnings = [r.getMessage() for r in caplog.records if "smaller than" in r.getMessage()]
    assert len(warnings) == 2
    assert warnings[0].startswith("1 of 20 images are smaller than 16 px") and "train_002.png (5x3)" in warnings[0]
    assert warnings[1].startswith("1 of 2 images are smaller than 50 px") and "tiny.png (2x2)" in warnings[1]


# ---------------------------------------------------------------- 11. --data-dir is the image folder


def test_data_dir_pointing_at_the_images_says_what_to_pass(tmp_path, data_dir, caplog):
    from paddle_chexnet.cli import evaluate
    from paddle_chexnet.cli.train import entry

    images = data_dir / "images"
    assert entry(["--data-dir", str(images), "--device", "cpu"]) == 1
    assert evaluate.entry(["--data-dir", str(images), "--weights", str(tiny_weights(tmp_path / "w.pdparams")),
                           "--output-dir", str(tmp_path / "o"), "--device", "cpu"]) == 1
    errors = error_lines(caplog)
    assert len(errors) == 2
    for message in errors:
        assert f"--data-dir {images} holds the images themselves" in message
        assert f"(its parent {data_dir.resolve()}?)" in message and f"--image-dir {images}" in message


# ---------------------------------------------------------------- 12. noise


def test_training_prints_no_paddle_noise_and_one_line_per_warning(tmp_path):
    data = make_dataset(tmp_path / "data", n_val=4)
    val = data / "labels" / "val_list.txt"  # Hernia 0 in every validation image: its AUROC is undefined
    val.write_text("".join(" ".join(line.split()[:-1] + ["0"]) + "\n" for line in val.read_text().splitlines()))
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *train_argv(data, tmp_path, "--epochs", "2")],
                          capture_output=True, text=True, timeout=600, env=cli_env(OMP_NUM_THREADS="1"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for noise in ("No ccache found", "To copy construct from a tensor", "always track global mean",
                  "warnings.warn(", "UserWarning"):
        assert noise not in proc.stderr, noise
    undefined = [line for line in proc.stderr.splitlines() if "AUROC undefined" in line]
    assert len(undefined) == 2 and all("Hernia" in line and "WARNING" in line for line in undefined)  # per epoch
    assert "self._per_class" not in proc.stderr  # Python's echo of the source line


# ---------------------------------------------------------------- issue 13: GPU paths, on the CPU


def test_device_auto_names_the_device_and_warns_about_a_cpu_build_on_a_gpu_machine(monkeypatch, caplog):
    import paddle_chexnet.utils.device as device

    monkeypatch.setattr(device, "nvidia_gpu_present", lambda: True)
    monkeypatch.setattr(paddle.device, "is_compiled_with_cuda", lambda: False)
    caplog.set_level(logging.INFO)
    assert device.prepare_device("auto") == "cpu"
    messages = [r.getMessage() for r in caplog.records]
    assert any("an NVIDIA GPU is present but this Paddle is a CPU build" in m for m in messages)
    assert any(m.startswith("device: cpu, ") for m in messages)
    caplog.clear()
    monkeypatch.setattr(device, "nvidia_gpu_present", lambda: False)
    device.prepare_device("auto")
    assert not any("NVIDIA" in r.getMessage() for r in caplog.records)


def test_gloo_backend_is_set_for_cpu_processes(monkeypatch):
    from paddle_chexnet.engine.distributed import use_cpu_backend

    monkeypatch.delenv("PADDLE_DISTRI_BACKEND", raising=False)
    monkeypatch.setattr(paddle.distributed, "get_world_size", lambda: 2)
    use_cpu_backend("gpu")
    assert "PADDLE_DISTRI_BACKEND" not in os.environ
    use_cpu_backend("cpu")
    assert os.environ["PADDLE_DISTRI_BACKEND"] == "gloo"
    monkeypatch.setattr(paddle.distributed, "get_world_size", lambda: 1)
    monkeypatch.setenv("PADDLE_DISTRI_BACKEND", "nccl")
    use_cpu_backend("cpu")  # one process: nothing to configure
    assert os.environ["PADDLE_DISTRI_BACKEND"] == "nccl"


def test_an_explicit_gpu_index_is_refused_with_several_processes(monkeypatch):
    from paddle_chexnet.utils.device import select_device

    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "4")
    with pytest.raises(ValueError, match=r"--device gpu:1 would put all 4 processes .* use --device gpu"):
        select_device("gpu:1")
    assert select_device("cpu") == "cpu"


def test_grad_scaler_state_survives_a_checkpoint(monkeypatch):
    """A real GradScaler (enabled as on a GPU) through the JSON a checkpoint stores, into a fresh paddle.Model."""
    import paddle.amp.grad_scaler as grad_scaler

    from paddle_chexnet.engine.checkpoint import _to_jsonable
    from paddle_chexnet.engine.trainer import grad_scaler_state, restore_grad_scaler

    real_tracer = grad_scaler._dygraph_tracer

    class GPUPlace:
        def __init__(self, place):
            self.place = place

        def is_gpu_place(self):
            return True

        def __getattr__(self, name):
            return getattr(self.place, name)

    monkeypatch.setattr(grad_scaler, "_dygraph_tracer",
                        lambda: SimpleNamespace(_expected_place=GPUPlace(real_tracer()._expected_place)))

    def amp_model() -> paddle.Model:
        net = DenseNet(**TINY, num_classes=3)
        model = paddle.Model(net)
        model._adapter._amp_level, model._adapter._amp_configs = "O1", {"init_loss_scaling": 2.0**15}
        return model

    trained = amp_model()
    restore_grad_scaler(trained, None)  # created before the first step, as paddle.Model would
    scaler = trained._scaler
    scaler._scale = paddle.to_tensor(np.array([512.0], dtype=np.float32))
    scaler._incr_count, scaler._decr_count = 37, 2
    saved = json.loads(json.dumps(_to_jsonable(grad_scaler_state(trained))))
    assert saved["scale"] == [512.0] and saved["incr_count"] == 37

    resumed = amp_model()
    restore_grad_scaler(resumed, saved)
    state = resumed._scaler.state_dict()
    assert float(np.asarray(state["scale"]).reshape(-1)[0]) == 512.0
    assert (state["incr_count"], state["decr_count"]) == (37, 2)
    assert grad_scaler_state(paddle.Model(DenseNet(**TINY, num_classes=3))) is None  # no AMP: nothing stored


def test_training_steps_copy_nothing_for_a_switched_off_metric():
    from paddle_chexnet.evaluation.metrics import AUROC

    metric = ValidationOnly(AUROC(class_names=CLASS_NAMES[:2], gather=False))
    logits, labels = paddle.zeros([4, 2]), paddle.ones([4, 2])
    assert metric.compute(logits, labels) == []  # paddle.Model then copies nothing to NumPy
    metric.update(*[])
    metric.enabled = True
    assert len(metric.compute(logits, labels)) == 2


def test_eval_prefetch_thread_gives_identical_results(tmp_path):
    from paddle_chexnet.data.datasets import ChestXray14Dataset
    from paddle_chexnet.evaluation.evaluate import predict_dataset, prefetched
    from paddle_chexnet.inference.predictors import DygraphPredictor

    images, labels = _make_dataset(tmp_path / "d", n=7)
    dataset = ChestXray14Dataset(images, labels)
    predictor = DygraphPredictor(DenseNet(**TINY, num_classes=14))
    kwargs = dict(crops="ten", resize=40, crop=32, batch_size=3, num_workers=0, progress=False)
    np.testing.assert_array_equal(predict_dataset(predictor, dataset, prefetch=True, **kwargs),
                                  predict_dataset(predictor, dataset, prefetch=False, **kwargs))

    def failing():
        yield 1
        raise ValueError("boom at item 2")

    stream = prefetched(failing())
    assert next(stream) == 1
    with pytest.raises(ValueError, match="boom at item 2"):
        next(stream)
    early = prefetched(iter(range(10**6)), depth=2)
    assert [next(early) for _ in range(3)] == [0, 1, 2]
    early.close()  # the thread stops


def test_eval_fp16_is_refused_on_the_cpu(tmp_path, caplog):
    from paddle_chexnet.cli import evaluate

    assert evaluate.entry(["--fp16", "--device", "cpu", "--weights", str(tmp_path / "w.pdparams")]) == 1
    assert "--fp16 runs the network in float16 on a GPU" in error_lines(caplog)[0]


def test_shared_memory_switch_and_the_advice_on_a_loader_crash(data_dir, tmp_path):
    from paddle_chexnet.engine.trainer import _explain_loader_crash, build_datasets, build_loaders

    config = tiny_config(data_dir, tmp_path, num_workers=1, shared_memory=False)
    train, val = build_datasets(config)
    loader, _, _ = build_loaders(config, train, val)
    assert loader.use_shared_memory is False
    assert build_loaders(tiny_config(data_dir, tmp_path, num_workers=1), train, val)[0].use_shared_memory is True
    with pytest.raises(ValueError, match=r"a data-loader process died .*--no-shared-memory, or --num-workers 0"):
        with _explain_loader_crash(tiny_config(data_dir, tmp_path, num_workers=2)):
            raise SystemError("(Fatal) Blocking queue is killed because the data reader raises an exception.")
    with pytest.raises(RuntimeError, match="unrelated"):
        with _explain_loader_crash(tiny_config(data_dir, tmp_path, num_workers=2)):
            raise RuntimeError("unrelated")


def test_to_static_gets_an_input_spec_with_a_free_batch_size(data_dir, tmp_path):
    from paddle_chexnet.engine.trainer import build_model

    config = tiny_config(data_dir, tmp_path, to_static=True)
    model = build_model(DenseNet(**TINY, num_classes=14), config, 14)
    (spec,) = model.network.forward._input_spec
    assert list(spec.shape) == [-1, 3, 32, 32]
    with paddle.no_grad():
        model.network.eval()
        for batch in (4, 3, 1):  # full and short last batches: one program
            model.network(paddle.zeros([batch, 3, 32, 32]))
    assert len(model.network.forward.program_cache) == 1


def test_deterministic_asks_for_the_cudnn_flag(data_dir, tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(paddle, "set_flags", lambda flags: asked.append(flags))
    monkeypatch.delenv("FLAGS_cudnn_deterministic", raising=False)
    run_training(tiny_config(data_dir, tmp_path, epochs=1, deterministic=True))
    assert asked == [{"FLAGS_cudnn_deterministic": True}] and os.environ["FLAGS_cudnn_deterministic"] == "1"

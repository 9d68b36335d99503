"""tools/export_model.py: Paddle Inference and ONNX exports equal the dynamic graph, preprocess.json
reproduces the input, refusals, --verify catching a broken graph, and the INT8 check."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from conftest import write_weights as conftest_write_weights
from PIL import Image

from paddle_chexnet.cli.export_model import entry
from paddle_chexnet.data.images import read_xray
from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.data.transforms import EvalTransform
from paddle_chexnet.inference import bundle
from paddle_chexnet.inference.bundle import ExportCheckError, ExportOptions, export_bundle
from paddle_chexnet.inference.onnx_export import OnnxPredictor, onnx_opset
from paddle_chexnet.inference.predictors import DygraphPredictor, InferencePredictor
from paddle_chexnet.inference.preprocess import apply_preprocess, read_preprocess
from paddle_chexnet.models.loading import load_network

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("paddle2onnx")

CROP, RESIZE = 64, 73
THRESHOLDS = {name: round(0.1 + 0.05 * i, 2) for i, name in enumerate(CLASS_NAMES)}


def write_weights(folder: Path, arch: str = "tiny", seed: int = 0, thresholds: dict | None = None) -> Path:
    """A seeded network with non-trivial BatchNorm statistics, saved with its sidecar."""
    changes = {} if thresholds is None else {"thresholds": thresholds, "threshold_rule": "youden"}
    return conftest_write_weights(folder, arch, seed, **changes)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return write_weights(tmp_path_factory.mktemp("weights"), thresholds=THRESHOLDS)


@pytest.fixture(scope="module")
def exported(weights, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "tiny"
    export_bundle(weights, out, ExportOptions(crop=CROP, resize=RESIZE), report=lambda text: None)
    return out


def _inputs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, CROP, CROP)).astype(np.float32)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_export_folder_layout(exported):
    assert sorted(p.name for p in exported.iterdir()) == [
        "model.json", "model.onnx", "model.pdiparams", "preprocess.json", "verification.txt"]
    assert not _leftovers(exported.parent)
    report = (exported / "verification.txt").read_text()
    assert report.count(" ok") == 2 and "FAILED" not in report


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_onnx_and_paddle_inference_equal_the_dygraph(weights, exported, batch):
    reference = DygraphPredictor(load_network(weights))
    x = _inputs(batch, seed=batch)
    expected = reference(x)
    onnx_probs = OnnxPredictor(exported / "model.onnx", num_threads=1)(x)
    paddle_probs = InferencePredictor(exported / "model", num_threads=1)(x)
    assert onnx_probs.shape == (batch, 14) and onnx_probs.dtype == np.float32
    np.testing.assert_allclose(onnx_probs, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(paddle_probs, expected, rtol=0, atol=1e-5)


def test_onnx_graph_ends_with_the_sigmoid_and_has_a_dynamic_batch(exported):
    model = onnx.load(str(exported / "model.onnx"))
    assert onnx_opset(exported / "model.onnx") == 13
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "image" and out.name == "probabilities"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["N", 3, CROP, CROP]
    assert [n for n in model.graph.node if "probabilities" in n.output][0].op_type == "Sigmoid"


def test_preprocess_json_states_the_model(exported):
    record = read_preprocess(exported)
    assert record["class_names"] == list(CLASS_NAMES)
    assert record["thresholds"] == THRESHOLDS and record["threshold_rule"] == "youden"
    assert record["input"] == {"name": "image", "shape": ["N", 3, CROP, CROP], "dtype": "float32",
                               "layout": "NCHW", "batch": "dynamic"}
    assert record["output"]["name"] == "probabilities"
    assert record["onnx_opset"] == 13
    assert record["files"]["onnx"] == "model.onnx" and record["files"]["paddle_model"] == "model.json"
    session = OnnxPredictor(exported / "model.onnx").session
    assert session.get_inputs()[0].name == record["input"]["name"]
    assert session.get_outputs()[0].name == record["output"]["name"]


def _by_hand(record: dict, path: Path) -> np.ndarray:
    """preprocess.json applied with PIL and NumPy only, written from the file's words."""
    steps = record["preprocess"]
    with Image.open(path) as image:
        image.load()
        image = image.convert("RGB")  # channel order RGB, gray replicated
    width, height = image.size
    shorter = steps["resize"]["shorter_side"]
    if width <= height:
        size = (shorter, int(shorter * height / width))
    else:
        size = (int(shorter * width / height), shorter)
    if size != (width, height):
        image = image.resize(size, Image.BILINEAR)
    x = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
    x = (x - np.array(steps["mean"], np.float32)[:, None, None]) / np.array(steps["std"], np.float32)[:, None, None]
    crop = steps["crop"]["size"]
    top, left = int(round((x.shape[1] - crop) / 2.0)), int(round((x.shape[2] - crop) / 2.0))
    return x[None, :, top:top + crop, left:left + crop]


@pytest.mark.parametrize("size,mode", [((300, 200), "L"), ((180, 260), "RGB"), ((RESIZE, RESIZE), "L")])
def test_preprocess_json_reproduces_the_package_input(exported, tmp_path, size, mode):
    rng = np.random.default_rng(sum(size))
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    path = tmp_path / f"x_{mode}.png"
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode=mode).save(path)
    record = read_preprocess(exported)
    package = EvalTransform("center", RESIZE, CROP)(read_xray(path))[None]
    np.testing.assert_array_equal(_by_hand(record, path), package)
    np.testing.assert_array_equal(apply_preprocess(record, read_xray(path)), package)


def _run(argv) -> int:
    return entry([str(a) for a in argv])


def test_refuses_a_finished_folder_without_overwrite(weights, exported, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in exported.iterdir()}
    assert _run(["--weights", weights, "--output-dir", exported, "--crop", CROP, "--resize", RESIZE]) == 1
    assert {p.name: p.stat().st_mtime_ns for p in exported.iterdir()} == before
    out = tmp_path / "again"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert _run(["--weights", weights, "--output-dir", out, "--crop", CROP, "--resize", RESIZE, "--format", "onnx",
                 "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "preprocess.json", "verification.txt"]
    assert not _leftovers(tmp_path)


@pytest.mark.parametrize("extra", [
    ["--quantize", "int8", "--format", "paddle"],
    ["--crop", "300"],
    ["--labels", "labels.txt"],
    ["--images", "no/such/folder"],
    ["--atol", "0"],
    ["--int8-weight-bits", "8"],  # without --quantize int8
])
def test_refusals_exit_1_and_write_nothing(weights, tmp_path, extra):
    out = tmp_path / "out"
    assert _run(["--weights", weights, "--output-dir", out, *extra]) == 1
    assert not out.exists() and not _leftovers(tmp_path)


def test_missing_weights_exit_1(tmp_path):
    assert _run(["--weights", tmp_path / "none.pdparams", "--output-dir", tmp_path / "out"]) == 1
    assert not (tmp_path / "out").exists()


def test_verify_catches_a_broken_paddle_graph(weights, tmp_path, monkeypatch):
    real_export = bundle.export_model

    def broken(net, prefix, crop=224):
        with paddle.no_grad():
            net.classifier.bias.set_value(net.classifier.bias + 0.01)  # a graph that is not the network
        try:
            return real_export(net, prefix, crop)
        finally:
            with paddle.no_grad():
                net.classifier.bias.set_value(net.classifier.bias - 0.01)

    monkeypatch.setattr(bundle, "export_model", broken)
    out = tmp_path / "broken"
    assert _run(["--weights", weights, "--output-dir", out, "--crop", CROP, "--resize", RESIZE]) == 1
    assert not out.exists() and not _leftovers(tmp_path)
    # the same broken export passes when the check is switched off: it is the check that refused it
    assert _run(["--weights", weights, "--output-dir", out, "--crop", CROP, "--resize", RESIZE, "--no-verify"]) == 0


def test_verify_catches_a_broken_onnx_graph(weights, tmp_path, monkeypatch):
    from onnx import numpy_helper

    from paddle_chexnet.inference import onnx_export

    real = onnx_export.finish_onnx_model

    def perturbed(model):
        model = real(model)  # then shift the logits by 0.01 before the sigmoid: a graph that is not the network
        graph = model.graph
        sigmoid = next(n for n in graph.node if n.op_type == "Sigmoid")
        graph.initializer.append(numpy_helper.from_array(np.array([0.01], np.float32), "shift"))
        graph.node.insert(list(graph.node).index(sigmoid),
                          onnx.helper.make_node("Add", [sigmoid.input[0], "shift"], ["shifted"]))
        sigmoid.input[0] = "shifted"
        return model

    monkeypatch.setattr(onnx_export, "finish_onnx_model", perturbed)
    with pytest.raises(ExportCheckError, match="ONNX Runtime differs"):
        export_bundle(weights, tmp_path / "x", ExportOptions(format="onnx", crop=CROP, resize=RESIZE),
                      report=lambda text: None)
    assert not (tmp_path / "x").exists() and not _leftovers(tmp_path)


def test_int8_check_runs_and_writes_the_model_when_it_passes(weights, tmp_path):
    pytest.importorskip("onnxruntime.quantization")
    out = tmp_path / "int8"
    result = export_bundle(weights, out, ExportOptions(format="onnx", crop=CROP, resize=RESIZE, quantize="int8",
                                                       calibration_count=16, auroc_bound=0.5),
                           report=lambda text: None)
    q = result.quantization
    assert q.passed and q.scored == 14 and 0 < q.max_prob_diff < 0.2
    assert (out / "model.int8.onnx").is_file()
    model = onnx.load(str(out / "model.int8.onnx"))
    assert any(n.op_type == "QLinearConv" for n in model.graph.node)
    record = read_preprocess(out)
    assert record["files"]["onnx_int8"] == "model.int8.onnx"
    assert record["quantization"]["check"]["passed"] is True
    # the report's figures are those of the written models
    batch = bundle.generated_inputs(200, CROP, RESIZE, seed=2).batch
    p8 = OnnxPredictor(out / "model.int8.onnx")(batch)
    p32 = OnnxPredictor(out / "model.onnx")(batch)
    assert float(np.abs(p8 - p32).max()) == pytest.approx(q.max_prob_diff, rel=1e-6)


def test_a_failing_int8_check_writes_nothing(weights, tmp_path):
    pytest.importorskip("onnxruntime.quantization")
    out = tmp_path / "int8"
    code = _run(["--weights", weights, "--output-dir", out, "--crop", CROP, "--resize", RESIZE, "--format", "onnx",
                 "--quantize", "int8", "--calibration-count", "8", "--int8-auroc-bound", "1e-9"])
    assert code == 1
    assert not out.exists() and not _leftovers(tmp_path)


def test_real_images_are_verified_too(weights, tmp_path, sample_dir):
    result = export_bundle(weights, tmp_path / "real", ExportOptions(
        crop=CROP, resize=RESIZE, images=sample_dir / "images", labels=sample_dir / "labels" / "sample_list.txt",
        limit=6), report=lambda text: None)
    real = [r for r in result.rows if r.inputs == "real"]
    assert [r.images for r in real] == [6, 6] and all(r.ok for r in real)


def test_the_script_runs_as_a_user_would(weights, tmp_path):
    from conftest import REPO_ROOT, cli_env

    out = tmp_path / "exported" / "demo"  # as in the README: neither folder exists yet
    done = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "export_model.py"), "--weights", str(weights),
                           "--output-dir", str(out), "--crop", str(CROP), "--resize", str(RESIZE)],
                          capture_output=True, text=True, env=cli_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Paddle Inference (oneDNN)" in done.stdout and "ONNX Runtime" in done.stdout
    assert (out / "model.onnx").is_file()
    again = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "export_model.py"), "--weights", str(weights),
                            "--output-dir", str(out)], capture_output=True, text=True, env=cli_env(), timeout=300)
    assert again.returncode == 1 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.slow
def test_densenet121_export_equals_the_dygraph(tmp_path):
    weights = write_weights(tmp_path / "w", "densenet121")
    result = export_bundle(weights, tmp_path / "d121", ExportOptions(crop=224), report=lambda text: None)
    assert all(row.ok for row in result.rows) and len(result.rows) == 2

"""eval.py end to end (generated images and the real sample), the batch loader, outputs, and the split tool."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from conftest import cli_env, seeded_network
from conftest import make_test_images as _make_dataset
from PIL import Image
from sklearn.metrics import roc_auc_score

from paddle_chexnet.cli import evaluate as eval_script  # what eval.py runs
from paddle_chexnet.cli import make_label_lists
from paddle_chexnet.data.datasets import ChestXray14Dataset
from paddle_chexnet.data.images import read_xray
from paddle_chexnet.data.label_lists import read_label_list
from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.data.transforms import EvalTransform
from paddle_chexnet.evaluation.evaluate import evaluate, iterate_batches
from paddle_chexnet.inference.predictors import DygraphPredictor, InferencePredictor
from paddle_chexnet.models.densenet import chexnet
from paddle_chexnet.utils.io import atomic_paddle_save

REPO = Path(__file__).resolve().parents[1]
C = len(CLASS_NAMES)




@pytest.mark.parametrize("crops", ["ten", "center"])
@pytest.mark.parametrize("num_workers", [0, 1])
def test_batches_equal_eval_transform(tmp_path, crops, num_workers):
    images, labels = _make_dataset(tmp_path, n=5)
    ds = ChestXray14Dataset(images, labels)
    transform = EvalTransform(crops, 40, 32)
    expected = np.stack([transform(read_xray(p)) for p in ds.paths]).reshape(-1, 3, 32, 32)
    got = list(iterate_batches(ds.paths, 2, crops, 40, 32, num_workers=num_workers))
    k = 10 if crops == "ten" else 1
    assert [len(b) for b in got] == [2 * k, 2 * k, k]
    np.testing.assert_array_equal(np.concatenate(got), expected)


def test_loader_error_names_the_file(tmp_path):
    images, labels = _make_dataset(tmp_path, n=4, nested=False)
    bad = images / "00000002_000.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    with pytest.raises(OSError, match="00000002_000.png"):
        list(iterate_batches(sorted(images.iterdir()), 2, "ten", 40, 32, num_workers=1))


def test_evaluate_tiny_writes_outputs(tmp_path):
    images, labels = _make_dataset(tmp_path, n=10)
    ds = ChestXray14Dataset(images, labels)
    net = seeded_network()
    predictor = DygraphPredictor(net)
    result = evaluate(predictor, ds, tmp_path / "out", crops="ten", resize=40, crop=32, batch_size=3,
                      num_workers=0, progress=False)
    # Ten-crop: the mean of the ten crops' probabilities, image by image.
    transform = EvalTransform("ten", 40, 32)
    for i in (0, 1, 9):
        expected = predictor(transform(read_xray(ds.paths[i]))).mean(axis=0)
        np.testing.assert_allclose(result.probs[i], expected, rtol=0, atol=1e-6)
    out = tmp_path / "out"
    with open(out / "preds.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["Image Index", *CLASS_NAMES]
    assert [r[0] for r in rows[1:]] == ds.names
    preds = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_allclose(preds, result.probs, rtol=1e-6, atol=1e-7)
    with open(out / "aucs.csv", newline="") as fh:
        aucs = list(csv.reader(fh))
    # evaluate() alone computes no interval: its cells are empty (eval.py's statistics fill them)
    assert aucs[0] == ["label", "auc", "ci_low", "ci_high"] and [r[0] for r in aucs[1:]] == [*CLASS_NAMES, "Mean"]
    for c, (_, value, low, high) in enumerate(aucs[1:-1]):
        assert float(value) == pytest.approx(roc_auc_score(ds.labels[:, c], result.probs[:, c]), abs=1e-6)
        assert low == high == ""
    assert float(aucs[-1][1]) == pytest.approx(result.mean, abs=1e-6)
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["classes_in_mean"] == C and summary["images"] == 10
    assert summary["mean_auroc"] == pytest.approx(result.mean)
    with Image.open(out / "roc_curves.png") as png:
        assert png.format == "PNG" and png.size[0] > 500
    assert "The average AUROC is" in result.table() and "Hernia" in result.table()


def test_parallel_processes_match_single_process(tmp_path):
    images, labels = _make_dataset(tmp_path, n=7, nested=False)
    ds = ChestXray14Dataset(images, labels)
    net = seeded_network(seed=1)
    fast = InferencePredictor.from_network(net, tmp_path / "export", crop=32, num_threads=2)
    common = dict(crops="ten", resize=40, crop=32, batch_size=2, progress=False, plot=False)
    one = evaluate(fast, ds, num_workers=0, **common)
    two = evaluate(fast, ds, processes=2, **common)
    np.testing.assert_allclose(two.probs, one.probs, rtol=0, atol=1e-6)
    slow = evaluate(DygraphPredictor(net), ds, num_workers=0, **common)
    np.testing.assert_allclose(one.probs, slow.probs, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="needs the Paddle Inference backend"):
        evaluate(DygraphPredictor(net), ds, processes=2, **common)


def test_evaluate_one_valued_class_nan(tmp_path):
    images, labels = _make_dataset(tmp_path, n=6, nested=False)
    ll = read_label_list(labels)
    ll.labels[:, 3] = 0  # Infiltration: no positives
    ds = ChestXray14Dataset(images, ll)
    with pytest.warns(UserWarning, match="Infiltration"):
        result = evaluate(DygraphPredictor(seeded_network()), ds, tmp_path / "out", crops="center", resize=40, crop=32,
                          num_workers=0, progress=False)
    assert np.isnan(result.per_class["Infiltration"]) and result.n_used == C - 1
    assert "over 13 of 14 classes" in result.table()
    assert "Infiltration,nan" in (tmp_path / "out" / "aucs.csv").read_text()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    paddle.seed(5)
    path = tmp_path_factory.mktemp("w") / "chexnet.pdparams"
    atomic_paddle_save(chexnet().state_dict(), path)
    return path


def _run_eval(*argv: str):
    return eval_script.run(eval_script.get_args_parser().parse_args(list(argv)))


def test_eval_script_end_to_end_both_backends_agree(tmp_path, weights):
    _make_dataset(tmp_path / "ChestX-ray14", n=8)
    common = ["--data-dir", str(tmp_path / "ChestX-ray14"), "--weights", str(weights), "--resize", "40",
              "--crop", "32", "--batch-size", "3", "--no-progress", "--device", "cpu"]
    fast = _run_eval(*common, "--output-dir", str(tmp_path / "fast"), "--cache-dir", str(tmp_path / "cache"),
                     "--num-workers", "1")
    slow = _run_eval(*common, "--output_dir", str(tmp_path / "slow"), "--backend", "dygraph", "--num_workers", "0",
                     "--no-plot")
    assert fast.backend == "inference" and slow.backend == "dygraph"
    np.testing.assert_allclose(fast.probs, slow.probs, rtol=0, atol=1e-5)
    assert (tmp_path / "fast" / "roc_curves.png").is_file() and not (tmp_path / "slow" / "roc_curves.png").exists()
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_eval_script_skip_missing_and_errors(tmp_path, weights):
    images, labels = _make_dataset(tmp_path / "d", n=6, nested=False)
    (images / "00000004_000.png").unlink()
    common = ["--data-dir", str(tmp_path / "d"), "--weights", str(weights), "--resize", "40", "--crop", "32",
              "--no-progress", "--crops", "center", "--backend", "dygraph", "--num-workers", "0", "--no-plot"]
    with pytest.raises(FileNotFoundError, match=r"1 of 6 images .*00000004_000.png.*--skip-missing"):
        _run_eval(*common, "--output-dir", str(tmp_path / "o"))
    result = _run_eval(*common, "--output-dir", str(tmp_path / "o"), "--skip-missing")
    assert result.skipped == [f"00000004_000.png\tmissing under {images}"] and len(result.names) == 5
    assert (tmp_path / "o" / "skipped.txt").read_text() == f"00000004_000.png\tmissing under {images}\n"
    with pytest.raises(FileNotFoundError, match="convert_torch.py"):
        _run_eval(*common, "--output-dir", str(tmp_path / "o"), "--weights", str(tmp_path / "none.pdparams"))
    with pytest.raises(FileNotFoundError, match="label list not found"):
        _run_eval(*common, "--label-list", str(tmp_path / "nope.txt"))
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        _run_eval(*common, "--image-dir", str(tmp_path / "nowhere"))


def test_eval_script_command_line_reports_errors(tmp_path):
    """Run as a program: a bad label list is one clear line on stderr and exit code 1, not a traceback."""
    import subprocess

    _make_dataset(tmp_path / "d", n=2, nested=False)
    bad = tmp_path / "bad.txt"
    bad.write_text("00000000_000.png 0 1\n")
    (tmp_path / "x.pdparams").write_bytes(b"never read: the label list fails first")
    proc = subprocess.run([sys.executable, str(REPO / "eval.py"), "--data_dir", str(tmp_path / "d"),
                           "--label_list", str(bad), "--weights", "x.pdparams"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=cli_env())
    assert proc.returncode == 1
    assert "bad.txt line 1: expected 14 values after the image name, got 2" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_defaults_follow_the_layout():
    args = eval_script.get_args_parser().parse_args([])
    assert args.weights == "pretrained_models/chexnet.pdparams" and args.data_dir == "ChestX-ray14"
    assert args.output_dir == "outputs/eval" and args.crops == "ten" and args.backend == "auto"
    assert args.label_list is None  # DATA_DIR/labels/test_list.txt


# 6 images: rare findings absent
@pytest.mark.filterwarnings("ignore::paddle_chexnet.evaluation.metrics.UndefinedAUROCWarning")
def test_real_sample_center_crop_subset(tmp_path, sample_dir, weights):
    """The real PNGs (incl. the RGBA one) through eval.py: 6 images, center crop, both backends agree."""
    names = sorted(p.name for p in (sample_dir / "images").glob("*.png"))
    rgba = [n for n in names if Image.open(sample_dir / "images" / n).mode == "RGBA"]
    full = read_label_list(sample_dir / "labels" / "sample_list.txt")
    subset = rgba + [n for n in full.names if n not in rgba][:5]
    lines = [f"{n} {' '.join(str(int(v)) for v in full.subset([n]).labels[0])}" for n in subset]
    (tmp_path / "subset.txt").write_text("\n".join(lines) + "\n")
    common = ["--data-dir", str(sample_dir), "--label-list", str(tmp_path / "subset.txt"), "--weights", str(weights),
              "--crops", "center", "--no-progress", "--device", "cpu", "--no-plot"]
    fast = _run_eval(*common, "--output-dir", str(tmp_path / "f"), "--cache-dir", str(tmp_path / "cache"))
    slow = _run_eval(*common, "--output-dir", str(tmp_path / "s"), "--backend", "dygraph", "--num-workers", "0")
    assert fast.names == subset
    np.testing.assert_allclose(fast.probs, slow.probs, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_real_sample_ten_crop_all_200(tmp_path, sample_dir, weights):
    result = _run_eval("--data-dir", str(sample_dir), "--label-list", str(sample_dir / "labels" / "sample_list.txt"),
                       "--weights", str(weights), "--output-dir", str(tmp_path / "o"), "--no-progress",
                       "--cache-dir", str(tmp_path / "cache"))
    assert len(result.names) == 200 and result.n_used == C
    for c, name in enumerate(CLASS_NAMES):
        assert result.per_class[name] == pytest.approx(roc_auc_score(result.labels[:, c], result.probs[:, c]))


# ------------------------------------------------------------------ tools/make_label_lists.py


def test_make_label_lists_generated(tmp_path, capsys):
    header = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
    rows, names = [], []
    for p in range(1, 31):
        for k in range(p % 3 + 1):
            name = f"{p:08d}_{k:03d}.png"
            rows.append(f"{name},{'No Finding' if (p + k) % 2 else 'Mass|Hernia'},{k},{p},40,F,PA\n")
            names.append(name)
    (tmp_path / "Data_Entry_2017.csv").write_text(header + "".join(rows))
    test = [n for n in names if int(n[:8]) > 25]
    (tmp_path / "train_val_list.txt").write_text("\n".join(n for n in names if n not in test) + "\n")
    (tmp_path / "test_list.txt").write_text("\n".join(test) + "\n")
    args = make_label_lists.get_args_parser().parse_args([
        "--data_entry", str(tmp_path / "Data_Entry_2017.csv"), "--train-val-list", str(tmp_path / "train_val_list.txt"),
        "--test-list", str(tmp_path / "test_list.txt"), "--output-dir", str(tmp_path / "labels"),
        "--val-fraction", "0.2", "--seed", "3",
    ])
    assert make_label_lists.main(args) == 0
    lists = {k: read_label_list(tmp_path / "labels" / f"{k}_list.txt") for k in ("train", "val", "test")}
    assert lists["test"].names == test
    patients = {k: {n[:8] for n in v.names} for k, v in lists.items()}
    assert not patients["train"] & patients["val"] and not patients["val"] & patients["test"]
    mass = CLASS_NAMES.index("Mass")
    for ll in lists.values():
        for name, row in zip(ll.names, ll.labels):
            p, k = int(name[:8]), int(name[9:12])
            assert row[mass] == (0 if (p + k) % 2 else 1)
    printed = capsys.readouterr().out
    assert f"test   {len(test):>7}" in printed and "val" in printed


def test_make_label_lists_real_meta(tmp_path, meta_dir):
    args = make_label_lists.get_args_parser().parse_args([
        "--data-entry", str(meta_dir / "Data_Entry_2017_v2020.csv.gz"),
        "--train-val-list", str(meta_dir / "train_val_list.txt"), "--test-list", str(meta_dir / "test_list.txt"),
        "--output-dir", str(tmp_path),
    ])
    assert make_label_lists.main(args) == 0
    sizes = {k: len(read_label_list(tmp_path / f"{k}_list.txt")) for k in ("train", "val", "test")}
    assert sizes["test"] == 25596 and sizes["train"] + sizes["val"] == 86524


@pytest.mark.parametrize("processes", ["1", "2"])
def test_eval_script_exits_cleanly_with_worker_processes(tmp_path, weights, processes):
    """Stopping the loader/inference worker processes at the end of a run prints no Paddle fatal-signal report."""
    import subprocess

    _make_dataset(tmp_path / "d", n=4, nested=False)
    proc = subprocess.run([sys.executable, str(REPO / "eval.py"), "--data-dir", str(tmp_path / "d"),
                           "--weights", str(weights), "--resize", "40", "--crop", "32", "--crops", "center",
                           "--num-workers", "1", "--processes", processes, "--no-progress", "--no-plot",
                           "--output-dir", str(tmp_path / "out")], env=cli_env(),
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "FatalError" not in proc.stderr and "SIGTERM" not in proc.stderr

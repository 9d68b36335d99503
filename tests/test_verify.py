"""--verify: a full DenseNet-121 converted from arnoweng/jrzech-format files matches torchvision's.

The fixtures are built here with torchvision, seeded. Random weights give
near-constant outputs, so the BatchNorm statistics are first set by a
train-mode pass (cumulative averages) over real sample images, or generated
ones when ../shared/data is absent.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_DIR
from PIL import Image

from paddle_chexnet.conversion.layouts import convert_state_dict
from paddle_chexnet.conversion.readers import read_checkpoint
from paddle_chexnet.conversion.verify import (
    AUROC_BOUND,
    PROB_BOUND,
    RANDOM_BOUND,
    VerifyError,
    VerifyResult,
    random_images,
    verify_conversion,
)
from paddle_chexnet.data.images import read_xray
from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.data.transforms import EvalTransform

REPO_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.torch


def _load_tool():
    """The command behind tools/convert_torch.py."""
    from paddle_chexnet.cli import convert_torch

    return convert_torch


def _write_generated_xrays(folder: Path, count: int, seed: int) -> list[Path]:
    """Smooth random gray PNGs (one RGBA, as in NIH's set), non-square like real scans."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        grid = Image.fromarray(rng.integers(0, 256, (12, 10), dtype=np.uint8), mode="L")
        image = grid.resize((260, 300), Image.BILINEAR)
        if i == 0:
            image = image.convert("RGBA")
        path = folder / f"gen_{i:03d}.png"
        image.save(path)
        paths.append(path)
    return paths


def _calibration_batch() -> np.ndarray:
    """8 images at 128 px: real sample images when present, else generated ones."""
    if (SAMPLE_DIR / "images").is_dir():
        paths = sorted((SAMPLE_DIR / "images").glob("*.png"))[:8]
    else:
        import tempfile

        paths = _write_generated_xrays(Path(tempfile.mkdtemp()), 8, seed=11)
    transform = EvalTransform("center", resize=146, crop=128)
    return np.stack([transform(read_xray(p)) for p in paths])


@pytest.fixture(scope="session")
def calibrated_model():
    """A seeded torchvision DenseNet-121 (14 classes) whose BatchNorm statistics come from images."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None, num_classes=len(CLASS_NAMES))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average: one pass gives the batch statistics
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(_calibration_batch()))
    return model.eval()


@pytest.fixture(scope="session")
def arnoweng_file(calibrated_model, tmp_path_factory) -> Path:
    """arnoweng/CheXNet's model.pth.tar layout: legacy names, DataParallel+CheXNet prefix, old serialization."""
    import torch

    state = {}
    for key, value in calibrated_model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        key = re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key)
        state["module.densenet121." + key.replace("classifier.", "classifier.0.")] = value
    path = tmp_path_factory.mktemp("arnoweng") / "model.pth.tar"
    torch.save({"epoch": 7, "arch": "densenet121", "state_dict": state, "best_loss": 0.15}, path,
               _use_new_zipfile_serialization=False)
    return path


@pytest.fixture(scope="session")
def arnoweng_conversion(arnoweng_file):
    checkpoint = read_checkpoint(arnoweng_file)
    return checkpoint, convert_state_dict(checkpoint.state, source=str(arnoweng_file))


def _covering_subset(label_path: Path, count: int) -> tuple[list[str], np.ndarray]:
    """``count`` rows that give as many classes as possible a positive (first ones, greedily)."""
    from paddle_chexnet.data.label_lists import read_label_list

    labels = read_label_list(label_path)
    chosen: list[int] = []
    for c in range(labels.labels.shape[1]):
        if len(chosen) < count and not any(labels.labels[i, c] == 1 for i in chosen):
            chosen.append(int(np.flatnonzero(labels.labels[:, c] == 1)[0]))
    for i in range(len(labels)):
        if len(chosen) >= count:
            break
        if i not in chosen:
            chosen.append(i)
    chosen = sorted(set(chosen))
    return [labels.names[i] for i in chosen], labels.labels[chosen]


def _assert_within_bounds(result: VerifyResult, min_defined: int) -> None:
    assert result.random_max_diff <= RANDOM_BOUND
    assert float(np.max(result.image_max_diff)) <= PROB_BOUND
    defined = ~np.isnan(result.auroc_reference)
    assert int(defined.sum()) >= min_defined
    np.testing.assert_array_equal(np.isnan(result.auroc_converted), ~defined)
    assert float(np.max(result.auroc_diff[defined])) <= AUROC_BOUND
    assert result.passed


@pytest.mark.shared_data
def test_arnoweng_checkpoint_matches_torchvision_on_real_images(arnoweng_conversion, sample_dir):
    checkpoint, conversion = arnoweng_conversion
    assert conversion.format == "arnoweng"
    # 8 images (80 crops per framework) keep this under a minute; all 200 run in the slow test below
    names, labels = _covering_subset(sample_dir / "labels" / "sample_list.txt", 8)
    paths = [sample_dir / "images" / n for n in names]
    result = verify_conversion(conversion.format, checkpoint.state, conversion.state, paths, labels, num_random=4)
    _assert_within_bounds(result, min_defined=12)
    # the outputs vary across images (a near-constant model would make the AUROC check vacuous)
    assert "AUROC ref" in result.table() and "PASSED" in result.table()


def test_cli_verify_on_generated_images(arnoweng_file, tmp_path, capsys):
    paths = _write_generated_xrays(tmp_path / "images", 2, seed=3)
    rng = np.random.default_rng(3)
    labels = np.zeros((2, len(CLASS_NAMES)), dtype=int)
    labels[0] = 1  # every class: one positive, one negative (AUROC 0 or 1, defined everywhere)
    labels = rng.permuted(labels, axis=0)
    label_path = tmp_path / "labels.txt"
    label_path.write_text("".join(f"{p.name} {' '.join(map(str, row))}\n" for p, row in zip(paths, labels)))
    tool = _load_tool()
    args = tool.get_args_parser().parse_args([
        str(arnoweng_file), "-o", str(tmp_path / "out" / "model.pdparams"), "--verify",
        "--images", str(tmp_path / "images"), "--labels", str(label_path), "--num-random", "2",
    ])
    assert tool.main(args) == 0
    printed = capsys.readouterr().out
    assert "real images (2," in printed and "over 14 classes" in printed and "PASSED" in printed
    rows = [line for line in printed.splitlines() if line.strip().startswith(CLASS_NAMES)]
    assert len(rows) == len(CLASS_NAMES)


def test_verify_catches_a_wrong_weight(arnoweng_conversion, arnoweng_file, tmp_path, monkeypatch, capsys):
    checkpoint, conversion = arnoweng_conversion
    broken = dict(conversion.state)
    broken["classifier.bias"] = broken["classifier.bias"] + np.float32(1e-3)  # a small, wrong head
    result = verify_conversion(conversion.format, checkpoint.state, broken, num_random=2)
    assert not result.passed and "random inputs" in result.failures()[0]
    # and the command line exits 1 on it
    tool = _load_tool()
    real_convert = tool.convert_state_dict

    def convert_with_a_bug(*args, **kwargs):
        converted = real_convert(*args, **kwargs)
        converted.state["features.norm5._variance"] = converted.state["features.norm5._variance"] * 1.01
        return converted

    monkeypatch.setattr(tool, "convert_state_dict", convert_with_a_bug)
    args = tool.get_args_parser().parse_args(
        [str(arnoweng_file), "-o", str(tmp_path / "m.pdparams"), "--verify", "--num-random", "2"]
    )
    assert tool.main(args) == 1
    assert "FAILED" in capsys.readouterr().out


def test_jrzech_checkpoint_needs_trust_pickle_then_verifies(calibrated_model, tmp_path, caplog, capsys):
    import copy

    import torch

    model = copy.deepcopy(calibrated_model)
    model.classifier = torch.nn.Sequential(model.classifier, torch.nn.Sigmoid())
    src = tmp_path / "checkpoint"
    torch.save({"model": model, "best_loss": 0.16, "epoch": 9, "rng_state": torch.get_rng_state(), "LR": 1e-4}, src)
    tool = _load_tool()
    out = tmp_path / "jrzech.pdparams"
    assert tool.main(tool.get_args_parser().parse_args([str(src), "-o", str(out)])) == 2
    assert "--trust-pickle" in caplog.text and not out.exists()
    args = tool.get_args_parser().parse_args(
        [str(src), "-o", str(out), "--trust-pickle", "--verify", "--num-random", "4"]
    )
    assert tool.main(args) == 0
    assert "PASSED" in capsys.readouterr().out and out.exists()


def test_paddle_vision_checkpoint_verifies_against_paddle_vision():
    import paddle
    from paddle.vision.models import densenet121 as paddle_densenet121

    paddle.seed(6)
    reference = paddle_densenet121(num_classes=14)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    conversion = convert_state_dict(state)
    result = verify_conversion(conversion.format, state, conversion.state, num_random=2)
    assert "paddle.vision" in result.reference
    assert result.random_max_diff <= RANDOM_BOUND and result.passed


def test_verify_refuses_what_it_cannot_check():
    import paddle

    from paddle_chexnet import chexnet

    state = {k: v.numpy() for k, v in chexnet().state_dict().items()}
    with pytest.raises(VerifyError, match="already in this package's layout"):
        verify_conversion("paddle_chexnet", state, state, num_random=1)
    backbone = {k: v for k, v in state.items() if not k.startswith("classifier")}
    with pytest.raises(VerifyError, match="--head keep"):
        verify_conversion("torchvision", state, backbone, num_random=1)
    assert paddle.get_device()  # paddle stays usable after the refusals


def test_result_bounds_and_table():
    names = ("a", "b", "c")
    result = VerifyResult("ref", names, 2e-6, 4, 5, np.array([1e-6, 2e-5, 3e-6]),
                          np.array([0.7, np.nan, 0.5]), np.array([0.7, np.nan, 0.5]))
    assert result.passed and "PASSED" in result.table()
    result.auroc_converted = np.array([0.7, np.nan, 0.5002])
    assert result.failures() == ["real images: c AUROC differs by 0.0002 > 0.0001"]
    result.auroc_converted = np.array([0.7, 0.5, 0.5])  # defined on one side only
    assert len(result.failures()) == 1 and "b AUROC" in result.failures()[0]
    result.auroc_converted = result.auroc_reference.copy()
    result.image_max_diff = np.array([1e-6, 2e-4, 0.0])
    assert result.failures() == ["real images: max |prob diff| 0.0002 > 0.0001"]
    result.random_max_diff = float("nan")
    assert "random inputs" in result.failures()[0] and "FAILED" in result.table()


def test_random_images_are_seeded_smooth_and_normalised():
    first, again, other = random_images(2, seed=1), random_images(2, seed=1), random_images(2, seed=2)
    assert first.shape == (2, 3, 224, 224) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.abs(np.diff(first[0, 0], axis=1)).max() < 0.5  # smooth: neighbours differ by little
    assert -2.2 < first.min() and first.max() < 2.7  # within ImageNet-normalised [0, 1] pixels


@pytest.mark.slow
@pytest.mark.shared_data
def test_arnoweng_checkpoint_matches_torchvision_on_all_200_images(arnoweng_conversion, sample_dir):
    from paddle_chexnet.data.label_lists import read_label_list

    checkpoint, conversion = arnoweng_conversion
    labels = read_label_list(sample_dir / "labels" / "sample_list.txt")
    paths = [sample_dir / "images" / n for n in labels.names]
    result = verify_conversion(conversion.format, checkpoint.state, conversion.state, paths, labels.labels,
                               batch_size=8)
    assert result.num_images == 200
    _assert_within_bounds(result, min_defined=len(CLASS_NAMES))

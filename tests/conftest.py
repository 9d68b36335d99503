"""Shared fixtures: the real sample beside the checkout, and small generated images."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paddle_chexnet.data.labels import CLASS_NAMES

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CHEXNET_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
SAMPLE_DIR = SHARED_DATA / "chestxray14-sample"
META_DIR = SHARED_DATA / "chestxray14-meta"

# Two threads, like the machines this runs on; keeps timing-sensitive tests stable.
os.environ.setdefault("OMP_NUM_THREADS", "2")

# The test session is an entry point: like the commands, it picks MKL's code path before the first
# matrix product, so that every process of the session (and each child it starts) rounds alike.
from paddle_chexnet.cpu.runtime import use_fast_mkl_on_amd  # noqa: E402

use_fast_mkl_on_amd()


def seeded_network(arch: str = "tiny", num_classes: int = 14, seed: int = 0, **options):
    """A network of the registry with seeded weights and non-trivial BatchNorm statistics.

    Random running means and variances (not 0 and 1), so that a wrong fusion of BatchNorm into a
    convolution, a lost buffer or a swapped mean and variance shows in the outputs.
    """
    import paddle

    from paddle_chexnet.models.registry import build_network

    paddle.seed(seed)
    net = build_network(arch, num_classes, **options)
    for name, value in net.state_dict().items():
        if name.endswith("_mean"):
            value.set_value(paddle.uniform(value.shape, min=-0.2, max=0.2))
        elif name.endswith("_variance"):
            value.set_value(paddle.uniform(value.shape, min=0.5, max=1.5))
    return net


def write_weights(folder: Path, arch: str = "tiny", seed: int = 0, name: str | None = None,
                  extra: dict | None = None, **spec_changes) -> Path:
    """:func:`seeded_network` saved as ``folder/<name or arch>.pdparams`` with its JSON sidecar.

    ``spec_changes`` update the sidecar's spec (``thresholds=...``, ``threshold_rule=...``,
    ``temperatures=...``); ``extra`` adds other keys, as a training checkpoint's JSON has.
    """
    import json

    import paddle

    from paddle_chexnet.models.spec import spec_record

    net = seeded_network(arch, 14, seed)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name or arch}.pdparams"
    paddle.save(net.state_dict(), str(path))
    spec = net.spec.with_updates(**spec_changes) if spec_changes else net.spec
    path.with_suffix(".json").write_text(json.dumps({**(extra or {}), **spec_record(spec)}, indent=1),
                                         encoding="utf-8")
    return path


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for running a command as a user would: this checkout's package first on the path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The 200 real ChestX-ray14 images; skips the test when ../shared/data is absent."""
    if not (SAMPLE_DIR / "images").is_dir():
        pytest.skip(f"real sample not found at {SAMPLE_DIR}")
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def meta_dir() -> Path:
    """NIH's metadata files; skips the test when ../shared/data is absent."""
    if not META_DIR.is_dir():
        pytest.skip(f"ChestX-ray14 metadata not found at {META_DIR}")
    return META_DIR


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def make_split_dataset(root: Path, n_train: int = 12, n_val: int = 8, size: int = 40, seed: int = 0) -> Path:
    """Random gray PNGs and CheXNet label lists; every class has both values in val."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for split, count in (("train", n_train), ("val", n_val)):
        lines = []
        labels = (rng.random((count, len(CLASS_NAMES))) < 0.4).astype(int)
        labels[0], labels[1] = 1, 0  # both values present in every class
        for i in range(count):
            name = f"{split}_{i:03d}.png"
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / "images" / name)
            lines.append(name + " " + " ".join(str(v) for v in labels[i]))
        (root / "labels" / f"{split}_list.txt").write_text("\n".join(lines) + "\n")
    return root


def make_test_images(root: Path, n: int = 12, nested: bool = True, seed: int = 0) -> tuple[Path, Path]:
    """Small gray images (a few in other modes) and a label list where every class has both values."""
    rng = np.random.default_rng(seed)
    images = root / "images"
    names, rows = [], []
    for i in range(n):
        folder = images / (f"images_{i % 3 + 1:03d}" + "/images") if nested else images
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{i:08d}_000.png"
        pixels = rng.integers(0, 256, (44, 48), dtype=np.uint8)
        image = Image.fromarray(pixels, "L")
        if i == 1:
            image = image.convert("RGBA")
        elif i == 2:
            image = Image.fromarray(pixels.astype(np.uint16) * 16)  # 16-bit
        image.save(folder / name)
        names.append(name)
        rows.append([(i + c) % 2 for c in range(len(CLASS_NAMES))])
    labels = root / "labels" / "test_list.txt"
    labels.parent.mkdir(parents=True, exist_ok=True)
    labels.write_text("".join(f"{n} {' '.join(map(str, r))}\n" for n, r in zip(names, rows)))
    return images, labels

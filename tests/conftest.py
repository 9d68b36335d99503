"""Shared fixtures: the real sample beside the checkout, and small generated images."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

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

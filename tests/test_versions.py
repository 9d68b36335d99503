"""The supported PaddlePaddle range: what ``import paddle_chexnet`` says outside it, and exports on this Paddle.

CI runs this file (with the rest of pyproject.toml's ``paddle-version-tests``) on the pinned
Paddle and again on the oldest supported one, in a second virtual environment.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from conftest import REPO_ROOT, cli_env

from paddle_chexnet.inference.export import export_model, model_file
from paddle_chexnet.inference.predictors import DygraphPredictor, InferencePredictor
from paddle_chexnet.models.densenet import TINY, DenseNet
from paddle_chexnet.utils import compat

BLOCK_PADDLE = (
    "import sys\n"
    "class BlockPaddle:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'paddle' or name.startswith('paddle.'):\n"
    "            raise ModuleNotFoundError(f'No module named {name!r} (blocked)', name=name)\n"
    "sys.meta_path.insert(0, BlockPaddle())\n"
)


def _import_package(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code + "import paddle_chexnet\nprint('imported')\n"],
                          capture_output=True, text=True, env=cli_env(**env), timeout=60)


def test_missing_paddle_says_in_one_line_how_to_install_the_cpu_or_gpu_build() -> None:
    out = _import_package(BLOCK_PADDLE)
    assert out.returncode == 1 and "imported" not in out.stdout
    last = out.stderr.strip().splitlines()[-1]
    assert last == f"ModuleNotFoundError: {compat.missing_paddle_message()}"
    assert "\n" not in compat.missing_paddle_message()
    for needed in ('pip install -e ".[cpu]"', "paddlepaddle==3.3.1", "paddlepaddle-gpu", compat.PADDLE_INSTALL_GUIDE,
                   "2.6.2 and 3.0.0 to 3.3.1"):
        assert needed in last


def _fake_site(tmp_path: Path, dist_info: str | None) -> Path:
    """A folder with a ``paddle`` package that fails if imported, and a wheel's metadata folder name."""
    site = tmp_path / "site"
    (site / "paddle").mkdir(parents=True)
    (site / "paddle" / "__init__.py").write_text("raise RuntimeError('paddle was imported')\n")
    if dist_info:
        (site / dist_info).mkdir()
    return site


@pytest.mark.parametrize("dist_info, name", [
    ("paddlepaddle_gpu-2.5.2.dist-info", "paddlepaddle-gpu 2.5.2"),
    ("paddlepaddle-2.6.1.dist-info", "paddlepaddle 2.6.1"),
    ("paddlepaddle_gpu-2.4.2.post117.dist-info", "paddlepaddle-gpu 2.4.2"),
])
def test_a_paddle_older_than_2_6_2_is_refused_in_one_line_naming_the_range(tmp_path, dist_info, name) -> None:
    site = _fake_site(tmp_path, dist_info)
    out = _import_package("", PYTHONPATH=os.pathsep.join([str(site), str(REPO_ROOT)]))
    assert out.returncode == 1, out.stdout + out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: paddle_chexnet supports PaddlePaddle 2.6.2 and 3.0.0 to 3.3.1, but "
                           f"{name} is installed (in {site})")
    assert "paddle was imported" not in out.stderr


@pytest.mark.parametrize("dist_info", [
    "paddlepaddle-2.6.2.dist-info", "paddlepaddle_gpu-3.0.0.dist-info", "paddlepaddle-3.3.1.dist-info",
    "paddlepaddle_gpu-3.4.0.dist-info",  # newer than tested: accepted
    "paddlepaddle_gpu-0.0.0.dist-info",  # a nightly/source build
    None,  # built from source, no metadata
])
def test_a_supported_paddle_is_accepted_without_importing_it(tmp_path, dist_info) -> None:
    site = _fake_site(tmp_path, dist_info)
    out = _import_package("", PYTHONPATH=os.pathsep.join([str(site), str(REPO_ROOT)]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "imported"


def test_paddle_distributions_reads_wheel_folder_names(tmp_path) -> None:
    for name in ["paddlepaddle_gpu-2.6.2.post120.dist-info", "paddlepaddle-3.0.0rc1.dist-info",
                 "paddlenlp-2.8.0.dist-info", "paddle-3.0.0.dist-info", "numpy-2.0.0.dist-info"]:
        (tmp_path / name).mkdir()
    (tmp_path / "paddlepaddle-9.9.9.dist-info").write_text("a file, not a wheel's folder")
    assert compat.paddle_distributions(tmp_path) == [("paddlepaddle", "3.0.0"), ("paddlepaddle_gpu", "2.6.2")]
    assert compat.paddle_distributions(tmp_path / "missing") == []


@pytest.mark.parametrize("text, expected", [("3.3.1", (3, 3, 1)), ("2.6.2.post120", (2, 6, 2)),
                                            ("3.0.0rc1", (3, 0, 0)), ("3.1.0.dev20250101", (3, 1, 0))])
def test_version_tuple(text, expected) -> None:
    assert compat.version_tuple(text) == expected


def test_version_tuple_refuses_what_is_not_a_version() -> None:
    with pytest.raises(ValueError, match="not a Paddle version: 'develop'"):
        compat.version_tuple("develop")


def test_the_declared_range_is_the_enforced_one_and_holds_the_pinned_wheel() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["paddle-chexnet"]
    assert declared["paddle-supported"] == compat.SUPPORTED_PADDLE
    assert compat.version_tuple(declared["paddle-oldest"]) == compat.MINIMUM_PADDLE
    assert compat.version_tuple(declared["paddle-newest-tested"]) == compat.NEWEST_TESTED_PADDLE
    for path in declared["paddle-version-tests"]:
        assert (REPO_ROOT / path).is_file(), path
    pins = [line.split("==") for line in (REPO_ROOT / "requirements-cpu.txt").read_text().splitlines()
            if line.startswith("paddlepaddle")]
    assert pins == [["paddlepaddle", compat.PINNED_CPU_PADDLE]]
    assert compat.MINIMUM_PADDLE <= compat.version_tuple(compat.PINNED_CPU_PADDLE) <= compat.NEWEST_TESTED_PADDLE
    runtime = [line for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert not [line for line in runtime if line.lower().startswith("paddle")]


def test_this_paddle_is_in_the_supported_range() -> None:
    assert compat.paddle_version() >= compat.MINIMUM_PADDLE


# ---------------------------------------------------------------- exports on this Paddle


def _tiny_network() -> DenseNet:
    paddle.seed(3)
    net = DenseNet(**TINY)
    net.eval()
    return net


def _inputs() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((3, 3, 32, 32)).astype(np.float32)


def test_an_export_loads_in_the_paddle_that_wrote_it(tmp_path) -> None:
    """Paddle 3 writes ``model.json`` (PIR), Paddle 2.6 ``model.pdmodel``; Paddle Inference loads it back."""
    net = _tiny_network()
    written = export_model(net, tmp_path / "model", crop=32)
    assert written.suffix == (".json" if compat.paddle_version() >= (3, 0, 0) else ".pdmodel")
    assert model_file(tmp_path / "model") == written
    probabilities = InferencePredictor(tmp_path / "model", num_threads=1)(_inputs())
    np.testing.assert_allclose(probabilities, DygraphPredictor(net)(_inputs()), atol=1e-5, rtol=0)


LEGACY_EXPORT = (
    "import sys, numpy as np, paddle\n"
    "from paddle_chexnet.inference.export import export_model\n"
    "from paddle_chexnet.models.densenet import TINY, DenseNet\n"
    "paddle.seed(3)\n"
    "net = DenseNet(**TINY)\n"
    "print(export_model(net, sys.argv[1], crop=32).name)\n"
)


@pytest.mark.skipif(compat.paddle_version() < (3, 0, 0), reason="Paddle 2.6 writes .pdmodel by default (tested above)")
@pytest.mark.skipif(compat.paddle_version() >= (3, 2, 0),
                    reason="Paddle 3.2+ exports only its PIR .json: its old IR no longer runs the network's operators")
def test_paddle_3_loads_a_pdmodel_export(tmp_path) -> None:
    """A ``.pdmodel`` written by Paddle 3 with its old IR (``FLAGS_enable_pir_api=0``) loads in Paddle Inference."""
    out = subprocess.run([sys.executable, "-c", LEGACY_EXPORT, str(tmp_path / "model")], capture_output=True,
                         text=True, env=cli_env(FLAGS_enable_pir_api="0"), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "model.pdmodel"
    assert model_file(tmp_path / "model") == tmp_path / "model.pdmodel"
    probabilities = InferencePredictor(tmp_path / "model", num_threads=1)(_inputs())
    np.testing.assert_allclose(probabilities, DygraphPredictor(_tiny_network())(_inputs()), atol=1e-5, rtol=0)


@pytest.mark.parametrize("version, files, expected", [
    ((3, 3, 1), ["model.json", "model.pdmodel"], "model.json"),
    ((3, 0, 0), ["model.pdmodel"], "model.pdmodel"),
    ((2, 6, 2), ["model.json", "model.pdmodel"], "model.pdmodel"),
])
def test_program_file_prefers_what_this_paddle_writes(tmp_path, monkeypatch, version, files, expected) -> None:
    monkeypatch.setattr(compat, "paddle_version", lambda: version)
    for name in files:
        (tmp_path / name).write_text("")
    assert compat.program_file(tmp_path / "model") == tmp_path / expected


def test_paddle_2_refuses_a_json_export_instead_of_crashing_on_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(compat, "paddle_version", lambda: (2, 6, 2))
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"model\.json was exported by Paddle 3 .* export the model again"):
        compat.program_file(tmp_path / "model")
    with pytest.raises(FileNotFoundError, match=r"no exported model at .*other\.json or .*other\.pdmodel"):
        compat.program_file(tmp_path / "other")


@pytest.mark.parametrize("version, builds", [((3, 3, 1), True), ((3, 1, 0), True), ((3, 0, 0), False),
                                             ((2, 6, 2), False)])
def test_the_cpu_kernels_are_built_only_where_they_compile(monkeypatch, version, builds) -> None:
    from paddle_chexnet.cpu import kernels

    monkeypatch.setattr(compat, "paddle_version", lambda: version)
    monkeypatch.delenv(kernels.SWITCH_VARIABLE, raising=False)
    assert compat.builds_cpu_kernels() is builds
    assert kernels.kernels_available_here() is (builds and sys.platform.startswith("linux"))

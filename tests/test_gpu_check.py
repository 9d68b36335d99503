"""benchmarks/gpu_check.py: without a GPU it says so at once; ``--cpu-dry-run`` runs every check on the CPU."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, cli_env

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(sys.modules[spec.name])
    return sys.modules[spec.name]


def _run(*args: str, timeout: int = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=cli_env(**env), timeout=timeout)


def test_without_a_gpu_it_says_so_writes_the_environment_and_exits_0(tmp_path) -> None:
    out = _run("--output", str(tmp_path / "report.json"), CUDA_VISIBLE_DEVICES="")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("no GPU to check: ")
    assert "a CPU build" in out.stdout or "Paddle sees no GPU" in out.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["mode"] == "no-gpu" and report["checks"] == {}
    import paddle

    assert report["environment"]["paddle"] == paddle.__version__
    assert report["environment"]["compiled_with_cuda"] == paddle.device.is_compiled_with_cuda()


def test_a_check_that_crashes_is_reported_not_fatal() -> None:
    module = _module()
    settings = {"device": "cpu", "sizes": dataclasses.asdict(module.DRY_RUN)}
    result = module.run_check("no-such-check", settings, module.DRY_RUN)
    assert result["ok"] is False
    assert result["summary"].startswith("exit 1: ") and "no-such-check" in result["summary"]


def test_the_table_shows_each_check_its_status_and_result() -> None:
    module = _module()
    report = {"mode": "gpu", "environment": {
        "paddle_chexnet": "0.2.0", "paddle": "3.3.1", "compiled_with_cuda": True, "cuda": "12.6", "cudnn": "9.5.0",
        "gpus": [{"name": "Tesla V100"}], "nvidia_smi": [{"driver_version": "550.54"}]},
        "checks": {"eval": {"ok": True, "summary": "max 1e-6", "seconds": 12.4},
                   "train-amp": {"ok": False, "summary": "exit 1: out of memory", "seconds": 3},
                   "loader": {"ok": True, "warning": True, "summary": "INPUT-BOUND", "seconds": 9}}}
    lines = module.table(report).splitlines()
    assert lines[0] == ("paddle-chexnet 0.2.0 GPU check (gpu): Tesla V100; Paddle 3.3.1 (CUDA 12.6, cuDNN 9.5.0), "
                        "driver 550.54")
    assert lines[2].split() == ["check", "status", "seconds", "result"]
    assert re.fullmatch(r"eval\.py GPU vs CPU inference +ok +12  max 1e-6", lines[3])
    assert re.fullmatch(r"training steps, AMP O1 +FAIL +3  exit 1: out of memory", lines[4])
    assert re.fullmatch(r"data loader vs GPU +warn +9  INPUT-BOUND", lines[5])

def test_unknown_checks_are_named(tmp_path) -> None:
    out = _run("--cpu-dry-run", "--only", "eval", "bogus", "--output", str(tmp_path / "r.json"))
    assert out.returncode == 1
    assert "unknown check(s) bogus; choose from eval, train-fp32" in out.stderr


@pytest.mark.slow
def test_the_cpu_dry_run_runs_every_check(tmp_path) -> None:
    out = _run("--cpu-dry-run", "--output", str(tmp_path / "report.json"), "--work-dir", str(tmp_path / "work"),
               timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    module = _module()
    assert report["mode"] == "cpu-dry-run"
    assert list(report["checks"]) == list(module.CHECKS)
    failed = {name: r["summary"] for name, r in report["checks"].items() if not r["ok"]}
    assert not failed
    checks = report["checks"]
    assert checks["eval"]["max_abs_difference"] <= 1e-4 and checks["eval"]["images"] == 8
    assert checks["eval"]["backends"] == {"gpu": "dygraph", "cpu": "inference"}
    for name in ("train-fp32", "train-amp"):
        assert checks[name]["images_per_second"] > 0
    assert checks["train-amp"]["amp"] == "O1" and checks["train-fp32"]["amp"] is None
    losses = [row["train_loss"] for row in checks["demo"]["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert checks["loader"]["consume_images_per_second"].keys() == {"train-fp32", "train-amp"}
    for title, _ in module.CHECKS.values():
        assert title in out.stdout
    assert (tmp_path / "work" / "outputs" / "launch" / "best.pdparams").is_file()

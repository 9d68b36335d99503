"""CPU math settings: threads per process and MKL's code path on AMD processors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from paddle_chexnet import cpu_runtime
from paddle_chexnet.cpu_runtime import (
    MKL_CPU_TYPE_VARIABLE,
    configure_cpu,
    cpu_vendor,
    default_threads,
    local_process_count,
    use_mkl_avx2_on_amd,
)

REPO = Path(__file__).resolve().parents[1]


def _cpuinfo(tmp_path: Path, vendor: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: 25\n\nprocessor\t: 1\n"
                    f"vendor_id\t: {vendor}\n")
    return path


def test_cpu_vendor_reads_cpuinfo(tmp_path):
    assert cpu_vendor(_cpuinfo(tmp_path, "AuthenticAMD")) == "AuthenticAMD"
    assert cpu_vendor(_cpuinfo(tmp_path, "GenuineIntel")) == "GenuineIntel"
    assert cpu_vendor(tmp_path / "missing") == ""


def test_mkl_avx2_only_on_amd_and_never_over_the_users_value():
    environ: dict[str, str] = {}
    assert use_mkl_avx2_on_amd(environ, vendor="AuthenticAMD") == "5"
    assert environ == {MKL_CPU_TYPE_VARIABLE: "5"}
    environ = {}
    assert use_mkl_avx2_on_amd(environ, vendor="GenuineIntel") is None
    assert environ == {}
    environ = {MKL_CPU_TYPE_VARIABLE: "2"}
    assert use_mkl_avx2_on_amd(environ, vendor="AuthenticAMD") == "2"
    assert environ == {MKL_CPU_TYPE_VARIABLE: "2"}


def test_threads_are_shared_among_the_launched_processes(monkeypatch):
    monkeypatch.setattr(cpu_runtime, "usable_cores", lambda: 8)
    assert default_threads({}) == 8
    assert default_threads({"PADDLE_LOCAL_SIZE": "2"}) == 4
    assert default_threads({"PADDLE_LOCAL_SIZE": "16"}) == 1
    assert local_process_count({"PADDLE_LOCAL_SIZE": "not a number"}) == 1


def test_bad_thread_count_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        configure_cpu(0)


def _mkl_library() -> Path:
    import paddle

    path = Path(paddle.__file__).parent / "libs" / "libmklml_intel.so"
    if not path.is_file():
        pytest.skip("this Paddle build has no bundled MKL")
    return path


def test_configure_cpu_sets_mkl_threads():
    """Paddle starts with one MKL thread; configure_cpu gives the process the threads asked for."""
    if cpu_runtime.usable_cores() < 2:
        pytest.skip("needs 2 cores (MKL never runs more threads than cores)")
    code = (
        "import ctypes\n"
        "import paddle\n"
        "from paddle_chexnet.cpu_runtime import configure_cpu\n"
        f"mkl = ctypes.CDLL({str(_mkl_library())!r})\n"
        "before = mkl.MKL_Get_Max_Threads()\n"
        "configure_cpu(2)\n"
        "print(before, mkl.MKL_Get_Max_Threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["1", "2"]

"""CPU math settings: threads per process and MKL's code path on AMD processors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from paddle_chexnet.cpu import runtime as cpu_runtime
from paddle_chexnet.cpu.runtime import (
    MKL_CPU_TYPE_VARIABLE,
    configure_cpu,
    cpu_flags,
    cpu_vendor,
    default_threads,
    local_process_count,
    mkl_cpu_type_for,
    use_fast_mkl_on_amd,
)

REPO = Path(__file__).resolve().parents[1]


ZEN3_FLAGS = frozenset("fpu sse2 avx fma avx2 bmi2".split())
ZEN5_FLAGS = ZEN3_FLAGS | {"avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512_bf16"}


def _cpuinfo(tmp_path: Path, vendor: str, flags: str = "fpu sse2 avx avx2 fma") -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: 25\nflags\t\t: {flags}\n\n"
                    f"processor\t: 1\nvendor_id\t: {vendor}\nflags\t\t: {flags}\n")
    return path


def test_cpu_vendor_reads_cpuinfo(tmp_path):
    assert cpu_vendor(_cpuinfo(tmp_path, "AuthenticAMD")) == "AuthenticAMD"
    assert cpu_vendor(_cpuinfo(tmp_path, "GenuineIntel")) == "GenuineIntel"
    assert cpu_vendor(tmp_path / "missing") == ""


def test_cpu_flags_reads_cpuinfo(tmp_path):
    assert cpu_flags(_cpuinfo(tmp_path, "AuthenticAMD", "fpu avx2  fma")) == {"fpu", "avx2", "fma"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(
    "vendor, flags, expected",
    [
        ("AuthenticAMD", ZEN5_FLAGS, "7"),  # Zen 4 / Zen 5: MKL's AVX-512 (Skylake-SP) kernels
        ("AuthenticAMD", ZEN3_FLAGS, "5"),  # Zen 1-3: its AVX2 kernels
        ("AuthenticAMD", ZEN5_FLAGS - {"avx512vl"}, "5"),  # a partial AVX-512 set is not enough
        ("AuthenticAMD", ZEN3_FLAGS - {"avx2"}, None),  # no AVX2: only MKL's own path is safe
        ("AuthenticAMD", frozenset(), None),  # flags unknown: never guess
        ("GenuineIntel", ZEN5_FLAGS, None),  # MKL picks Intel's kernels itself
    ],
)
def test_mkl_cpu_type_follows_the_processor_flags(vendor, flags, expected):
    assert mkl_cpu_type_for(vendor, flags) == expected


def test_fast_mkl_only_on_amd_and_never_over_the_users_value():
    environ: dict[str, str] = {}
    assert use_fast_mkl_on_amd(environ, vendor="AuthenticAMD", flags=ZEN3_FLAGS) == "5"
    assert environ == {MKL_CPU_TYPE_VARIABLE: "5"}
    environ = {}
    assert use_fast_mkl_on_amd(environ, vendor="AuthenticAMD", flags=ZEN5_FLAGS) == "7"
    assert environ == {MKL_CPU_TYPE_VARIABLE: "7"}
    environ = {}
    assert use_fast_mkl_on_amd(environ, vendor="AuthenticAMD", flags=frozenset()) is None
    assert environ == {}
    environ = {}
    assert use_fast_mkl_on_amd(environ, vendor="GenuineIntel", flags=ZEN5_FLAGS) is None
    assert environ == {}
    environ = {MKL_CPU_TYPE_VARIABLE: "2"}
    assert use_fast_mkl_on_amd(environ, vendor="AuthenticAMD", flags=ZEN5_FLAGS) == "2"
    assert environ == {MKL_CPU_TYPE_VARIABLE: "2"}


def test_importing_the_package_sets_nothing_reads_nothing_prints_nothing():
    """``import paddle_chexnet`` (and reading CLASS_NAMES) leaves the environment, files and output alone."""
    code = (
        "import builtins, io, os, sys\n"
        "opened = []\n"
        "real_open, real_io_open = builtins.open, io.open\n"
        "builtins.open = lambda f, *a, **k: (opened.append(str(f)), real_open(f, *a, **k))[1]\n"
        "before = dict(os.environ)\n"
        "import paddle_chexnet\n"
        "names = paddle_chexnet.CLASS_NAMES\n"
        "builtins.open = real_open\n"
        "print(len(names), dict(os.environ) == before, 'paddle' in sys.modules, "
        "[f for f in opened if not f.endswith(('.py', '.pyc'))])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != MKL_CPU_TYPE_VARIABLE}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "14 True False []"
    assert out.stderr == ""


def test_the_chosen_mkl_path_runs_and_multiplies_correctly_here():
    """Whatever this machine's processor makes the package choose, MKL runs it and gets products right."""
    code = (
        "import os\n"
        "import numpy as np\n"
        "from paddle_chexnet.cpu.runtime import configure_cpu\n"
        "configure_cpu()\n"
        "import paddle\n"
        "rng = np.random.default_rng(0)\n"
        "a = rng.standard_normal((128, 512)).astype('float32')\n"
        "b = rng.standard_normal((512, 3136)).astype('float32')\n"
        "out = paddle.matmul(paddle.to_tensor(a), paddle.to_tensor(b)).numpy()\n"
        "ref = a.astype('float64') @ b.astype('float64')\n"
        "print(os.environ.get('MKL_DEBUG_CPU_TYPE'), float(np.abs(out - ref).max() / np.abs(ref).max()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != MKL_CPU_TYPE_VARIABLE}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    chosen, error = out.stdout.split()
    assert chosen == str(mkl_cpu_type_for(cpu_vendor(), cpu_flags()))
    assert float(error) < 1e-5


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
        "from paddle_chexnet.cpu.runtime import configure_cpu\n"
        f"mkl = ctypes.CDLL({str(_mkl_library())!r})\n"
        "before = mkl.MKL_Get_Max_Threads()\n"
        "configure_cpu(2)\n"
        "print(before, mkl.MKL_Get_Max_Threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["1", "2"]


def test_configure_cpu_gives_the_package_kernels_the_same_threads(monkeypatch):
    monkeypatch.setattr(cpu_runtime, "_configured_threads", 1)
    try:
        configure_cpu(2)
        assert cpu_runtime.math_threads() == 2
        configure_cpu(1)
        assert cpu_runtime.math_threads() == 1
    finally:
        configure_cpu(1)


_FAULTS_CODE = """
import ctypes, resource, sys
if sys.argv[1] == "keep":
    from paddle_chexnet.cpu.runtime import keep_freed_memory
    assert keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 64 << 20
def cycle():  # what a training step does with a large activation: allocate, write, free
    block = libc.malloc(SIZE)
    ctypes.memset(block, 1, SIZE)
    libc.free(block)
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_large_blocks_are_reused_instead_of_faulted_in_again():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(REPO)
    faults = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", _FAULTS_CODE, mode], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr[-2000:]
        faults[mode] = int(out.stdout.split()[-1])
    pages = (64 << 20) // 4096
    assert faults["default"] > 4 * pages  # glibc maps and unmaps a 64 MB block every time
    assert faults["keep"] < pages // 4, faults  # the block is reused from the heap


def test_users_malloc_variables_are_left_alone():
    from paddle_chexnet.cpu.runtime import keep_freed_memory

    assert keep_freed_memory({"MALLOC_MMAP_THRESHOLD_": "131072"}) is False

"""What the benchmarks record about the machine they ran on."""
from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_summary() -> str:
    """Model name, family/model, the widest vector instructions and the usable cores, for BENCHMARKS.md."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return cpu_model()
    flags = set(fields.get("flags", "").split())
    vectors = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
    vnni = ", VNNI" if "avx512_vnni" in flags or "avx_vnni" in flags else ""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{fields.get('model name', cpu_model())} (family {fields.get('cpu family', '?')} model "
            f"{fields.get('model', '?')}, {vectors}{vnni}), {cores} cores")

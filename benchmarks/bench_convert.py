"""Benchmark: conversion time of a full 14-class checkpoint, and parity on the real sample.

1. Builds an arnoweng/CheXNet-format ``model.pth.tar`` (legacy names, ``module.densenet121.``
   prefix, legacy serialization) from a seeded torchvision DenseNet-121 whose BatchNorm
   statistics come from a train-mode pass over 8 real images (random weights otherwise:
   no trained CheXNet checkpoint can be downloaded here).
2. Times, alternating so both see the same machine load:
   reference ``torch.load(SRC, weights_only=True)`` alone, versus the whole conversion
   ``tools/convert_torch.py`` ``main()`` (read + convert + strict check + atomic save +
   sidecar), both in-process; then the same two as fresh processes (interpreter start and
   imports included: what a user waits for).
3. Runs ``--verify``'s comparison on every image of the label list (200 real images):
   max probability difference and per-class AUROC difference against torchvision.

Prints a Markdown section for BENCHMARKS.md.

Example:
    python benchmarks/bench_convert.py --images ../shared/data/chestxray14-sample/images \\
        --labels ../shared/data/chestxray14-sample/labels/sample_list.txt
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

import numpy as np
from machine_info import (
    cpu_model,  # benchmarks/machine_info.py (run as scripts from any folder)
)

from paddle_chexnet.data.datasets import index_images
from paddle_chexnet.data.images import read_xray
from paddle_chexnet.data.label_lists import read_label_list
from paddle_chexnet.data.transforms import EvalTransform


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="folder of the real images")
    parser.add_argument("--labels", type=Path, required=True, help="their label list (CheXNet format)")
    parser.add_argument("--repeats", type=int, default=5, help="alternating in-process timing rounds")
    parser.add_argument("--process-repeats", "--process_repeats", dest="process_repeats", type=int, default=3,
                        help="alternating fresh-process timing rounds")
    parser.add_argument("--limit", type=int, default=None, help="parity on the first N images only")
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8,
                        help="images per forward pass in the parity run")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to write the checkpoint (default: a temp dir)")
    return parser


def build_checkpoint(path: Path, calibration_paths: list[Path]) -> None:
    """arnoweng-format model.pth.tar from a seeded torchvision DenseNet-121 with image-derived BN statistics."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None, num_classes=14)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None
            module.reset_running_stats()
    transform = EvalTransform("center", resize=146, crop=128)
    batch = np.stack([transform(read_xray(p)) for p in calibration_paths])
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(batch))
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        key = re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key)
        state["module.densenet121." + key.replace("classifier.", "classifier.0.")] = value
    torch.save({"epoch": 7, "arch": "densenet121", "state_dict": state}, path, _use_new_zipfile_serialization=False)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_in_process(src: Path, out: Path, repeats: int) -> tuple[list[float], list[float]]:
    import torch

    from paddle_chexnet.cli import convert_torch as tool  # what tools/convert_torch.py runs

    args = tool.get_args_parser().parse_args([str(src), "-o", str(out)])
    tool.main(args)  # warm-up: first-call costs (allocator, lazy imports) are not conversion work
    torch.load(str(src), map_location="cpu", weights_only=True)
    reference, convert = [], []
    for _ in range(repeats):
        reference.append(_timed(lambda: torch.load(str(src), map_location="cpu", weights_only=True)))
        convert.append(_timed(lambda: tool.main(args)))
    return reference, convert


def time_processes(src: Path, out: Path, repeats: int) -> tuple[list[float], list[float]]:
    env = dict(os.environ)
    reference_cmd = [sys.executable, "-c",
                     f"import torch; torch.load({str(src)!r}, map_location='cpu', weights_only=True)"]
    convert_cmd = [sys.executable, str(REPO_ROOT / "tools" / "convert_torch.py"), str(src), "-o", str(out)]
    reference, convert = [], []
    for _ in range(repeats):
        reference.append(_timed(lambda: subprocess.run(reference_cmd, check=True, env=env, capture_output=True)))
        convert.append(_timed(lambda: subprocess.run(convert_cmd, check=True, env=env, capture_output=True)))
    return reference, convert


def main(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    from paddle_chexnet.conversion.layouts import convert_state_dict
    from paddle_chexnet.conversion.readers import read_checkpoint
    from paddle_chexnet.conversion.verify import verify_conversion

    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    labels = read_label_list(args.labels)
    if args.limit is not None:
        labels = labels.subset(labels.names[: args.limit])
    index = index_images(args.images)
    paths = [index[n] for n in labels.names]

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_convert_"))
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / "model.pth.tar"
    build_checkpoint(src, sorted(index.values())[:8])
    out = workdir / "out" / "model.pdparams"

    ref_in, conv_in = time_in_process(src, out, args.repeats)
    ref_proc, conv_proc = time_processes(src, out, args.process_repeats)

    checkpoint = read_checkpoint(src)
    conversion = convert_state_dict(checkpoint.state, source=str(src))
    t0 = time.perf_counter()
    result = verify_conversion(conversion.format, checkpoint.state, conversion.state, paths, labels.labels,
                               batch_size=args.batch_size,
                               progress=lambda done, total: print(f"parity: {done}/{total} images",
                                                                  file=sys.stderr, flush=True))
    parity_seconds = time.perf_counter() - t0
    load_after = os.getloadavg()

    med = statistics.median
    size_mb = src.stat().st_size / 1e6
    print("<!-- SECTION: conversion -->")
    print("## Checkpoint conversion (`tools/convert_torch.py`)\n")
    print(f"Date: {started:%Y-%m-%d %H:%M} UTC. Machine: {os.cpu_count()} cores (`nproc`), {cpu_model()}; "
          f"load average {load_before[0]:.1f} at start, {load_after[0]:.1f} at the end. torch threads: "
          f"{args.threads}; Paddle default.\n")
    print("Command:\n\n```bash")
    print(f"python benchmarks/bench_convert.py --images {args.images} --labels {args.labels}"
          + (f" --limit {args.limit}" if args.limit else ""))
    print("```\n")
    print(f"Source: a full 14-class DenseNet-121 in arnoweng/CheXNet's `model.pth.tar` layout ({size_mb:.1f} MB, "
          "legacy serialization, legacy names, `module.densenet121.` prefix), seeded random weights with "
          "BatchNorm statistics from 8 real images.\n")
    print("| timing (median, alternating runs) | reference | conversion | ratio |")
    print("|---|---|---|---|")
    print(f"| in-process ({args.repeats} rounds): `torch.load` alone vs read+convert+check+atomic save+sidecar "
          f"| {med(ref_in):.2f} s | {med(conv_in):.2f} s | {med(conv_in) / med(ref_in):.1f}x |")
    print(f"| fresh process ({args.process_repeats} rounds): `python -c 'import torch; torch.load(...)'` vs "
          f"`python tools/convert_torch.py SRC -o DST` | {med(ref_proc):.2f} s | {med(conv_proc):.2f} s "
          f"| {med(conv_proc) / med(ref_proc):.1f}x |")
    print(f"\nAll runs (s): torch.load {['%.2f' % t for t in ref_in]}, convert {['%.2f' % t for t in conv_in]}; "
          f"processes: reference {['%.2f' % t for t in ref_proc]}, convert {['%.2f' % t for t in conv_proc]}.\n")
    print(f"Goal: conversion under 10 s here: {'met' if max(conv_proc) < 10 else 'NOT met'} "
          f"(slowest fresh-process run {max(conv_proc):.1f} s).\n")
    print(f"Parity (`--verify`'s comparison, {parity_seconds / 60:.0f} min for both frameworks):\n")
    print("```")
    print(result.table())
    print("```\n")
    defined = ~np.isnan(result.auroc_diff)
    print(f"Summary: max |prob diff| on {result.num_images} real images = {float(np.max(result.image_max_diff)):.2e} "
          f"(bound 1e-4); max per-class |AUROC diff| = {float(np.max(result.auroc_diff[defined])):.2e} "
          f"over {int(defined.sum())} classes (bound 1e-4); random inputs max |prob diff| = "
          f"{result.random_max_diff:.2e} (bound 1e-5). The weights are random, so the AUROCs themselves are "
          "near chance: the figures measure agreement between the frameworks, not accuracy.")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))

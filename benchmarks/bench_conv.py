"""Every convolution of DenseNet-121, forward + backward: torch against Paddle's paths.

For each convolution of the network (stem, the 1x1 and 3x3 convolutions of all
58 dense layers, the transitions) at its own input size, the best of
``--repeats`` timings of one forward and one backward pass, summed by kernel
size and feature-map size. Variants, each in its own process:

    torch          torch.nn.Conv2d (oneDNN)
    paddle         paddle_chexnet's layers as DenseNet uses them: the C++ kernels of
                   paddle_chexnet/cpu/ops.py for the 3x3 convolutions and the 7x7 stem,
                   nn.Conv2D for the 1x1 ones
    paddle_fold    the same without the C++ kernels (PADDLE_CHEXNET_CPU_KERNELS=0): 3x3 by
                   product + fold in Paddle operators on maps of 28x28 and larger
    paddle_conv2d  Paddle's own nn.Conv2D for all of them

The stem's input gets no gradient (as an image would not). Example:
    python benchmarks/bench_conv.py --batch-size 4 --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from machine_info import (
    cpu_model,  # benchmarks/machine_info.py (run as scripts from any folder)
)

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("torch", "paddle", "paddle_fold", "paddle_conv2d")


def densenet121_convolutions():
    """(in channels, out channels, kernel, stride, input side) of each convolution, in order."""
    yield 3, 64, 7, 2, 224
    channels, side = 64, 56
    for block, layers in enumerate((6, 12, 24, 16)):
        for i in range(layers):
            yield channels + 32 * i, 128, 1, 1, side
            yield 128, 32, 3, 1, side
        channels += 32 * layers
        if block < 3:
            yield channels, channels // 2, 1, 1, side
            channels, side = channels // 2, side // 2


def _best(step, repeats: int) -> float:
    step()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


def run_worker(args: argparse.Namespace) -> dict[str, float]:
    totals: dict[str, float] = {}
    if args.worker == "torch":
        import torch

        torch.set_num_threads(args.threads)
        for cin, cout, k, stride, side in densenet121_convolutions():
            x = torch.randn(args.batch_size, cin, side, side, requires_grad=k != 7)
            conv = torch.nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)

            def step():
                y = conv(x)
                y.backward(torch.ones_like(y))

            key = f"{k}x{k} at {side}"
            totals[key] = totals.get(key, 0.0) + _best(step, args.repeats)
        return totals
    import paddle

    from paddle_chexnet.cpu import fold
    from paddle_chexnet.cpu import layers as cpu_conv
    from paddle_chexnet.cpu.kernels import prepare_kernels
    from paddle_chexnet.cpu.runtime import configure_cpu

    configure_cpu(args.threads)
    if args.worker != "paddle":
        os.environ["PADDLE_CHEXNET_CPU_KERNELS"] = "0"
    prepare_kernels()
    if args.worker == "paddle_conv2d":
        fold.MIN_PIXELS = 1 << 62  # never take the fold path
    for cin, cout, k, stride, side in densenet121_convolutions():
        x = paddle.randn([args.batch_size, cin, side, side])
        x.stop_gradient = k == 7
        if k == 3:
            conv = cpu_conv.Conv3x3(cin, cout)
        elif k == 7:
            conv = cpu_conv.ThreadedConv2D(cin, cout, k, stride, k // 2)
        else:
            conv = paddle.nn.Conv2D(cin, cout, k, stride, k // 2, bias_attr=False)

        def step():
            y = conv(x)
            y.backward(paddle.ones_like(y))

        key = f"{k}x{k} at {side}"
        totals[key] = totals.get(key, 0.0) + _best(step, args.repeats)
    return totals


def main(args: argparse.Namespace) -> dict:
    if args.worker:
        print("RESULT " + json.dumps(run_worker(args)), flush=True)
        return {}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results = {}
    for variant in VARIANTS:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--batch-size",
               str(args.batch_size), "--threads", str(args.threads), "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        results[variant] = json.loads(next(l for l in out.splitlines() if l.startswith("RESULT "))[7:])
    groups = list(results["torch"])
    print(f"batch {args.batch_size}, {args.threads} thread(s), best of {args.repeats}; seconds, forward + backward")
    print(f"{'convolutions':14s}" + "".join(f"{v:>15s}" for v in VARIANTS))
    for group in groups + ["all"]:
        row = [sum(r.values()) if group == "all" else r[group] for r in results.values()]
        print(f"{group:14s}" + "".join(f"{t:15.3f}" for t in row))
    summary = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": {"nproc": os.cpu_count(), "cpu": cpu_model()},
               "command": "python benchmarks/bench_conv.py " + " ".join(sys.argv[1:]), "seconds": results}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="timings per convolution (the best counts)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--worker", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())

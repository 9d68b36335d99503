"""The package's C++ CPU kernels one by one against Paddle's operators, and MKL's code paths on this CPU.

Part 1, operators: for each kernel of ``paddle_chexnet/cpu/ops.py`` at the
DenseNet-121 shapes where it matters, the best of ``--repeats`` timings of one
forward + backward pass (``paddle.grad`` of the output with respect to the
inputs and parameters), the package's kernel against what Paddle computes
without it (``paddle_chexnet``'s fold path included for the 3x3
convolutions), in one process with the package's CPU settings.

Part 2, matrix products: a [128 x 512] x [512 x 6272] product (a dense
layer's 1x1 convolution at 28x28, batch 8) under each ``MKL_DEBUG_CPU_TYPE``
this processor can run, each in its own process (MKL reads the variable once):
GFLOP/s with MKL's own choice (empty), its AVX2 kernels (5) and its AVX-512
kernels (7), as far as the processor's flags allow.

Example:
    python benchmarks/bench_kernels.py --batch-size 8 --threads 2
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


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timings per case (the best counts)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--product-worker", default=None, help=argparse.SUPPRESS)
    return parser


def _best(step, repeats: int) -> float:
    step()
    step()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


def _forward_backward(make_output, leaves):
    import paddle

    def step():
        out = make_output()
        paddle.grad(out, leaves, paddle.ones_like(out))

    return step


def operator_cases(batch: int):
    """(name, {variant: step}) for every kernel; each step runs one forward + backward."""
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F

    from paddle_chexnet.cpu import ops as k
    from paddle_chexnet.cpu.fold import conv3x3_fold

    def tensor(*shape, grad=True):
        t = paddle.randn(list(shape))
        t.stop_gradient = not grad
        return t

    for channels, side in ((64, 112), (256, 56)):
        x, norm = tensor(batch, channels, side, side), nn.BatchNorm2D(channels)
        leaves = [x, norm.weight, norm.bias]
        yield f"BatchNorm+ReLU [{batch}, {channels}, {side}, {side}]", {
            "paddle": _forward_backward(lambda x=x, n=norm: F.relu(n(x)), leaves),
            "kernel": _forward_backward(lambda x=x, n=norm: k.batch_norm_relu(x, n), leaves),
        }
    x, norm, pool = tensor(batch, 256, 56, 56), nn.BatchNorm2D(256), nn.AvgPool2D(2, 2)
    leaves = [x, norm.weight, norm.bias]
    yield f"BatchNorm+ReLU+AvgPool2x2 [{batch}, 256, 56, 56]", {
        "paddle": _forward_backward(lambda: pool(F.relu(norm(x))), leaves),
        "kernel": _forward_backward(lambda: k.batch_norm_relu_pool(x, norm, pool), leaves),
    }
    for side in (56, 28, 14, 7):
        x, w = tensor(batch, 128, side, side), tensor(32, 128, 3, 3)
        yield f"3x3 convolution 128->32 at {side}x{side}", {
            "paddle": _forward_backward(lambda x=x, w=w: F.conv2d(x, w, padding=1), [x, w]),
            "fold path": _forward_backward(lambda x=x, w=w: conv3x3_fold(x, w), [x, w]),
            "kernel": _forward_backward(lambda x=x, w=w: k.conv3x3_kernel(x, w), [x, w]),
        }
    image, w = tensor(batch, 3, 224, 224, grad=False), tensor(64, 3, 7, 7)
    yield "stem 7x7/2 convolution 3->64 at 224 (no input gradient)", {
        "paddle": _forward_backward(lambda: F.conv2d(image, w, stride=2, padding=3), [w]),
        "kernel": _forward_backward(lambda: k.conv_im2col_kernel(image, w, 2, 3), [w]),
    }
    x = F.relu(tensor(batch, 64, 112, 112, grad=False))
    x.stop_gradient = False
    yield f"3x3/2 max pooling [{batch}, 64, 112, 112]", {
        "paddle": _forward_backward(lambda: F.max_pool2d(x, 3, 2, 1), [x]),
        "kernel": _forward_backward(lambda: k.max_pool_kernel(x, 3, 2, 1), [x]),
    }
    pieces = [tensor(batch, 64, 56, 56)] + [tensor(batch, 32, 56, 56) for _ in range(5)]
    yield f"concat of 6 maps at 56x56 ({batch}, 224 channels out)", {
        "paddle": _forward_backward(lambda: paddle.concat(pieces, axis=1), pieces),
        "kernel": _forward_backward(lambda: k.concat_channels(pieces), pieces),
    }


def run_operators(args: argparse.Namespace) -> list[dict]:
    from paddle_chexnet.cpu.kernels import prepare_kernels
    from paddle_chexnet.cpu.runtime import configure_cpu

    configure_cpu(args.threads)
    if prepare_kernels() is None:
        raise SystemExit("the C++ kernels could not be built here (see the warning above); nothing to compare")
    rows = []
    for name, steps in operator_cases(args.batch_size):
        times = {variant: _best(step, args.repeats) for variant, step in steps.items()}
        rows.append({"case": name, "seconds": times})
        print(f"{name:58s} " + "  ".join(f"{v} {t * 1e3:7.2f} ms" for v, t in times.items())
              + f"   kernel {times['paddle'] / times['kernel']:.1f}x Paddle", flush=True)
    return rows


PRODUCT_SHAPE = (128, 512, 6272)


def product_worker(args: argparse.Namespace) -> None:
    import numpy as np
    import paddle

    paddle.base.core.set_num_threads(args.threads)
    m, k, n = PRODUCT_SHAPE
    rng = np.random.default_rng(0)
    a = paddle.to_tensor(rng.standard_normal((m, k)).astype("float32"))
    b = paddle.to_tensor(rng.standard_normal((k, n)).astype("float32"))
    seconds = _best(lambda: paddle.matmul(a, b).numpy(), 20)
    print("RESULT " + json.dumps({"gflops": 2 * m * k * n / seconds / 1e9}), flush=True)


def run_products(args: argparse.Namespace) -> dict[str, float]:
    from paddle_chexnet.cpu.runtime import (
        MKL_AVX2_CPU_TYPE,
        MKL_AVX512_CPU_TYPE,
        MKL_CPU_TYPE_VARIABLE,
        cpu_flags,
        cpu_vendor,
        mkl_cpu_type_for,
    )

    safest = mkl_cpu_type_for(cpu_vendor(), cpu_flags())
    types = [""] + {None: [], MKL_AVX2_CPU_TYPE: [MKL_AVX2_CPU_TYPE],
                    MKL_AVX512_CPU_TYPE: [MKL_AVX2_CPU_TYPE, MKL_AVX512_CPU_TYPE]}[safest]
    m, k, n = PRODUCT_SHAPE
    print(f"[{m} x {k}] x [{k} x {n}] product, {args.threads} thread(s), best of 20")
    results = {}
    for cpu_type in types:
        env = dict(os.environ, **{MKL_CPU_TYPE_VARIABLE: cpu_type})  # present, so paddle_chexnet keeps it
        cmd = [sys.executable, str(Path(__file__).resolve()), "--product-worker", "1", "--threads",
               str(args.threads)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        line = next(l for l in out.splitlines() if l.startswith("RESULT "))
        label = cpu_type or "empty (MKL's own choice)"
        results[label] = json.loads(line[len("RESULT "):])["gflops"]
        print(f"{MKL_CPU_TYPE_VARIABLE} {label:26s} {results[label]:7.1f} GFLOP/s", flush=True)
    return results


def main(args: argparse.Namespace) -> dict:
    if args.product_worker:
        product_worker(args)
        return {}
    print(f"batch {args.batch_size}, {args.threads} thread(s), best of {args.repeats}; forward + backward")
    summary = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "threads": args.threads},
               "command": "python benchmarks/bench_kernels.py " + " ".join(sys.argv[1:]),
               "operators": run_operators(args), "products_gflops": run_products(args)}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main(get_args_parser().parse_args())

"""CPU throughput of the exported DenseNet-121 (224): Paddle Inference + oneDNN, ONNX Runtime fp32 and INT8,
against torch eager (torchvision's DenseNet-121 with a sigmoid), for center-crop and ten-crop evaluation.

One process, the same random weights in every runtime (speed does not depend on them), the same
float32 inputs. Each runtime gets one call per unit of work, the way eval.py batches on a CPU: ten
images' center crops per call (``center``), or one image's ten crops per call (``ten-crop``, whose
probabilities are then averaged). Rounds are interleaved, so load from other programs hits every
runtime alike; the table gives the median images/s and the ratio to torch eager. The INT8 model is
made with the package's quantiser (``paddle_chexnet.inference.quantize``, calibrated on synthetic
X-rays); its accuracy check is ``tools/export_model.py --quantize int8``'s business, not this one's.

Example:
    python benchmarks/bench_export.py --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from machine_info import cpu_model  # benchmarks/machine_info.py (run as a script from any folder)

CROP = 224


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--images", type=int, default=2, help="images per round and mode (x10 crops for ten-crop)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of every runtime (default: all)")
    parser.add_argument("--no-int8", dest="int8", action="store_false", help="skip the INT8 model")
    parser.add_argument("--calibration", type=int, default=32, help="synthetic calibration images for INT8")
    parser.add_argument("--weight-bits", type=int, choices=(7, 8), default=None,
                        help="INT8 weight bits (default: 8 on a processor with VNNI, else 7)")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    return parser


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx512", "avx_vnni", "amx")))
    except OSError:
        pass
    return []


def main(args: argparse.Namespace) -> int:
    import paddle
    import torch
    import torchvision

    from paddle_chexnet.inference.bundle import ExportOptions, export_bundle
    from paddle_chexnet.inference.export_check import generated_inputs
    from paddle_chexnet.inference.onnx_export import OnnxPredictor
    from paddle_chexnet.inference.predictors import InferencePredictor
    from paddle_chexnet.inference.quantize import default_weight_bits, quantize_onnx
    from paddle_chexnet.models.registry import build_network
    from paddle_chexnet.models.spec import spec_record
    from paddle_chexnet.utils.system import usable_cores

    threads = args.threads or usable_cores()
    bits = args.weight_bits or default_weight_bits()
    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    paddle.seed(0)
    net = build_network("densenet121", 14)
    weights = work / "densenet121.pdparams"
    paddle.save(net.state_dict(), str(weights))
    weights.with_suffix(".json").write_text(json.dumps(spec_record(net.spec)))
    started = time.perf_counter()
    export_bundle(weights, work / "export", ExportOptions(crop=CROP, verify=False, threads=threads),
                  report=lambda text: None)
    export_seconds = time.perf_counter() - started

    runtimes = {
        "Paddle Inference (oneDNN)": InferencePredictor(work / "export" / "model", num_threads=threads,
                                                        micro_batch=None),
        "ONNX Runtime fp32": OnnxPredictor(work / "export" / "model.onnx", threads),
    }
    quantize_seconds = None
    if args.int8:
        started = time.perf_counter()
        calibration = generated_inputs(args.calibration, CROP, 256, seed=1).batch
        quantize_onnx(work / "export" / "model.onnx", work / "model.int8.onnx", calibration, weight_bits=bits)
        quantize_seconds = time.perf_counter() - started
        runtimes["ONNX Runtime INT8"] = OnnxPredictor(work / "model.int8.onnx", threads)

    reference = torchvision.models.densenet121(num_classes=14).eval()
    def torch_eager(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.sigmoid(reference(torch.from_numpy(batch))).numpy()

    runtimes = {"torch eager (torchvision)": torch_eager, **runtimes}
    rng = np.random.default_rng(0)
    center = rng.normal(size=(10, 3, CROP, CROP)).astype(np.float32)  # ten images' center crops per call
    ten = rng.normal(size=(10, 3, CROP, CROP)).astype(np.float32)  # one image's ten crops per call
    for run in runtimes.values():
        run(center[:2])
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, run in runtimes.items():
            for mode, batch, images_per_call in (("center", center, 10), ("ten-crop", ten, 1)):
                calls = max(1, args.images // images_per_call) if mode == "center" else args.images
                start = time.perf_counter()
                for _ in range(calls):
                    run(batch)
                times.setdefault((name, mode), []).append(calls * images_per_call / (time.perf_counter() - start))

    load = os.getloadavg()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    flags = cpu_flags()
    print(f"Date: {date}. Machine: {os.cpu_count()} cores, {cpu_model()} "
          f"({', '.join(flags) if flags else 'no AVX-512, no VNNI'}); {threads} thread(s) per runtime; "
          f"load average {load[0]:.1f}. Python {platform.python_version()}, Paddle {paddle.__version__}, "
          f"torch {torch.__version__}.")
    print(f"Command: python benchmarks/bench_export.py --rounds {args.rounds} --images {args.images}"
          + (f" --weight-bits {args.weight_bits}" if args.weight_bits else ""))
    print(f"Export (Paddle + ONNX, no verification) took {export_seconds:.1f} s"
          + (f"; INT8 quantisation ({args.calibration} calibration images, {bits}-bit weights) "
             f"{quantize_seconds:.1f} s." if
             quantize_seconds else "."))
    print()
    print("| runtime | center crop (img/s) | vs torch | ten-crop (img/s) | vs torch |")
    print("|---|---|---|---|---|")
    base = {mode: statistics.median(times[("torch eager (torchvision)", mode)]) for mode in ("center", "ten-crop")}
    results = {}
    for name in runtimes:
        c, t = statistics.median(times[(name, "center")]), statistics.median(times[(name, "ten-crop")])
        results[name] = {"center": c, "ten-crop": t}
        print(f"| {name} | {c:.2f} | {c / base['center']:.2f}x | {t:.2f} | {t / base['ten-crop']:.2f}x |")
    if "ONNX Runtime INT8" in results:
        ratio = results["ONNX Runtime INT8"]["center"] / results["ONNX Runtime fp32"]["center"]
        print(f"\nINT8 against the fp32 ONNX export: {ratio:.2f}x (goal 1.8x: {'met' if ratio >= 1.8 else 'NOT met'}).")
    if args.output:
        Path(args.output).write_text(json.dumps({"date": date, "load_average": load, "threads": threads,
                                                 "cpu_flags": flags, "results": results,
                                                 "all": {f"{k[0]} / {k[1]}": v for k, v in times.items()}},
                                                indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))

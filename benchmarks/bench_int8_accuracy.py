"""INT8 against fp32 on real chest X-rays: the package's quantiser against plain ONNX Runtime quantisation.

There are no published CheXNet weights here, so the benchmark makes a trained
DenseNet-121 itself: it splits the real NIH sample (``../shared/data``) in two
halves by a seeded shuffle, trains on the first (``train.py``, 224 px, from
random initialisation), exports the fp32 ONNX model, calibrates INT8 on the
first half (standing in for a validation set) and compares INT8 with fp32 on
the second half, which the model never saw. Two quantisations of the same
model, with the same calibration images and weight bits:

* ``paddle_chexnet``: :func:`paddle_chexnet.inference.quantize.quantize_onnx`,
  what ``tools/export_model.py --quantize int8`` writes;
* plain ONNX Runtime: ``quantize_static`` alone (QOperator, per-channel weights,
  min/max calibration), which is what the export did before its graph edits.

Printed per method: the mean and largest probability difference, the largest
and mean per-class AUROC change (with the class's positives: on 100 images one
swapped pair of a class with p positives moves its AUROC by 1 / (p * (100 - p))),
and ONNX Runtime's throughput against the fp32 model; on the unseen half, then
on the whole sample (finer AUROC steps, but half of it was trained on).

Example:
    python benchmarks/bench_int8_accuracy.py --sample ../shared/data/chestxray14-sample
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from machine_info import cpu_summary  # benchmarks/machine_info.py (run as a script from any folder)

REPO = Path(__file__).resolve().parents[1]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sample", type=Path, default=REPO.parent / "shared" / "data" / "chestxray14-sample",
                        help="the real NIH sample (images/ and labels/sample_list.txt)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs on the first half")
    parser.add_argument("--seed", type=int, default=0, help="the split and the training")
    parser.add_argument("--weight-bits", type=int, choices=(7, 8), default=None,
                        help="INT8 weight bits (default: 8 on a processor with VNNI, else 7)")
    parser.add_argument("--work", type=Path, default=None, help="keep the split, the model and the exports here")
    return parser


def split_sample(sample: Path, work: Path, seed: int) -> tuple[Path, Path]:
    """The sample's label list shuffled (seeded) and cut in two halves: (first, second) list files."""
    lines = [line for line in (sample / "labels" / "sample_list.txt").read_text().splitlines() if line.strip()]
    random.Random(seed).shuffle(lines)
    half = len(lines) // 2
    (work / "labels").mkdir(parents=True, exist_ok=True)
    first, second = work / "labels" / "first_half.txt", work / "labels" / "second_half.txt"
    first.write_text("\n".join(lines[:half]) + "\n")
    second.write_text("\n".join(lines[half:]) + "\n")
    return first, second


def train(sample: Path, first: Path, work: Path, epochs: int, seed: int) -> Path:
    """DenseNet-121 trained on ``first`` with the repository's ``train.py``; its best weights."""
    command = [sys.executable, str(REPO / "train.py"), "--data-dir", str(sample), "--image-dir",
               str(sample / "images"), "--train-list", str(first), "--val-list", str(first),
               "--arch", "densenet121", "--resize", "256", "--crop", "224", "--epochs", str(epochs),
               "--batch-size", "8", "--lr", "0.001", "--optimizer", "adam", "--schedule", "constant",
               "--early-stopping-patience", "0", "--num-workers", "1", "--seed", str(seed),
               "--output-dir", str(work / "runs"), "--log-dir", str(work / "logs"), "--run-name", "half",
               "--overwrite", "--no-progress"]
    subprocess.run(command, check=True, cwd=REPO)
    return work / "runs" / "half" / "best.pdparams"


def plain_quantization(fp32: Path, out: Path, calibration: np.ndarray, weight_bits: int) -> Path:
    """ONNX Runtime's ``quantize_static`` alone, with the package's format, calibration and weight bits."""
    from onnxruntime import quantization as q

    from paddle_chexnet.inference.preprocess import INPUT_NAME

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.index = 0

        def get_next(self):
            if self.index >= len(calibration):
                return None
            self.index += 1
            return {INPUT_NAME: calibration[self.index - 1:self.index]}

    prepared = out.with_suffix(".prepared.onnx")
    q.quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    q.quantize_static(str(prepared), str(out), Reader(), quant_format=q.QuantFormat.QOperator, per_channel=True,
                      reduce_range=weight_bits == 7, activation_type=q.QuantType.QUInt8,
                      weight_type=q.QuantType.QInt8, calibrate_method=q.CalibrationMethod.MinMax)
    return out


def main(args: argparse.Namespace) -> int:
    import onnxruntime

    from paddle_chexnet.data.labels import CLASS_NAMES
    from paddle_chexnet.inference.bundle import ExportOptions, export_bundle
    from paddle_chexnet.inference.export_check import real_inputs
    from paddle_chexnet.inference.onnx_export import OnnxPredictor
    from paddle_chexnet.inference.quantize import check_int8, default_weight_bits, quantize_onnx

    if not (args.sample / "labels" / "sample_list.txt").is_file():
        print(f"error: {args.sample} is not the real sample (no labels/sample_list.txt); pass --sample",
              file=sys.stderr)
        return 1
    onnxruntime.set_default_logger_severity(3)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-int8-"))
    work.mkdir(parents=True, exist_ok=True)
    bits = args.weight_bits or default_weight_bits()
    first, second = split_sample(args.sample, work, args.seed)
    weights = train(args.sample, first, work, args.epochs, args.seed)
    export_bundle(weights, work / "export", ExportOptions(format="onnx", crop=224, verify=False, overwrite=True),
                  report=lambda text: None)
    fp32_path = work / "export" / "model.onnx"
    calibration = real_inputs(args.sample / "images", first)
    checked = real_inputs(args.sample / "images", second)
    fp32 = OnnxPredictor(fp32_path, None, CLASS_NAMES)

    methods = {
        "paddle_chexnet (tools/export_model.py --quantize int8)":
            quantize_onnx(fp32_path, work / "package.int8.onnx", calibration.batch, weight_bits=bits),
        "plain ONNX Runtime quantize_static":
            plain_quantization(fp32_path, work / "plain.int8.onnx", calibration.batch, bits),
    }
    whole = real_inputs(args.sample / "images", args.sample / "labels" / "sample_list.txt")
    positives = checked.labels.sum(axis=0).astype(int)
    print(f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Machine: {cpu_summary()}; "
          f"load average {os.getloadavg()[0]:.1f}.")
    print(f"Command: python benchmarks/bench_int8_accuracy.py --epochs {args.epochs} --seed {args.seed}"
          + (f" --weight-bits {args.weight_bits}" if args.weight_bits else ""))
    print(f"Model: DenseNet-121 trained {args.epochs} epochs on {len(calibration.names)} real images; INT8 with "
          f"{bits}-bit weights, calibrated on them; compared on the other {len(checked.names)} "
          f"(positives per class {positives.min()} to {positives.max()}) and on all {len(whole.names)}.")
    print()
    print("| INT8 method | compared on | mean abs prob diff | largest | largest AUROC change (class, positives) "
          "| mean AUROC change | INT8 img/s vs fp32 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    reports = {}
    for images, inputs in ((f"{len(checked.names)} unseen", checked), (f"all {len(whole.names)}", whole)):
        counts = inputs.labels.sum(axis=0).astype(int)
        for name, path in methods.items():
            report = check_int8(fp32, OnnxPredictor(path, None, CLASS_NAMES), inputs.batch, inputs.labels,
                                CLASS_NAMES, inputs.source, calibration.source, weight_bits=bits)
            reports.setdefault(name, report)
            worst = int(np.nanargmax(report.auroc_diff))
            speed = report.throughput["int8"] / report.throughput["fp32"]
            print(f"| {name} | {images} | {report.mean_prob_diff:.4f} | {report.max_prob_diff:.3f} | "
                  f"{report.max_auroc_diff:.4f} ({CLASS_NAMES[worst]}, {counts[worst]}) | "
                  f"{float(np.nanmean(report.auroc_diff)):.4f} | {speed:.2f}x |")
    print()
    print(reports[next(iter(methods))].format())
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))

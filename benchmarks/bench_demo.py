"""The README's quick start, timed: make the data, train the demo, evaluate, then score Grad-CAM boxes.

Runs the commands exactly as a user would (each in its own process, from the
repository's folder, with the data and outputs in a temporary folder) and
prints one Markdown table: wall time of each command, the demo's mean
validation AUROC per epoch and at the end, the test AUROC, and the share of
held-out lesions whose Grad-CAM box reaches IoU >= 0.3 (the localization table
of docs/localization.md).

Example:
    python benchmarks/bench_demo.py
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from machine_info import cpu_summary  # benchmarks/machine_info.py

REPO = Path(__file__).resolve().parents[1]


def run(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *command], check=False, cwd=REPO, env=env, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", default=None, help="folder to keep the outputs in (default: a temporary one)")
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="bench_demo_"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    data = root / "demo" / "ChestX-ray14-synthetic"
    times = {
        "make data": run(["tools/make_synthetic.py", "--output-dir", str(data)], env),
        "train (configs/demo.json)": run(["train.py", "--config", "configs/demo.json", "--data-dir", str(data),
                                          "--output-dir", str(root / "outputs"), "--log-dir", str(root / "logs"),
                                          "--no-progress"], env),
    }
    weights = root / "outputs" / "demo" / "best.pdparams"
    times["evaluate (center crop)"] = run(
        ["eval.py", "--weights", str(weights), "--data-dir", str(data), "--resize", "64", "--crop", "64",
         "--crops", "center", "--output-dir", str(root / "eval"), "--no-progress"], env)
    times["localize_eval (Grad-CAM, denseblock2)"] = run(
        ["tools/localize_eval.py", "--weights", str(weights), "--bbox-csv", str(data / "BBox_List_2017.csv"),
         "--data-dir", str(data / "images"), "--image-list", str(data / "labels" / "test_list.txt"),
         "--cam", "gradcam", "--layer", "denseblock2", "--resize", "64", "--max-boxes", "1",
         "--output-dir", str(root / "loc")], env)
    with open(root / "logs" / "demo" / "history.csv", newline="") as handle:
        history = [float(row["mean_auroc"]) for row in csv.DictReader(handle)]
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    with open(root / "loc" / "localization.csv", newline="") as handle:
        mean_row = next(row for row in csv.DictReader(handle) if row["finding"] == "Mean")

    print(f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Machine: {cpu_summary()}; "
          f"load average at the end {os.getloadavg()[0]:.1f}.")
    print("Command: `python benchmarks/bench_demo.py`\n")
    print("| step | wall time |\n|---|---:|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.1f} s |")
    print()
    print("| result | value |\n|---|---:|")
    print(f"| mean validation AUROC per epoch | {' / '.join(f'{v:.2f}' for v in history)} |")
    print(f"| best mean validation AUROC | {max(history):.3f} |")
    print(f"| mean test AUROC ({metrics['images']} images, center crop) | {metrics['mean_auroc']:.3f} |")
    print(f"| Grad-CAM boxes, mean over findings of accuracy at T(IoU)=0.3 | {float(mean_row['acc_iou@0.3']):.3f} |")


if __name__ == "__main__":
    main()

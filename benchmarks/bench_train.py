"""Training-step throughput on the CPU: train.py's Paddle step against a torch eager DenseNet-121 step.

Every variant runs in its own worker process (so flags such as oneDNN cannot
leak from one variant into another), built and warmed up once; then the main
process asks the workers for one timed step each, in turn, for several rounds,
so that the noise of a shared machine falls on all variants alike. Speed is
reported as images per second and as a ratio against torch in the same run,
both for wall time and for CPU time (all threads of the worker process).

Variants:
    torch            torchvision DenseNet-121 (14 outputs), BCEWithLogitsLoss, Adam (the reference)
    paddle_eager     train.py's step: paddle.Model(net).prepare(Adam, BCE).train_batch
    paddle_static    the same with the network under paddle.jit.to_static
    paddle_*_onednn  those two with FLAGS_use_onednn / FLAGS_use_mkldnn on
    paddle_legacy_static             paddle.Model in static-graph mode on the legacy (non-PIR) program
    paddle_legacy_static_onednn_conv the same with oneDNN kernels for conv2d and conv2d_grad only
                                     (the op attribute ``use_mkldnn``; the global flag fails in training)

Example:
    python benchmarks/bench_train.py --batch-size 8 --size 224 --rounds 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from machine_info import cpu_model  # benchmarks/machine_info.py (run as scripts from any folder)

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("torch", "paddle_eager", "paddle_static", "paddle_eager_onednn", "paddle_static_onednn",
            "paddle_legacy_static", "paddle_legacy_static_onednn_conv")
# variants that need Paddle's legacy (non-PIR) static graph, chosen before paddle is imported
LEGACY_IR = ("paddle_legacy_static", "paddle_legacy_static_onednn_conv")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8)
    parser.add_argument("--size", type=int, default=224, help="image side")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per variant, interleaved")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant before the rounds")
    parser.add_argument("--threads", type=int, default=2, help="threads for every framework")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ", ".join(VARIANTS))
    parser.add_argument("--arch", choices=["densenet121", "tiny"], default="densenet121",
                        help="'tiny' for a quick check that the script works")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser


# ---------------------------------------------------------------------------- workers


def _batch(batch_size: int, size: int, num_classes: int = 14):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, 3, size, size)).astype("float32")
    y = (rng.random((batch_size, num_classes)) < 0.3).astype("float32")
    return x, y


def _torch_step(args: argparse.Namespace):
    import torch
    import torchvision

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.arch == "tiny":
        net = torchvision.models.DenseNet(growth_rate=4, block_config=(1, 2), num_init_features=8, bn_size=2,
                                          num_classes=14)
    else:
        net = torchvision.models.densenet121(weights=None, num_classes=14)
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.999))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x, y = (torch.from_numpy(a) for a in _batch(args.batch_size, args.size))

    def step() -> float:
        optimizer.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        optimizer.step()
        return float(loss)

    return step


def _paddle_step(args: argparse.Namespace, static: bool, onednn: bool):
    import paddle

    from paddle_chexnet.densenet import DenseNet, chexnet
    from paddle_chexnet.losses import WeightedBCEWithLogits

    paddle.set_device("cpu")
    paddle.base.core.set_num_threads(args.threads)
    paddle.set_flags({"FLAGS_use_onednn": onednn, "FLAGS_use_mkldnn": onednn})
    paddle.seed(0)
    if args.arch == "tiny":
        net = DenseNet(growth_rate=4, block_config=(1, 2), num_init_features=8, bn_size=2, num_classes=14)
    else:
        net = chexnet()
    if static:
        net = paddle.jit.to_static(net, full_graph=True)
    # a to_static network hides forward's signature, so paddle.Model needs the input specs
    inputs = [paddle.static.InputSpec([None, 3, args.size, args.size], "float32", "image")]
    labels = [paddle.static.InputSpec([None, 14], "float32", "label")]
    model = paddle.Model(net, inputs, labels)
    model.prepare(paddle.optimizer.Adam(learning_rate=1e-3, parameters=net.parameters()), WeightedBCEWithLogits())
    x, y = _batch(args.batch_size, args.size)

    def step() -> float:
        return float(model.train_batch([x], [y])[0])

    return step


def _paddle_legacy_static_step(args: argparse.Namespace, onednn_conv: bool):
    import numpy as np
    import paddle

    paddle.enable_static()
    from paddle_chexnet.densenet import DenseNet, chexnet
    from paddle_chexnet.losses import WeightedBCEWithLogits

    paddle.set_device("cpu")
    paddle.base.core.set_num_threads(args.threads)
    paddle.seed(0)
    if args.arch == "tiny":
        net = DenseNet(growth_rate=4, block_config=(1, 2), num_init_features=8, bn_size=2, num_classes=14)
    else:
        net = chexnet()
    inputs = [paddle.static.InputSpec([None, 3, args.size, args.size], "float32", "image")]
    labels = [paddle.static.InputSpec([None, 14], "float32", "label")]
    model = paddle.Model(net, inputs, labels)
    model.prepare(paddle.optimizer.Adam(learning_rate=1e-3, parameters=net.parameters()), WeightedBCEWithLogits())
    if onednn_conv:
        # paddle.Model built its programs in prepare(); switch convolutions (96% of the step) to oneDNN
        for program in model._adapter._progs.values():
            for op in program.global_block().ops:
                if op.type in ("conv2d", "conv2d_grad"):
                    op._set_attr("use_mkldnn", True)
    x, y = _batch(args.batch_size, args.size)

    def step() -> float:
        return float(np.asarray(model.train_batch([x], [y])[0]).reshape(-1)[0])

    return step


def run_worker(args: argparse.Namespace) -> None:
    """Build the variant, warm it up, then time one step per line read from stdin."""
    variant = args.worker
    if variant == "torch":
        step = _torch_step(args)
    elif variant in LEGACY_IR:
        step = _paddle_legacy_static_step(args, onednn_conv=variant.endswith("onednn_conv"))
    else:
        step = _paddle_step(args, static="static" in variant, onednn=variant.endswith("onednn"))
    for _ in range(args.warmup):
        step()
    print(json.dumps({"ready": variant}), flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = step()
        print(json.dumps({"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - start_cpu,
                          "loss": loss}), flush=True)


# ---------------------------------------------------------------------------- orchestration


def _start(variant: str, args: argparse.Namespace, stderr) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if variant in LEGACY_IR:
        env["FLAGS_enable_pir_api"] = "0"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--batch-size", str(args.batch_size),
           "--size", str(args.size), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--arch", args.arch]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)


def _error_summary(stderr_path: Path) -> str:
    """The last error line a failed worker wrote (Paddle puts the reason on an 'Error' line)."""
    lines = [l.strip() for l in stderr_path.read_text(errors="replace").splitlines() if l.strip()]
    errors = [l for l in lines if "Error" in l and not l.startswith("File ")]
    return (errors or lines or ["no output"])[-1][:300]


def _read(proc: subprocess.Popen, variant: str) -> dict:
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {variant} exited with code {proc.wait()} (see its stderr above)")
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)


def main(args: argparse.Namespace) -> dict:
    if args.worker:
        run_worker(args)
        return {}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if variants[0] != "torch" and "torch" in variants:
        variants.remove("torch")
        variants.insert(0, "torch")
    # workers are built one after another so their start-up does not disturb each other
    workers: dict[str, subprocess.Popen] = {}
    failed: dict[str, str] = {}
    logs = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        for variant in list(variants):
            stderr_path = logs / f"{variant}.stderr"
            with open(stderr_path, "w") as stderr:
                workers[variant] = _start(variant, args, stderr)
            try:
                _read(workers[variant], variant)
            except RuntimeError:
                failed[variant] = _error_summary(stderr_path)
                variants.remove(variant)
                del workers[variant]
        times: dict[str, list[float]] = {v: [] for v in variants}
        cpu_times: dict[str, list[float]] = {v: [] for v in variants}
        losses: dict[str, float] = {}
        for _ in range(args.rounds):
            for variant in variants:
                workers[variant].stdin.write("step\n")
                workers[variant].stdin.flush()
                reply = _read(workers[variant], variant)
                times[variant].append(reply["seconds"])
                cpu_times[variant].append(reply["cpu_seconds"])
                losses[variant] = reply["loss"]
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                proc.stdin.close()
                proc.wait(timeout=60)
    # wall time is what a user waits; CPU time (all threads of the worker) is the work done, and
    # suffers less when other programs compete for the cores
    reference = statistics.median(times["torch"]) if "torch" in times else None
    reference_cpu = statistics.median(cpu_times["torch"]) if "torch" in cpu_times else None
    results = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "threads": args.threads},
        "command": "python benchmarks/bench_train.py " + " ".join(sys.argv[1:]),
        "batch_size": args.batch_size, "size": args.size, "rounds": args.rounds, "arch": args.arch,
        "variants": {},
        "failed": failed,
    }
    print(f"{'variant':34s} {'wall s/step':>11s} {'images/s':>9s} {'vs torch':>9s} {'CPU s/step':>11s} "
          f"{'vs torch':>9s}  per-round wall seconds")
    for variant in variants:
        median = statistics.median(times[variant])
        median_cpu = statistics.median(cpu_times[variant])
        ratio = reference / median if reference else float("nan")
        ratio_cpu = reference_cpu / median_cpu if reference_cpu else float("nan")
        results["variants"][variant] = {"seconds": times[variant], "median_seconds": median,
                                        "images_per_second": args.batch_size / median, "ratio_vs_torch": ratio,
                                        "cpu_seconds": cpu_times[variant], "median_cpu_seconds": median_cpu,
                                        "cpu_ratio_vs_torch": ratio_cpu, "last_loss": losses[variant]}
        print(f"{variant:34s} {median:11.3f} {args.batch_size / median:9.2f} {ratio:8.2f}x {median_cpu:11.3f} "
              f"{ratio_cpu:8.2f}x  " + " ".join(f"{t:.2f}" for t in times[variant]))
    for variant, reason in failed.items():
        print(f"{variant:34s} failed: {reason}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())

"""Every architecture of the registry on the CPU: size, cost, inference and training speed against torch eager.

For each architecture (one after another) these worker processes are started:

    torch        torchvision's network of the same name (14 outputs): a training step (BCEWithLogitsLoss, Adam)
                 and an eval-mode forward under ``torch.no_grad``, torch eager, the reference
    paddle       train.py's training step (``paddle.Model(net).prepare(Adam, BCE).train_batch`` with the
                 package's CPU settings, optimizer, loss, and the CPU training layers that
                 ``use_cpu_training_layers`` swaps in for this architecture), alone in its process as in
                 train.py
    paddle_infer inference by the plain network in the dynamic graph (eval mode) and by its
                 ``paddle.jit.save`` export run with Paddle Inference and oneDNN (eval.py's CPU path,
                 :class:`InferencePredictor`); a process of its own, as Paddle Inference's oneDNN and
                 thread settings would otherwise reach the training step
    paddle_plain (``--plain``) the training step without the CPU training layers (Paddle's own operators)
    paddle_no_X  (``--layer-variants X,Y+Z``) the training step without the CPU layer class X (or Y and Z)

Once built and warmed up, the workers take turns: for each round, one timed call of each measurement
in each worker, so that the noise of a shared machine falls on all alike. Reported per architecture:
parameters, multiply-adds of one 224x224 image (torch's FLOP counter / 2, torchvision's "GFLOPS"),
images per second (batch / median wall seconds) and the ratio against torch eager on the same batch,
for wall time and for CPU time (all threads of the worker).

Example:
    python benchmarks/bench_architectures.py --rounds 3 --json arch.json
    python benchmarks/bench_architectures.py --archs resnet18,efficientnet_b0 --rounds 2 --plain
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from machine_info import cpu_model  # benchmarks/machine_info.py (run as a script from any folder)

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 14


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--archs", default=None, help="comma-separated architectures (default: every listed one "
                                                      "but 'tiny')")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=8, help="training batch")
    parser.add_argument("--infer-batch", dest="infer_batch", type=int, default=10,
                        help="inference batch (eval.py's micro-batch: one image's ten crops)")
    parser.add_argument("--size", type=int, default=224, help="image side")
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per measurement, interleaved")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per measurement first")
    parser.add_argument("--threads", type=int, default=2, help="threads for every framework")
    parser.add_argument("--pause", type=float, default=0.3, help="seconds between two timed calls")
    parser.add_argument("--plain", action="store_true", help="also time paddle's step without the CPU layers")
    parser.add_argument("--layer-variants", dest="layer_variants", default="",
                        help="also time paddle's step without these CPU layer classes, one variant per comma "
                             "(e.g. Conv3x3,CpuBasicBlock+CpuBottleneck)")
    parser.add_argument("--skip-inference", dest="skip_inference", action="store_true",
                        help="time the training steps only")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--arch", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    return parser


# ---------------------------------------------------------------------------- workers


def _batch(batch_size: int, size: int):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch_size, 3, size, size)).astype("float32")
    y = (rng.random((batch_size, NUM_CLASSES)) < 0.3).astype("float32")
    return x, y


def _torch_worker(args: argparse.Namespace) -> tuple[dict, dict]:
    import torch
    import torchvision
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    build = getattr(torchvision.models, args.arch)
    net = build(weights=None, num_classes=NUM_CLASSES).train()
    evaluated = build(weights=None, num_classes=NUM_CLASSES).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        evaluated(torch.zeros(1, 3, 224, 224))
    info = {"parameters": sum(p.numel() for p in net.parameters()), "macs_224": counter.get_total_flops() / 2}
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.999))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x, y = (torch.from_numpy(a) for a in _batch(args.batch_size, args.size))
    xi = torch.from_numpy(_batch(args.infer_batch, args.size)[0])

    def train() -> None:
        optimizer.zero_grad()
        loss_fn(net(x), y).backward()
        optimizer.step()

    def infer() -> None:
        with torch.no_grad():
            evaluated(xi)

    return info, ({"train": train} if args.skip_inference else {"train": train, "infer": infer})


def _paddle_worker(args: argparse.Namespace, plain: bool, exclude: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """train.py's training step, in a process of its own (as train.py is)."""
    import paddle

    from paddle_chexnet.cpu.runtime import configure_cpu

    configure_cpu(args.threads)
    paddle.set_device("cpu")
    from paddle_chexnet.engine.losses import WeightedBCEWithLogits
    from paddle_chexnet.engine.optim import build_optimizer
    from paddle_chexnet.models.registry import build_network

    paddle.seed(0)
    net = build_network(args.arch, NUM_CLASSES)
    info = {"parameters": sum(int(p.size) for p in net.parameters())}
    if not plain:
        from paddle_chexnet.cpu.layers import use_cpu_training_layers

        info["cpu_layers"] = dict(use_cpu_training_layers(net, exclude))
    model = paddle.Model(net)
    model.prepare(build_optimizer("adam", net.parameters(), 1e-3), WeightedBCEWithLogits())
    x, y = _batch(args.batch_size, args.size)
    return info, {"train": lambda: model.train_batch([x], [y])}


def _paddle_inference_worker(args: argparse.Namespace) -> tuple[dict, dict]:
    """Inference by the plain network in the dynamic graph and by its Paddle Inference export (eval.py's CPU
    path), in a process of its own: Paddle Inference's oneDNN and thread settings must not reach the training
    step's process."""
    import paddle

    from paddle_chexnet.cpu.runtime import configure_cpu

    configure_cpu(args.threads)
    paddle.set_device("cpu")
    from paddle_chexnet.inference.predictors import DygraphPredictor, InferencePredictor
    from paddle_chexnet.models.registry import build_network

    paddle.seed(0)
    evaluated = build_network(args.arch, NUM_CLASSES)
    evaluated.eval()
    xi = _batch(args.infer_batch, args.size)[0]
    dygraph = DygraphPredictor(evaluated, micro_batch=None)
    exported = InferencePredictor.from_network(evaluated, tempfile.mkdtemp(prefix="bench_arch_export_"),
                                               crop=args.size, num_threads=args.threads, micro_batch=None)
    return {}, {"infer": lambda: dygraph(xi), "infer_pi": lambda: exported(xi)}


def run_worker(args: argparse.Namespace) -> None:
    """Build the networks, warm up, then answer each command with one timed call."""
    channel = socket.create_connection(("127.0.0.1", args.port)).makefile("rw")

    def send(message: dict) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    if args.worker == "torch":
        info, calls = _torch_worker(args)
    elif args.worker == "paddle_infer":
        info, calls = _paddle_inference_worker(args)
    elif args.worker.startswith("paddle_no_"):
        info, calls = _paddle_worker(args, plain=False, exclude=tuple(args.worker[len("paddle_no_"):].split("+")))
    else:
        info, calls = _paddle_worker(args, plain=args.worker == "paddle_plain")
    for call in calls.values():
        for _ in range(args.warmup):
            call()
    send({"ready": args.worker, "info": info, "calls": sorted(calls)})
    while True:
        command = channel.readline().strip()
        if command not in calls:
            break
        start, start_cpu = time.perf_counter(), time.process_time()
        calls[command]()
        send({"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - start_cpu})


# ---------------------------------------------------------------------------- orchestration


class _Worker:
    def __init__(self, kind: str, arch: str, args: argparse.Namespace, logs: Path) -> None:
        self.kind = kind
        self.stderr_path = logs / f"{arch}.{kind}.stderr"
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(1.0)
        threads = str(args.threads)
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
                   PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--arch", arch,
               "--port", str(listener.getsockname()[1]), "--batch-size", str(args.batch_size),
               "--infer-batch", str(args.infer_batch), "--size", str(args.size), "--warmup", str(args.warmup),
               "--threads", threads] + (["--skip-inference"] if args.skip_inference else [])
        with open(self.stderr_path, "w") as stderr:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, env=env)
        try:
            while True:
                try:
                    connection, _ = listener.accept()
                    break
                except socket.timeout:
                    if self.proc.poll() is not None:
                        raise RuntimeError(self.error_summary()) from None
        finally:
            listener.close()
        self.channel = connection.makefile("rw")
        self.ready = self.read()

    def error_summary(self) -> str:
        lines = [line.strip() for line in self.stderr_path.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if "Error" in line and not line.startswith("File ")]
        return (errors or lines or ["no output"])[-1][:300]

    def read(self) -> dict:
        line = self.channel.readline()
        if not line:
            self.proc.wait(timeout=60)
            raise RuntimeError(self.error_summary())
        return json.loads(line)

    def call(self, command: str) -> dict:
        self.channel.write(command + "\n")
        self.channel.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.channel.write("stop\n")
                self.channel.flush()
                self.proc.wait(timeout=120)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def measure(arch: str, args: argparse.Namespace, logs: Path) -> dict:
    """One architecture: start its workers one after another, then interleave their timed calls."""
    kinds = (["torch", "paddle"] + ([] if args.skip_inference else ["paddle_infer"])
             + (["paddle_plain"] if args.plain else [])
             + [f"paddle_no_{v}" for v in args.layer_variants.split(",") if v])
    workers: dict[str, _Worker] = {}
    started = time.perf_counter()
    try:
        for kind in kinds:
            workers[kind] = _Worker(kind, arch, args, logs)
        times: dict[str, dict[str, list]] = {k: {c: [] for c in w.ready["calls"]} for k, w in workers.items()}
        cpu: dict[str, dict[str, list]] = {k: {c: [] for c in w.ready["calls"]} for k, w in workers.items()}
        for _ in range(args.rounds):
            for command in ("train", "infer", "infer_pi"):
                for kind, worker in workers.items():
                    if command in times[kind]:
                        time.sleep(args.pause)
                        reply = worker.call(command)
                        times[kind][command].append(reply["seconds"])
                        cpu[kind][command].append(reply["cpu_seconds"])
    finally:
        for worker in workers.values():
            worker.close()
    info = {**workers["paddle"].ready["info"], "macs_224": workers["torch"].ready["info"]["macs_224"],
            "torch_parameters": workers["torch"].ready["info"]["parameters"]}
    return {"arch": arch, "info": info, "seconds": times, "cpu_seconds": cpu,
            "elapsed": time.perf_counter() - started}


def _rate(result: dict, kind: str, command: str, batch: int, clock: str = "seconds") -> float | None:
    values = result[clock].get(kind, {}).get(command)
    return batch / statistics.median(values) if values else None


def summarise(results: list[dict], args: argparse.Namespace) -> str:
    """The Markdown table (images/s; ratio = paddle / torch, above 1 is faster than torch)."""
    header = ("| architecture | parameters | multiply-adds (224 px) | inference torch | Paddle Inference | ratio "
              "| dygraph | ratio | training torch | paddle (`train.py`) | ratio | ratio, CPU time |")
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    for result in results:
        info = result["info"]
        row = [f"`{result['arch']}`", f"{info['parameters'] / 1e6:.1f} M", f"{info['macs_224'] / 1e9:.2f} G"]
        torch_infer = _rate(result, "torch", "infer", args.infer_batch)
        for command in ("infer_pi", "infer"):
            if command == "infer_pi":
                row.append(f"{torch_infer:.1f}" if torch_infer else "-")
            rate = _rate(result, "paddle_infer", command, args.infer_batch)
            row += [f"{rate:.1f}" if rate else "-",
                    f"{rate / torch_infer:.2f}x" if rate and torch_infer else "-"]
        torch_train = _rate(result, "torch", "train", args.batch_size)
        paddle_train = _rate(result, "paddle", "train", args.batch_size)
        torch_cpu = _rate(result, "torch", "train", args.batch_size, "cpu_seconds")
        paddle_cpu = _rate(result, "paddle", "train", args.batch_size, "cpu_seconds")
        row += [f"{torch_train:.2f}", f"{paddle_train:.2f}", f"**{paddle_train / torch_train:.2f}x**",
                f"{paddle_cpu / torch_cpu:.2f}x"]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("CPU training layers swapped in (`use_cpu_training_layers`): " + "; ".join(
        f"{r['arch']}: " + (", ".join(f"{n} x{c}" for n, c in sorted(r['info'].get('cpu_layers', {}).items()))
                            or "none") for r in results))
    variants = [k for k in results[0]["seconds"] if k.startswith("paddle_") and k != "paddle_infer"
                ] if results else []
    if variants:
        lines.append("")
        lines.append("Training images/s of paddle's step with all the CPU layers and without some (speed-up of "
                     "the full set over each):")
        lines.append("")
        lines.append("| architecture | all CPU layers | " + " | ".join(
            "none (Paddle's operators)" if v == "paddle_plain" else "without " + v[len("paddle_no_"):]
            for v in variants) + " |")
        lines.append("|---" * (len(variants) + 2) + "|")
        for result in results:
            full = _rate(result, "paddle", "train", args.batch_size)
            cells = []
            for variant in variants:
                rate = _rate(result, variant, "train", args.batch_size)
                cells.append(f"{rate:.2f} ({full / rate:.2f}x)" if rate else "-")
            lines.append(f"| `{result['arch']}` | {full:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _registered() -> list[str]:
    """The ``--arch`` choices of this checkout's registry (asked in a child process that imports it)."""
    code = "from paddle_chexnet.models.registry import architecture_names; print(' '.join(architecture_names()))"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.split()


def main(args: argparse.Namespace) -> dict:
    if args.worker:
        run_worker(args)
        return {}
    archs = args.archs.split(",") if args.archs else [a for a in _registered() if a != "tiny"]
    logs = Path(tempfile.mkdtemp(prefix="bench_architectures_"))
    load = os.getloadavg()[0]
    started = time.perf_counter()
    results = []
    for arch in archs:
        result = measure(arch, args, logs)
        results.append(result)
        print(f"{arch}: {result['elapsed']:.0f} s", file=sys.stderr, flush=True)
    table = summarise(results, args)
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "threads": args.threads,
                    "load_average_start": load, "load_average_end": os.getloadavg()[0]},
        "command": "python benchmarks/bench_architectures.py " + " ".join(sys.argv[1:]),
        "batch_size": args.batch_size, "infer_batch": args.infer_batch, "size": args.size, "rounds": args.rounds,
        "minutes": (time.perf_counter() - started) / 60, "results": results, "table": table,
    }
    print(f"{report['date']}, {report['machine']}, {report['minutes']:.1f} min\n{report['command']}\n")
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main(get_args_parser().parse_args())

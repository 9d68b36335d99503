"""Training-step throughput on the CPU: train.py's Paddle step against a torch eager DenseNet-121 step.

Every variant runs in its own worker process (so flags such as oneDNN cannot
leak from one variant into another), built and warmed up once; then the main
process asks the workers for one timed step each, in turn, for several rounds,
so that the noise of a shared machine falls on all variants alike. Speed is
reported as images per second and as a ratio against torch in the same run,
both for wall time and for CPU time (all threads of the worker process),
with the minor page faults of the timed step (median).

Variants (the default run: torch, paddle_eager, paddle_static, paddle_dp):
    torch            torchvision DenseNet-121 (14 outputs), BCEWithLogitsLoss, Adam (the reference)
    paddle_eager     train.py's step: paddle.Model(net).prepare(Adam, BCE).train_batch, with train.py's
                     CPU settings (paddle_chexnet.cpu.runtime), CPU layers and optimizer (paddle_chexnet.engine.optim)
    paddle_static    the same with the network under paddle.jit.to_static (train.py --to-static)
    paddle_dp        train.py's step data-parallel over the cores: paddle.distributed.launch starts one
                     process per thread (gloo), each with one thread and its share of the batch
    paddle_eager_per_param_adam  paddle_eager with Paddle's per-parameter Adam kernel (what optim avoids)
    paddle_eager_no_cpu_kernels  paddle_eager without the package's C++ CPU kernels (PADDLE_CHEXNET_CPU_KERNELS=0:
                                 Paddle's operators, with the fold path for 3x3 convolutions)
    paddle_eager_conv2d          paddle_eager_no_cpu_kernels with Paddle's own 3x3 convolution (no fold path)
    paddle_eager_mkl_default     paddle_eager without MKL_DEBUG_CPU_TYPE (MKL's own code path)
    paddle_eager_glibc_heap      paddle_eager with glibc's default heap behaviour (cpu.runtime.keep_freed_memory
                                 not called; setting any MALLOC_* variable would not do: it turns off glibc's
                                 own adaptive mmap threshold too)
    paddle_eager_mkl_avx2        paddle_eager with MKL_DEBUG_CPU_TYPE=5 (MKL's AVX2 kernels, where the package
                                 would pick its AVX-512 ones on an AMD processor that has them)
    paddle_*_onednn  paddle_eager / paddle_static with FLAGS_use_onednn / FLAGS_use_mkldnn on
    paddle_legacy_static             paddle.Model in static-graph mode on the legacy (non-PIR) program
    paddle_legacy_static_onednn_conv the same with oneDNN kernels for conv2d and conv2d_grad only
                                     (the op attribute ``use_mkldnn``; the global flag fails in training)

Workers talk to the main process over local sockets, one per process, so that a
variant that runs several processes (paddle_dp) is driven like the others: each
rank gets the command, the step's gradient all-reduce keeps them in step, and
the step takes as long as its slowest rank and costs the CPU time of all.

Example:
    python benchmarks/bench_train.py --batch-size 8 --size 224 --rounds 5
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from machine_info import (
    cpu_model,  # benchmarks/machine_info.py (run as scripts from any folder)
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VARIANTS = ("torch", "paddle_eager", "paddle_static", "paddle_dp")
VARIANTS = DEFAULT_VARIANTS + ("paddle_eager_no_cpu_kernels", "paddle_eager_glibc_heap", "paddle_eager_per_param_adam",
                               "paddle_eager_mkl_default", "paddle_eager_mkl_avx2", "paddle_eager_conv2d",
                               "paddle_eager_onednn",
                               "paddle_static_onednn", "paddle_legacy_static", "paddle_legacy_static_onednn_conv")
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
    parser.add_argument("--settle", type=int, default=1,
                        help="untimed steps just before each timed one, so that the timed step runs as in a "
                             "training loop, right after another step of its own")
    parser.add_argument("--pause", type=float, default=0.5,
                        help="seconds between two timed steps, so that the threads of the variant that just ran "
                             "(OpenMP keeps them spinning for up to 0.2 s) have gone to sleep")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help="comma-separated, from " + ", ".join(VARIANTS))
    parser.add_argument("--arch", choices=["densenet121", "tiny"], default="densenet121",
                        help="'tiny' for a quick check that the script works")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
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


def _tiny_or_chexnet(args: argparse.Namespace):
    from paddle_chexnet.models.registry import build_network

    return build_network(args.arch, num_classes=14)


def _paddle_step(args: argparse.Namespace, variant: str):
    """train.py's step: its CPU settings, network, optimizer and loss, under paddle.Model."""
    import paddle

    from paddle_chexnet.cpu.runtime import configure_cpu
    from paddle_chexnet.engine.losses import WeightedBCEWithLogits
    from paddle_chexnet.engine.optim import build_optimizer

    processes = paddle.distributed.get_world_size()
    if variant == "paddle_eager_glibc_heap":
        import paddle_chexnet.cpu.runtime

        paddle_chexnet.cpu.runtime.keep_freed_memory = lambda: False  # leave glibc's malloc as it is
    configure_cpu(args.threads // processes)  # paddle_eager_mkl_*: the MKL_DEBUG_CPU_TYPE given is kept
    if variant == "paddle_eager_conv2d":
        import paddle_chexnet.cpu.fold

        paddle_chexnet.cpu.fold.MIN_PIXELS = 1 << 62  # never take the fold path
    onednn = variant.endswith("onednn")
    paddle.set_device("cpu")
    paddle.set_flags({"FLAGS_use_onednn": onednn, "FLAGS_use_mkldnn": onednn})
    paddle.seed(0)
    net = _tiny_or_chexnet(args)
    if "static" in variant:
        net = paddle.jit.to_static(net, full_graph=True)
    else:  # as train.py on the CPU: the kernels built first, the CPU-training layers swapped in
        from paddle_chexnet.cpu.layers import use_cpu_training_layers

        use_cpu_training_layers(net)
    # a to_static network hides forward's signature, so paddle.Model needs the input specs
    inputs = [paddle.static.InputSpec([None, 3, args.size, args.size], "float32", "image")]
    labels = [paddle.static.InputSpec([None, 14], "float32", "label")]
    model = paddle.Model(net, inputs, labels)
    if variant == "paddle_eager_per_param_adam":
        optimizer = paddle.optimizer.Adam(learning_rate=1e-3, parameters=net.parameters())
    else:
        optimizer = build_optimizer("adam", net.parameters(), 1e-3)
    model.prepare(optimizer, WeightedBCEWithLogits())
    x, y = _batch(args.batch_size, args.size)
    rank = paddle.distributed.get_rank()
    share = args.batch_size // processes
    x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]

    def step() -> float:
        return float(model.train_batch([x], [y])[0])

    return step


def _paddle_legacy_static_step(args: argparse.Namespace, onednn_conv: bool):
    import numpy as np
    import paddle

    paddle.enable_static()
    from paddle_chexnet.cpu.runtime import configure_cpu
    from paddle_chexnet.engine.losses import WeightedBCEWithLogits
    from paddle_chexnet.engine.optim import build_optimizer

    configure_cpu(args.threads)
    paddle.set_device("cpu")
    paddle.seed(0)
    net = _tiny_or_chexnet(args)
    inputs = [paddle.static.InputSpec([None, 3, args.size, args.size], "float32", "image")]
    labels = [paddle.static.InputSpec([None, 14], "float32", "label")]
    model = paddle.Model(net, inputs, labels)
    model.prepare(build_optimizer("adam", net.parameters(), 1e-3), WeightedBCEWithLogits())
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


class _Commands:
    """Each process (each rank of paddle_dp) takes 'step' lines from the main process over its own socket."""

    def __init__(self, port: int):
        self.channel = socket.create_connection(("127.0.0.1", port)).makefile("rw")

    def send(self, message: dict) -> None:
        self.channel.write(json.dumps(message) + "\n")
        self.channel.flush()

    def next_is_step(self) -> bool:
        return self.channel.readline().strip() == "step"


def run_worker(args: argparse.Namespace) -> None:
    """Build the variant, warm it up, then time one step per 'step' command."""
    variant = args.worker
    if variant == "torch":
        step = _torch_step(args)
    elif variant in LEGACY_IR:
        step = _paddle_legacy_static_step(args, onednn_conv=variant.endswith("onednn_conv"))
    else:
        step = _paddle_step(args, variant)
    commands = _Commands(args.port)
    for _ in range(args.warmup):
        step()
    commands.send({"ready": variant})
    while commands.next_is_step():
        for _ in range(args.settle):
            step()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = step()
        commands.send({"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - start_cpu,
                       "loss": loss, "page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults})


# ---------------------------------------------------------------------------- orchestration


class _Worker:
    """One variant's process (or, for paddle_dp, paddle.distributed.launch and its processes)."""

    def __init__(self, variant: str, args: argparse.Namespace, logs: Path):
        self.variant = variant
        self.stderr_path = logs / f"{variant}.stderr"
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(1.0)
        port = listener.getsockname()[1]
        threads = str(args.threads)
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
                   PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        if variant in LEGACY_IR:
            env["FLAGS_enable_pir_api"] = "0"
        if variant == "paddle_eager_mkl_default":
            env["MKL_DEBUG_CPU_TYPE"] = ""  # present, so paddle_chexnet keeps it; empty, so MKL ignores it
        if variant == "paddle_eager_mkl_avx2":
            env["MKL_DEBUG_CPU_TYPE"] = "5"
        if variant in ("paddle_eager_no_cpu_kernels", "paddle_eager_conv2d"):
            env["PADDLE_CHEXNET_CPU_KERNELS"] = "0"
        cmd = [sys.executable]
        if variant == "paddle_dp":
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
            cmd += ["-m", "paddle.distributed.launch", "--nproc_per_node", threads, "--log_dir", str(logs / "dp")]
        cmd += [str(Path(__file__).resolve()), "--worker", variant, "--port", str(port),
                "--batch-size", str(args.batch_size), "--size", str(args.size), "--warmup", str(args.warmup),
                "--settle", str(args.settle),
                "--threads", threads, "--arch", args.arch]
        with open(self.stderr_path, "w") as stderr:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, env=env)
        self.channels = []
        processes = args.threads if variant == "paddle_dp" else 1
        try:
            while len(self.channels) < processes:
                try:
                    connection, _ = listener.accept()
                except socket.timeout:
                    if self.proc.poll() is not None:
                        raise RuntimeError(self.error_summary()) from None
                    continue
                self.channels.append(connection.makefile("rw"))
        finally:
            listener.close()

    def error_summary(self) -> str:
        """The last error line the worker wrote (Paddle puts the reason on an 'Error' line)."""
        paths = [self.stderr_path, *sorted((self.stderr_path.parent / "dp").glob("workerlog.*"))]
        lines = [l.strip() for path in paths if path.is_file()
                 for l in path.read_text(errors="replace").splitlines() if l.strip()]
        errors = [l for l in lines if "Error" in l and not l.startswith("File ")]
        return (errors or lines or ["no output"])[-1][:300]

    def read(self) -> dict:
        """One message from every process; a step lasts as long as the slowest and costs the CPU of all."""
        replies = []
        for channel in self.channels:
            line = channel.readline()
            if not line:
                self.proc.wait(timeout=60)
                raise RuntimeError(self.error_summary())
            replies.append(json.loads(line))
        if "seconds" not in replies[0]:
            return replies[0]
        return {"seconds": max(r["seconds"] for r in replies), "cpu_seconds": sum(r["cpu_seconds"] for r in replies),
                "loss": replies[0]["loss"], "page_faults": sum(r["page_faults"] for r in replies)}

    def _send(self, line: str) -> None:
        for channel in self.channels:
            channel.write(line + "\n")
            channel.flush()

    def step(self) -> dict:
        self._send("step")
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send("stop")
                self.proc.wait(timeout=120)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


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
    workers: dict[str, _Worker] = {}
    failed: dict[str, str] = {}
    logs = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        for variant in list(variants):
            try:
                workers[variant] = _Worker(variant, args, logs)
                workers[variant].read()  # ready
            except RuntimeError as exc:
                failed[variant] = str(exc)
                variants.remove(variant)
                workers.pop(variant, None)
        times: dict[str, list[float]] = {v: [] for v in variants}
        cpu_times: dict[str, list[float]] = {v: [] for v in variants}
        faults: dict[str, list[int]] = {v: [] for v in variants}
        losses: dict[str, float] = {}
        for _ in range(args.rounds):
            for variant in variants:
                time.sleep(args.pause)
                reply = workers[variant].step()
                times[variant].append(reply["seconds"])
                cpu_times[variant].append(reply["cpu_seconds"])
                faults[variant].append(reply["page_faults"])
                losses[variant] = reply["loss"]
    finally:
        for worker in workers.values():
            worker.close()
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
          f"{'vs torch':>9s} {'faults':>7s}  per-round wall seconds")
    for variant in variants:
        median = statistics.median(times[variant])
        median_cpu = statistics.median(cpu_times[variant])
        ratio = reference / median if reference else float("nan")
        ratio_cpu = reference_cpu / median_cpu if reference_cpu else float("nan")
        results["variants"][variant] = {"seconds": times[variant], "median_seconds": median,
                                        "images_per_second": args.batch_size / median, "ratio_vs_torch": ratio,
                                        "cpu_seconds": cpu_times[variant], "median_cpu_seconds": median_cpu,
                                        "cpu_ratio_vs_torch": ratio_cpu, "last_loss": losses[variant],
                                        "page_faults": faults[variant]}
        print(f"{variant:34s} {median:11.3f} {args.batch_size / median:9.2f} {ratio:8.2f}x {median_cpu:11.3f} "
              f"{ratio_cpu:8.2f}x {statistics.median(faults[variant]):7.0f}  "
              + " ".join(f"{t:.2f}" for t in times[variant]))
    for variant, reason in failed.items():
        print(f"{variant:34s} failed: {reason}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(get_args_parser().parse_args())

"""GPU self-check: does training and evaluation work, and how fast, on this machine's GPU?

Run it first on a new GPU machine (AI Studio included); it takes a few minutes on one GPU.
It prints a table and writes a JSON file (``--output``, default ``gpu_check.json``) with the
device, the Paddle/CUDA/cuDNN versions and every figure: attach that file to a bug report
about GPU training. The checks:

* ``eval``: ``eval.py``'s GPU path (dynamic graph) against its CPU path (Paddle Inference +
  oneDNN) on 8 images, ten-crop at 224 px: probabilities within 1e-4.
* ``train-fp32``, ``train-amp``: DenseNet-121 training steps at 224 px, fp32 and AMP O1
  (``paddle.Model`` as ``train.py`` prepares it): images/s and peak GPU memory.
* ``demo``: a short ``run_training`` of the quick start's demo; its training loss must fall.
* ``to-static``: training with ``--to-static`` (the network compiled to a static graph).
* ``launch``: ``train.py`` under ``python -m paddle.distributed.launch`` on one GPU.
* ``loader``: the training data loader's rate (decode, resize, crop, to the GPU) against
  the rate at which the GPU consumes images (the ``train-*`` figures).

Each check runs in its own process, so a crash or an out-of-memory error in one is reported
and the others still run. The images are generated (1024 px synthetic X-rays, as large as
NIH's) unless ``--images`` names a folder of real ones. Without a GPU (or with a CPU build of
Paddle) it says so and exits 0 at once; ``--cpu-dry-run`` runs every check at tiny sizes on
the CPU, which is how CI tests this script. Exit status 1 when a check failed.

Examples:
    python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --images /home/aistudio/data/data12345/images --output gpu_check.json
    python benchmarks/gpu_check.py --cpu-dry-run --output /tmp/gpu_check.json
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import io
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT_MARK = "GPU_CHECK_RESULT "
PARITY_TOLERANCE = 1e-4
EVAL_IMAGES = 8


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each check is: :data:`FULL` on a GPU, :data:`DRY_RUN` on the CPU."""

    arch: str            # network of the speed, eval and launch checks
    resize: int          # eval / speed / loader input: resize, then crop
    crop: int
    crops: str           # eval's protocol
    batch_size: int      # training steps and loader
    warmup_steps: int
    timed_steps: int
    image_size: int      # generated images for eval and the loader (NIH's are 1024 px)
    loader_images: int
    loader_batches: int
    loader_workers: int
    demo_arch: str       # the demo, --to-static and launch runs (64 px synthetic set)
    demo_images: int
    demo_epochs: int
    demo_batch_size: int
    demo_steps: int | None  # steps per epoch (None: all)
    short_steps: int     # steps of the --to-static and launch runs
    timeout: int         # seconds per check


FULL = Sizes(arch="densenet121", resize=256, crop=224, crops="ten", batch_size=32, warmup_steps=5, timed_steps=20,
             image_size=1024, loader_images=160, loader_batches=12, loader_workers=4, demo_arch="densenet121",
             demo_images=600, demo_epochs=3, demo_batch_size=16, demo_steps=None, short_steps=10, timeout=900)
DRY_RUN = Sizes(arch="tiny", resize=40, crop=32, crops="center", batch_size=4, warmup_steps=1, timed_steps=3,
                image_size=128, loader_images=24, loader_batches=4, loader_workers=1, demo_arch="tiny",
                demo_images=60, demo_epochs=3, demo_batch_size=8, demo_steps=5, short_steps=2, timeout=600)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("gpu_check.json"), help="the JSON report")
    parser.add_argument("--device", default="gpu:0", help="the GPU to check (gpu:N)")
    parser.add_argument("--images", type=Path, default=None,
                        help="a folder of real X-rays (PNG/JPEG) for the eval and loader checks "
                             "(default: generated 1024 px images)")
    parser.add_argument("--num-workers", "--num_workers", dest="num_workers", type=int, default=None,
                        help="data-loader processes of the loader check (default: 4, at most the cores)")
    parser.add_argument("--work-dir", "--work_dir", dest="work_dir", type=Path, default=None,
                        help="keep the generated data, weights and runs here (default: a temporary folder, removed)")
    parser.add_argument("--only", nargs="+", default=None, metavar="CHECK", help="run only these checks")
    parser.add_argument("--cpu-dry-run", "--cpu_dry_run", dest="cpu_dry_run", action="store_true",
                        help="run every check at tiny sizes on the CPU (tests the script; the figures mean nothing)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)    # internal: run one check
    parser.add_argument("--settings", default=None, help=argparse.SUPPRESS)  # internal: its settings (JSON)
    return parser


# ---------------------------------------------------------------- environment


def _nvidia_smi() -> list[dict[str, str]]:
    if shutil.which("nvidia-smi") is None:
        return []
    fields = "name,driver_version,memory.total,compute_cap"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [[v.strip() for v in line.split(",")] for line in out.stdout.strip().splitlines() if line.strip()]
    return [dict(zip(fields.split(","), row)) for row in rows] if out.returncode == 0 else []


def environment() -> dict[str, Any]:
    """The machine, Paddle, CUDA/cuDNN, the GPUs, and the Paddle wheels installed (a CPU and a GPU one: trouble)."""
    import paddle

    import paddle_chexnet
    from paddle_chexnet.data.images import opencv
    from paddle_chexnet.utils.compat import paddle_distributions
    from paddle_chexnet.utils.system import usable_cores

    compiled = bool(paddle.device.is_compiled_with_cuda())
    gpus = []
    if compiled:
        for index in range(paddle.device.cuda.device_count()):
            props = paddle.device.cuda.get_device_properties(index)
            gpus.append({"index": index, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 2),
                         "compute_capability": f"{props.major}.{props.minor}"})
    cv2 = opencv()
    return {
        "paddle_chexnet": paddle_chexnet.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_cores": usable_cores(),
        "paddle": paddle.__version__,
        "paddle_commit": getattr(paddle.version, "commit", None),
        "paddle_wheels": [f"{name}=={version}" for name, version in
                          paddle_distributions(Path(paddle.__file__).resolve().parents[1])],
        "compiled_with_cuda": compiled,
        "cuda": str(paddle.version.cuda()) if compiled else None,
        "cudnn": str(paddle.version.cudnn()) if compiled else None,
        "gpus": gpus,
        "nvidia_smi": _nvidia_smi(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "opencv": cv2.__version__ if cv2 is not None else None,
    }


# ---------------------------------------------------------------- data the checks share


def prepare_data(work: Path, sizes: Sizes, images: Path | None) -> dict[str, str]:
    """Generated data sets (and label lists over ``images`` when given); returns their paths."""
    from paddle_chexnet.data.images import list_images
    from paddle_chexnet.data.labels import CLASS_NAMES
    from paddle_chexnet.data.synthetic import make_dataset

    demo = make_dataset(work / "demo-data", num_images=sizes.demo_images, image_size=128, seed=0)
    paths = {"demo_data": str(demo.root)}
    if images is None:
        large = make_dataset(work / "large-data", num_images=sizes.loader_images, image_size=sizes.image_size,
                             seed=1, val_fraction=0.1, test_fraction=0.1)
        image_dir, names = large.image_dir, [r.name for r in large.records]
    else:
        files = list_images(images)[:max(sizes.loader_images, EVAL_IMAGES)]
        image_dir, names = images, [str(p.relative_to(images)) for p in files]
    zeros = " ".join(["0"] * len(CLASS_NAMES))  # real images come without labels: the checks need none
    lists = work / "lists"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "eval.txt").write_text("".join(f"{n} {zeros}\n" for n in names[:EVAL_IMAGES]))
    (lists / "loader.txt").write_text("".join(f"{n} {zeros}\n" for n in names))
    paths.update(image_dir=str(image_dir), eval_list=str(lists / "eval.txt"), loader_list=str(lists / "loader.txt"))
    return paths


# ---------------------------------------------------------------- the checks (each runs in its own process)


def _quietly(function: Callable, *args: Any) -> Any:
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args)


def _train_config(settings: dict, **values: Any):
    from paddle_chexnet.engine.config import TrainConfig

    work = Path(settings["work"])
    base = dict(data_dir=settings["demo_data"], device=settings["device"], output_dir=str(work / "outputs"),
                log_dir=str(work / "logs"), progress=False, schedule="constant", early_stopping_patience=0,
                resize=64, crop=64, optimizer="adam", lr=1e-3, num_workers=0, seed=0)
    base.update(values)
    return TrainConfig(**base)


def check_eval(settings: dict, sizes: Sizes) -> dict[str, Any]:
    """``eval.py`` on the GPU (dynamic graph) and on the CPU (Paddle Inference): same probabilities."""
    import numpy as np
    import paddle

    from paddle_chexnet.cli import evaluate
    from paddle_chexnet.data.labels import CLASS_NAMES
    from paddle_chexnet.models.registry import build_network
    from paddle_chexnet.utils.io import atomic_paddle_save

    work = Path(settings["work"])
    paddle.seed(0)
    weights = work / "weights" / f"{sizes.arch}.pdparams"
    atomic_paddle_save(build_network(sizes.arch, num_classes=len(CLASS_NAMES), class_names=CLASS_NAMES).state_dict(),
                       weights)
    common = ["--weights", str(weights), "--image-dir", settings["image_dir"], "--label-list", settings["eval_list"],
              "--resize", str(sizes.resize), "--crop", str(sizes.crop), "--crops", sizes.crops, "--batch-size", "8",
              "--num-workers", "0", "--no-progress", "--no-plot", "--cache-dir", str(work / "export-cache")]
    # eval.py's own choice on a GPU (auto: the dynamic graph); the same backend on the CPU in a dry run
    gpu_backend = "auto" if name_is_gpu(settings) else "dygraph"
    runs = {}
    for name, extra in [("gpu", ["--device", settings["device"], "--backend", gpu_backend]),
                        ("cpu", ["--device", "cpu", "--backend", "inference"])]:
        args = evaluate.get_args_parser().parse_args([*common, *extra, "--output-dir", str(work / f"eval-{name}")])
        runs[name] = _quietly(evaluate.run, args)
    difference = float(np.abs(runs["gpu"].probs - runs["cpu"].probs).max())
    return {
        "ok": bool(difference <= PARITY_TOLERANCE),
        "summary": f"max |p_gpu - p_cpu| {difference:.1e} on {len(runs['gpu'].names)} images "
                   f"({sizes.crops}-crop, {sizes.crop} px; bound {PARITY_TOLERANCE:g}); "
                   f"{runs['gpu'].images_per_second:.1f} vs {runs['cpu'].images_per_second:.1f} images/s",
        "max_abs_difference": difference,
        "images": len(runs["gpu"].names),
        "backends": {name: run.backend for name, run in runs.items()},
        "images_per_second": {name: float(run.images_per_second) for name, run in runs.items()},
    }


def name_is_gpu(settings: dict) -> bool:
    return settings["device"].startswith("gpu")


def _synchronize() -> None:
    import paddle

    if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        paddle.device.cuda.synchronize()


def _peak_memory_gib() -> float | None:
    import paddle

    if not (paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0):
        return None
    return round(paddle.device.cuda.max_memory_allocated() / 2**30, 3)


def check_training_speed(settings: dict, sizes: Sizes, amp: bool) -> dict[str, Any]:
    """Training steps of ``sizes.arch`` at ``sizes.crop`` px on random batches: images/s and peak memory."""
    import numpy as np
    import paddle

    from paddle_chexnet.data.labels import CLASS_NAMES
    from paddle_chexnet.engine import trainer
    from paddle_chexnet.engine.losses import make_loss
    from paddle_chexnet.engine.optim import build_optimizer
    from paddle_chexnet.utils.device import prepare_device

    config = _train_config(settings, arch=sizes.arch, resize=sizes.resize, crop=sizes.crop,
                           batch_size=sizes.batch_size)
    prepare_device(config.device)
    trainer.seed_everything(0)
    net = trainer.build_network(config, len(CLASS_NAMES), CLASS_NAMES)
    model = trainer.build_model(net, config, len(CLASS_NAMES))
    # as run_training prepares it
    model.prepare(optimizer=build_optimizer(config.optimizer, net.parameters(), config.lr), loss=make_loss(),
                  amp_configs="O1" if amp else None)
    rng = np.random.default_rng(0)
    images = paddle.to_tensor(rng.standard_normal((sizes.batch_size, 3, sizes.crop, sizes.crop)).astype("float32"))
    labels = paddle.to_tensor((rng.random((sizes.batch_size, len(CLASS_NAMES))) < 0.2).astype("float32"))
    losses = [float(np.ravel(model.train_batch([images], [labels])[0])[0]) for _ in range(sizes.warmup_steps)]
    _synchronize()
    started = time.perf_counter()
    for _ in range(sizes.timed_steps):
        losses.append(float(np.ravel(model.train_batch([images], [labels])[0])[0]))
    _synchronize()
    seconds = time.perf_counter() - started
    rate = sizes.timed_steps * sizes.batch_size / seconds
    peak = _peak_memory_gib()
    finite = bool(all(math.isfinite(v) for v in losses))
    return {
        "ok": finite,
        "summary": f"{rate:.1f} images/s, batch {sizes.batch_size} at {sizes.crop} px"
                   + (f", peak memory {peak:.2f} GiB" if peak is not None else "")
                   + ("" if finite else f"; NON-FINITE loss {losses}"),
        "images_per_second": rate,
        "peak_memory_gib": peak,
        "batch_size": sizes.batch_size,
        "crop": sizes.crop,
        "steps": sizes.timed_steps,
        "amp": "O1" if amp else None,
        "losses": losses,
    }


def _history(result) -> list[dict[str, Any]]:
    return [{k: float(row[k]) for k in ("epoch", "train_loss", "val_loss", "mean_auroc", "time_s")}
            for row in result.history]


def check_demo(settings: dict, sizes: Sizes) -> dict[str, Any]:
    """The demo's training (``run_training``) for a few epochs: the training loss falls."""
    from paddle_chexnet.engine.trainer import run_training

    config = _train_config(settings, arch=sizes.demo_arch, epochs=sizes.demo_epochs,
                           batch_size=sizes.demo_batch_size, max_steps_per_epoch=sizes.demo_steps,
                           num_workers=2 if name_is_gpu(settings) else 0, run_name="demo")
    result = run_training(config)
    losses = [row["train_loss"] for row in result.history]
    losses = [float(v) for v in losses]
    falls = bool(len(losses) >= 2 and all(math.isfinite(v) for v in losses) and losses[-1] < losses[0])
    return {
        "ok": falls,
        "summary": f"train loss {' -> '.join(f'{v:.3f}' for v in losses)} over {len(losses)} epochs"
                   f"{'' if falls else ' (DID NOT FALL)'}; mean val AUROC {result.history[-1]['mean_auroc']:.3f}",
        "history": _history(result),
    }


def check_to_static(settings: dict, sizes: Sizes) -> dict[str, Any]:
    """``train.py --to-static``: the network compiled to a static graph trains (finite loss, checkpoint)."""
    from paddle_chexnet.engine.trainer import run_training

    started = time.perf_counter()
    config = _train_config(settings, arch=sizes.demo_arch, epochs=1, batch_size=sizes.demo_batch_size,
                           max_steps_per_epoch=sizes.short_steps, to_static=True, run_name="to-static")
    result = run_training(config)
    loss = float(result.history[-1]["train_loss"])
    ok = bool(math.isfinite(loss) and result.best_checkpoint is not None)
    return {"ok": ok, "summary": f"{sizes.short_steps} steps, train loss {loss:.3f}, "
                                 f"{time.perf_counter() - started:.0f} s with compilation",
            "history": _history(result)}


def check_launch(settings: dict, sizes: Sizes) -> dict[str, Any]:
    """``python -m paddle.distributed.launch`` on one device running ``train.py``."""
    work = Path(settings["work"])
    device = settings["device"]
    placement = ["--devices", device.split(":")[1] if ":" in device else "0"] if name_is_gpu(settings) else \
        ["--nproc_per_node", "1"]
    command = [sys.executable, "-m", "paddle.distributed.launch", *placement, "--log_dir", str(work / "launch-logs"),
               str(REPO_ROOT / "train.py"), "--data-dir", settings["demo_data"], "--arch", sizes.demo_arch,
               "--epochs", "1", "--max-steps-per-epoch", str(sizes.short_steps), "--batch-size",
               str(sizes.demo_batch_size), "--resize", "64", "--crop", "64", "--num-workers", "0",
               "--device", "gpu" if name_is_gpu(settings) else "cpu", "--output-dir", str(work / "outputs"),
               "--log-dir", str(work / "logs"), "--run-name", "launch", "--no-progress"]
    started = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, cwd=work, timeout=sizes.timeout)
    meta_file = work / "outputs" / "launch" / "best.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    ok = out.returncode == 0 and meta.get("world_size") == 1
    logs = sorted((work / "launch-logs").glob("*"))
    tail = logs[-1].read_text(errors="replace")[-1500:] if logs else out.stderr[-1500:]
    return {"ok": ok, "summary": f"exit {out.returncode}, world size {meta.get('world_size')}, "
                                 f"{time.perf_counter() - started:.0f} s",
            "returncode": out.returncode, "log_tail": None if ok else tail}


def check_loader(settings: dict, sizes: Sizes) -> dict[str, Any]:
    """The training data loader (train.py's, ``--num-workers`` processes) feeding batches: images/s."""
    from paddle_chexnet.engine import trainer
    from paddle_chexnet.utils.device import prepare_device

    workers = settings["num_workers"]
    config = _train_config(settings, data_dir=str(Path(settings["image_dir"]).parent), image_dir=settings["image_dir"],
                           train_list=settings["loader_list"], val_list=settings["eval_list"], resize=sizes.resize,
                           crop=sizes.crop, batch_size=sizes.batch_size, num_workers=workers)
    prepare_device(config.device)
    train, val = trainer.build_datasets(config)
    loader, _, sampler = trainer.build_loaders(config, train, val)
    batches = images = 0
    started = None
    epoch = 0
    while batches < sizes.loader_batches + 1:
        sampler.set_epoch(epoch)
        for image_batch, _labels in loader:
            if started is None:  # the first batch includes starting the workers
                started = time.perf_counter()
            else:
                images += int(image_batch.shape[0])
            batches += 1
            if batches >= sizes.loader_batches + 1:
                break
        epoch += 1
    rate = images / (time.perf_counter() - started)
    consume = {k: v for k, v in settings.get("consume", {}).items() if v}
    fastest = max(consume.values()) if consume else None
    keeps_up = fastest is None or rate >= fastest
    summary = f"{rate:.1f} images/s with {workers} worker(s), {sizes.resize}->{sizes.crop} px"
    if fastest is not None:
        summary += (f"; the GPU consumes up to {fastest:.1f} images/s: "
                    + ("the loader keeps up" if keeps_up else "INPUT-BOUND: more --num-workers (cores permitting) "
                                                              "or a cache of decoded images would help"))
    return {"ok": True, "warning": not keeps_up, "summary": summary, "images_per_second": rate, "workers": workers,
            "consume_images_per_second": consume}


CHECKS: dict[str, tuple[str, Callable[[dict, Sizes], dict[str, Any]]]] = {
    "eval": ("eval.py GPU vs CPU inference", check_eval),
    "train-fp32": ("training steps, fp32", lambda s, z: check_training_speed(s, z, amp=False)),
    "train-amp": ("training steps, AMP O1", lambda s, z: check_training_speed(s, z, amp=True)),
    "demo": ("demo run (loss falls)", check_demo),
    "to-static": ("--to-static training", check_to_static),
    "launch": ("paddle.distributed.launch, 1 device", check_launch),
    "loader": ("data loader vs GPU", check_loader),
}


def run_worker(name: str, settings: dict) -> int:
    """Run one check in this process and print its result as the last line."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    sizes = Sizes(**settings["sizes"])
    started = time.perf_counter()
    result = CHECKS[name][1](settings, sizes)
    result["seconds"] = round(time.perf_counter() - started, 2)
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


def run_check(name: str, settings: dict, sizes: Sizes) -> dict[str, Any]:
    """One check in a fresh process (clean GPU memory figures; a crash is reported, not fatal)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--settings", json.dumps(settings)]
    env = dict(os.environ)
    if settings["device"] == "cpu":  # a dry run checks the GPU code paths: the C++ CPU kernels are not among them
        env["PADDLE_CHEXNET_CPU_KERNELS"] = "0"
    started = time.perf_counter()
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=sizes.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "summary": f"did not finish in {sizes.timeout} s", "seconds": sizes.timeout}
    lines = [line for line in out.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if out.returncode != 0 or not lines:
        error = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"ok": False, "summary": f"exit {out.returncode}: {error}"[:300], "stderr_tail": out.stderr[-4000:],
                "seconds": round(time.perf_counter() - started, 2)}
    return json.loads(lines[-1][len(RESULT_MARK):])


# ---------------------------------------------------------------- report


def status(result: dict[str, Any]) -> str:
    return "FAIL" if not result["ok"] else "warn" if result.get("warning") else "ok"


def table(report: dict[str, Any]) -> str:
    env = report["environment"]
    gpu = next((g["name"] for g in env["gpus"]), "no GPU")
    head = (f"paddle-chexnet {env['paddle_chexnet']} GPU check ({report['mode']}): {gpu}; Paddle {env['paddle']}"
            + (f" (CUDA {env['cuda']}, cuDNN {env['cudnn']})" if env["compiled_with_cuda"] else " (CPU build)")
            + (f", driver {env['nvidia_smi'][0]['driver_version']}" if env["nvidia_smi"] else ""))
    rows = [("check", "status", "seconds", "result")]
    for name, result in report["checks"].items():
        rows.append((CHECKS[name][0], status(result), f"{result.get('seconds', 0):.0f}", result["summary"]))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [head, ""] + [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in rows]
    return "\n".join(lines)


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(staging, path)


def main(args: argparse.Namespace) -> int:
    if args.worker:
        return run_worker(args.worker, json.loads(args.settings))
    selected = args.only or list(CHECKS)
    unknown = sorted(set(selected) - set(CHECKS))
    if unknown:
        print(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}", file=sys.stderr)
        return 1
    from paddle_chexnet.utils.device import gpu_available, nvidia_gpu_present

    started = time.perf_counter()
    report: dict[str, Any] = {"tool": "benchmarks/gpu_check.py", "command": sys.argv,
                              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "environment": environment(), "checks": {}}
    if not args.cpu_dry_run and not gpu_available():
        env = report["environment"]
        if not env["compiled_with_cuda"]:
            reason = (f"this Paddle ({', '.join(env['paddle_wheels']) or env['paddle']}) is a CPU build"
                      + ("; an NVIDIA GPU is present: install paddlepaddle-gpu for its CUDA (docs/install.md)"
                         if nvidia_gpu_present() else ""))
        else:
            reason = f"Paddle sees no GPU (CUDA_VISIBLE_DEVICES={env['cuda_visible_devices']!r})"
        report.update(mode="no-gpu", reason=reason)
        write_report(args.output, report)
        print(f"no GPU to check: {reason}. Nothing run; environment written to {args.output} "
              "(--cpu-dry-run runs the checks on the CPU at tiny sizes)")
        return 0

    sizes = DRY_RUN if args.cpu_dry_run else FULL
    from paddle_chexnet.utils.system import usable_cores

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    report["mode"] = "cpu-dry-run" if args.cpu_dry_run else "gpu"
    settings = {"work": str(work.resolve()), "device": "cpu" if args.cpu_dry_run else args.device,
                "sizes": dataclasses.asdict(sizes),
                "num_workers": args.num_workers if args.num_workers is not None
                else min(sizes.loader_workers, usable_cores()), "consume": {}}
    try:
        settings.update(prepare_data(work, sizes, args.images))
        for name in selected:
            print(f"running {name} ...", flush=True)
            result = run_check(name, settings, sizes)
            report["checks"][name] = result
            if name.startswith("train-") and result["ok"]:
                settings["consume"][name] = result["images_per_second"]
            write_report(args.output, report)  # a report even if the machine dies halfway
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_report(args.output, report)
    print(table(report))
    print(f"\nJSON report: {args.output} (attach it to a bug report about GPU training)")
    return 0 if all(r["ok"] for r in report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))

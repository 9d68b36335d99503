"""End-to-end ten-crop evaluation throughput: eval.py's CPU path vs the PyTorch reference vs plain Paddle.

Three pipelines on the same real images, PNG decoding included, each in its
own process (so its peak memory can be measured), interleaved round by round
so that load from other programs hits all of them alike:

* ``paddle-fast``: what ``eval.py`` runs on a CPU: worker-process decoding, one
  batch of B*10 crops, Paddle Inference + oneDNN on the cached export.
* ``torch-reference``: CheXNet's PyTorch evaluation: ``convert('RGB')``,
  torchvision ``Resize(256)``, ``TenCrop(224)``, ``ToTensor``+``Normalize`` per
  crop, a ``DataLoader`` with the same number of workers, torch eager
  DenseNet-121 (torchvision) with a sigmoid head, crops averaged per image.
* ``paddle-dygraph``: the plain Paddle port: :class:`ChestXray14Dataset` with
  :class:`EvalTransform`, loaded in the main process, dynamic graph on Paddle's
  own operators (the package's C++ CPU kernels turned off).

Random weights: speed does not depend on their values. Throughput is images
per second from the first batch to the last (process start, imports and model
construction are reported separately as "startup"). Peak memory is the
maximum resident set of the pipeline's process and of its loader processes.

Example:
    python benchmarks/bench_eval.py --data-dir ../shared/data/chestxray14-sample --limit 40 --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
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

PIPELINES = ("paddle-fast", "torch-reference", "paddle-dygraph", "paddle-fast-mp")
DEFAULT_PIPELINES = PIPELINES[:3]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", "--data_dir", default=str(REPO.parent / "shared" / "data" / "chestxray14-sample"),
                        help="folder with images/ and labels/sample_list.txt")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images (quicker run)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the three pipelines")
    parser.add_argument("--batch-size", "--batch_size", type=int, default=8, help="images per batch (x10 crops)")
    parser.add_argument("--num-workers", "--num_workers", type=int, default=1,
                        help="loader processes for paddle-fast and torch-reference")
    parser.add_argument("--micro-batch", "--micro_batch", type=int, default=None,
                        help="paddle-fast: crops per network call (default: eval.py's, 10 on a CPU; 0 = whole batch)")
    parser.add_argument("--threads", type=int, default=None, help="math threads (default: all cores)")
    parser.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(DEFAULT_PIPELINES),
                        help="paddle-fast-mp: eval.py --processes CORES (one single-thread model per core)")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    parser.add_argument("--worker", choices=PIPELINES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    return parser


def _peak_mb() -> float:
    """Peak RSS of this process and of its (waited-for) children, MB (Linux reports KB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return own * scale, children * scale


def _image_list(args):
    """The sample's label list, cut to ``--limit`` images."""
    from paddle_chexnet.data.label_lists import read_label_list

    labels = read_label_list(Path(args.data_dir) / "labels" / "sample_list.txt")
    if args.limit:
        labels = labels.subset(labels.names[: args.limit])
    return labels


def run_paddle_fast(args, threads: int) -> dict:
    from paddle_chexnet.data.datasets import ChestXray14Dataset
    from paddle_chexnet.evaluation.evaluate import predict_dataset
    from paddle_chexnet.inference.predictors import load_predictor

    dataset = ChestXray14Dataset(Path(args.data_dir) / "images", _image_list(args))
    predictor = load_predictor(args.weights, "inference", "cpu", 224, args.cache_dir, threads, args.micro_batch)
    start = time.perf_counter()
    predict_dataset(predictor, dataset, "ten", 256, 224, args.batch_size, args.num_workers, progress=False)
    return {"seconds": time.perf_counter() - start, "images": len(dataset)}


def run_paddle_fast_mp(args, threads: int) -> dict:
    from paddle_chexnet.data.datasets import ChestXray14Dataset
    from paddle_chexnet.evaluation.evaluate import predict_dataset_parallel
    from paddle_chexnet.inference.predictors import load_predictor

    dataset = ChestXray14Dataset(Path(args.data_dir) / "images", _image_list(args))
    predictor = load_predictor(args.weights, "inference", "cpu", 224, args.cache_dir, threads, args.micro_batch)
    start = time.perf_counter()  # includes starting the processes
    predict_dataset_parallel(predictor, dataset, threads, "ten", 256, 224, args.batch_size, progress=False)
    return {"seconds": time.perf_counter() - start, "images": len(dataset)}


def run_paddle_dygraph(args, threads: int) -> dict:
    # plain Paddle: its own CPU operators, not the package's C++ kernels (paddle_chexnet/cpu)
    os.environ["PADDLE_CHEXNET_CPU_KERNELS"] = "0"
    import numpy as np
    import paddle

    from paddle_chexnet.data.datasets import ChestXray14Dataset
    from paddle_chexnet.data.transforms import EvalTransform
    from paddle_chexnet.inference.predictors import load_predictor

    paddle.set_device("cpu")
    dataset = ChestXray14Dataset(Path(args.data_dir) / "images", _image_list(args), EvalTransform("ten"))
    predictor = load_predictor(args.weights, "dygraph", "cpu", 224, micro_batch=0)  # plain: the whole batch
    start = time.perf_counter()
    for first in range(0, len(dataset), args.batch_size):
        crops = np.concatenate([dataset[i][0] for i in range(first, min(first + args.batch_size, len(dataset)))])
        predictor(crops).reshape(-1, 10, 14).mean(axis=1)
    return {"seconds": time.perf_counter() - start, "images": len(dataset)}


def run_torch_reference(args, threads: int) -> dict:
    import torch
    import torchvision
    from PIL import Image
    from torchvision import transforms

    torch.set_num_threads(threads)
    labels = _image_list(args)
    paths = [Path(args.data_dir) / "images" / name for name in labels.names]
    normalize = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    transform = transforms.Compose([
        transforms.Resize(256),
        transforms.TenCrop(224),
        transforms.Lambda(lambda crops: torch.stack([transforms.ToTensor()(crop) for crop in crops])),
        transforms.Lambda(lambda crops: torch.stack([normalize(crop) for crop in crops])),
    ])

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            return transform(Image.open(paths[i]).convert("RGB"))

    net = torchvision.models.densenet121(weights=None)
    net.classifier = torch.nn.Sequential(torch.nn.Linear(1024, 14), torch.nn.Sigmoid())
    net.eval()
    loader = torch.utils.data.DataLoader(Images(), batch_size=args.batch_size, num_workers=args.num_workers)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            bs, n_crops, c, h, w = batch.shape
            net(batch.view(-1, c, h, w)).view(bs, n_crops, -1).mean(1)
    return {"seconds": time.perf_counter() - start, "images": len(paths)}


def worker(args) -> None:
    """One pipeline in this process; prints a JSON line with its timing and memory."""
    born = float(os.environ.get("BENCH_STARTED", time.time()))
    threads = args.threads or len(os.sched_getaffinity(0))
    runner = {"paddle-fast": run_paddle_fast, "paddle-dygraph": run_paddle_dygraph, "paddle-fast-mp": run_paddle_fast_mp,
              "torch-reference": run_torch_reference}[args.worker]
    before = time.time()
    result = runner(args, threads)
    own, children = _peak_mb()
    result.update(pipeline=args.worker, images_per_second=result["images"] / result["seconds"],
                  startup_seconds=before - born + (time.time() - before - result["seconds"]),
                  peak_rss_mb=own, peak_loader_rss_mb=children, threads=threads)
    print("RESULT " + json.dumps(result), flush=True)


def _make_weights(folder: Path) -> Path:
    import paddle

    from paddle_chexnet import chexnet
    from paddle_chexnet.utils.io import atomic_paddle_save

    paddle.seed(0)
    path = folder / "random_chexnet.pdparams"
    atomic_paddle_save(chexnet().state_dict(), path)
    return path


def main(args: argparse.Namespace) -> dict:
    if args.worker:
        worker(args)
        return {}
    work = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    weights = _make_weights(work)
    cache = work / "cache"
    started = time.perf_counter()
    from paddle_chexnet.inference.export import cached_export

    cached_export(weights, 224, cache)  # export once, as eval.py's cache would have it
    export_seconds = time.perf_counter() - started
    runs: dict[str, list[dict]] = {p: [] for p in args.pipelines}
    common = ["--data-dir", args.data_dir, "--batch-size", str(args.batch_size), "--num-workers",
              str(args.num_workers), "--weights", str(weights), "--cache-dir", str(cache)]
    if args.limit:
        common += ["--limit", str(args.limit)]
    if args.threads:
        common += ["--threads", str(args.threads)]
    if args.micro_batch is not None:
        common += ["--micro-batch", str(args.micro_batch)]
    for round_no in range(args.rounds):
        order = args.pipelines[round_no % len(args.pipelines):] + args.pipelines[: round_no % len(args.pipelines)]
        for pipeline in order:
            env = dict(os.environ, BENCH_STARTED=str(time.time()))
            env.pop("OMP_NUM_THREADS", None)  # let each framework use the cores it is given
            proc = subprocess.run([sys.executable, __file__, "--worker", pipeline, *common], env=env,
                                  capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(f"{pipeline} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            result = json.loads(lines[-1][len("RESULT "):])
            runs[pipeline].append(result)
            print(f"round {round_no + 1} {pipeline:<16} {result['images_per_second']:6.3f} img/s  "
                  f"({result['images']} images in {result['seconds']:.1f} s; peak RSS {result['peak_rss_mb']:.0f} MB "
                  f"+ loaders {result['peak_loader_rss_mb']:.0f} MB)", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    summary = summarize(runs, args, export_seconds)
    print(format_summary(summary))
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def summarize(runs: dict[str, list[dict]], args, export_seconds: float) -> dict:
    best = {p: max(r["images_per_second"] for r in rs) for p, rs in runs.items()}
    median = {p: statistics.median(r["images_per_second"] for r in rs) for p, rs in runs.items()}
    summary = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu": cpu_model(),
                    "python": platform.python_version()},
        "images": runs[next(iter(runs))][0]["images"],
        "batch_size": args.batch_size, "num_workers": args.num_workers, "rounds": args.rounds,
        "micro_batch": args.micro_batch,
        "export_seconds": round(export_seconds, 1),
        "best_images_per_second": best, "median_images_per_second": median,
        "peak_rss_mb": {p: max(r["peak_rss_mb"] for r in rs) for p, rs in runs.items()},
        "peak_loader_rss_mb": {p: max(r["peak_loader_rss_mb"] for r in rs) for p, rs in runs.items()},
        "startup_seconds": {p: round(min(r["startup_seconds"] for r in rs), 1) for p, rs in runs.items()},
        "runs": runs,
    }
    if "paddle-fast" in best:
        summary["speedup_best"] = {p: best["paddle-fast"] / v for p, v in best.items() if p != "paddle-fast"}
        summary["speedup_median"] = {p: median["paddle-fast"] / v for p, v in median.items() if p != "paddle-fast"}
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"{summary['images']} images, ten-crop, batch {summary['batch_size']} images "
             f"({summary['batch_size'] * 10} crops), {summary['rounds']} interleaved rounds; "
             f"{summary['machine']['affinity']} cores, {summary['machine']['cpu']}",
             f"{'pipeline':<16} {'best img/s':>10} {'median':>8} {'x fast':>7} {'peak RSS MB':>12} {'+loaders':>9}"]
    fast = summary["best_images_per_second"].get("paddle-fast")
    for p, v in summary["best_images_per_second"].items():
        ratio = f"{fast / v:.2f}" if fast else "-"
        lines.append(f"{p:<16} {v:>10.3f} {summary['median_images_per_second'][p]:>8.3f} {ratio:>7} "
                     f"{summary['peak_rss_mb'][p]:>12.0f} {summary['peak_loader_rss_mb'][p]:>9.0f}")
    lines.append(f"one-time export for Paddle Inference: {summary['export_seconds']} s (cached afterwards)")
    return "\n".join(lines)


if __name__ == "__main__":
    main(get_args_parser().parse_args())

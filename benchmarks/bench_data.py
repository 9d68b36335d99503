"""Data-path throughput: images/s the loader delivers to the training step, PNG vs the image cache; build speed.

Measured on the real sample images (1024x1024 NIH PNGs), in one process, in this order:

* ``loader``: a ``paddle.io.DataLoader`` over the training dataset with the
  seeded random crop + flip (no network), with 0, 1 and 2 worker processes:
    - ``png``: ``ChestXray14Dataset`` + ``TrainTransform`` (decode, resize, float32 crop), what train.py does today;
    - ``cache-float``: the cache read through ``TrainTransform`` (no decode or resize; float32 crops between processes);
    - ``cache-uint8``: the cache with ``Uint8TrainTransform(channels=1)``: uint8 crops between processes, uint8
      batches delivered (what a GPU receives; it normalises them itself, ``normalize_uint8``);
    - ``cache-uint8+norm``: the same, then ``normalize_uint8`` with Paddle's CPU kernels in the main process
      (what a CPU-only run would pay for the uint8 path).
  Time runs from the first batch (worker start-up excluded) to the last; the
  cache variants read the sample's images over and over (``--cache-images``).
* ``build``: ``build_cache`` of the sample with 1 and 2 workers (images/s), and
  the decode+resize cost per image at each size in this process; from them the
  projected size and build time of all 112,120 NIH images.
* ``--end-to-end``: one epoch of
  ``run_training(TrainConfig(arch='tiny', ...))`` with and without
  ``TrainConfig(cache=CACHE)``, and ten-crop ``evaluate`` of a tiny network on the
  PNG dataset and on ``CachedDataset``.

Prints a Markdown section for BENCHMARKS.md.

Example (from the repository root; about two minutes on 2 cores, three with --end-to-end):
    python benchmarks/bench_data.py --data-dir ../shared/data/chestxray14-sample
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from machine_info import cpu_model  # benchmarks/machine_info.py (run as a script from any folder)

NIH_IMAGES = 112_120
SIZES = (224, 256, 320, 512)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"
                                                  / "chestxray14-sample"),
                        help="folder with images/ and labels/sample_list.txt")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="loader processes to try")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch")
    parser.add_argument("--resize", type=int, default=256, help="shorter side (the cache's --size)")
    parser.add_argument("--crop", type=int, default=224, help="random crop")
    parser.add_argument("--png-images", type=int, default=None, help="images per PNG loader run (default: all)")
    parser.add_argument("--cache-images", type=int, default=3200, help="images per cache loader run")
    parser.add_argument("--size-images", type=int, default=20, help="images timed per size for the projection")
    parser.add_argument("--end-to-end", action="store_true",
                        help="also time a --arch tiny training epoch (needs TrainConfig.cache) and ten-crop evaluate")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the end-to-end evaluation")
    parser.add_argument("--eval-images", type=int, default=48, help="images of the end-to-end evaluation")
    parser.add_argument("--train-images", type=int, default=None,
                        help="images of the end-to-end training epoch (and of its validation; default: all)")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    return parser


def _batches(n_images: int, total: int, batch_size: int, seed: int = 0) -> list[list[int]]:
    """``total`` indices (whole shuffled passes over ``n_images``) cut into batches."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(n_images) for _ in range(-(-total // n_images))])[:total]
    return [order[i:i + batch_size].tolist() for i in range(0, total, batch_size)]


def loader_rate(dataset, batches: list[list[int]], workers: int, normalise: bool) -> dict:
    """Steady images/s: from the batch after the pipeline fill to the last; normalised (on the CPU) when ``normalise``.

    The first ``workers`` batches are worked on together while the workers start,
    so the clock starts when batch ``workers`` (0-based) arrives.
    """
    import paddle

    from paddle_chexnet.data.uint8 import normalize_uint8

    loader = paddle.io.DataLoader(dataset, batch_sampler=batches, num_workers=workers, return_list=True)
    started = time.perf_counter()
    count = 0
    clock = None
    for i, (images, _) in enumerate(loader):
        if normalise:
            images = normalize_uint8(images)
        if i == workers:
            clock = time.perf_counter()
            startup = clock - started
        elif clock is not None:
            count += images.shape[0]
    seconds = time.perf_counter() - clock
    return {"images": count, "seconds": seconds, "images_per_s": count / seconds, "startup_s": startup}


def bench_loader(args, images_dir: Path, labels_path: Path, cache_dir: Path) -> list[dict]:
    from paddle_chexnet.data.cache import CachedDataset
    from paddle_chexnet.data.datasets import ChestXray14Dataset
    from paddle_chexnet.data.label_lists import read_label_list
    from paddle_chexnet.data.sampling import SeededAugmentation
    from paddle_chexnet.data.transforms import TrainTransform
    from paddle_chexnet.data.uint8 import Uint8TrainTransform

    labels = read_label_list(labels_path)
    n = len(labels)
    variants = {
        "png": (lambda: ChestXray14Dataset(images_dir, labels, TrainTransform(args.resize, args.crop)),
                args.png_images or n, False),
        "cache-float": (lambda: CachedDataset(cache_dir, labels, TrainTransform(args.resize, args.crop),
                                              resize=args.resize), args.cache_images, False),
        "cache-uint8": (lambda: CachedDataset(cache_dir, labels, Uint8TrainTransform(args.resize, args.crop,
                                                                                     channels=1),
                                              resize=args.resize), args.cache_images, False),
    }
    variants["cache-uint8+norm"] = (variants["cache-uint8"][0], args.cache_images, True)
    rows = []
    for workers in args.workers:
        for name, (make, total, normalise) in variants.items():
            dataset = SeededAugmentation(make(), seed=0)
            row = {"variant": name, "workers": workers,
                   **loader_rate(dataset, _batches(n, total, args.batch_size), workers, normalise)}
            print(f"loader {name:12s} workers={workers}: {row['images_per_s']:8.1f} images/s "
                  f"({row['images']} in {row['seconds']:.2f} s, start-up {row['startup_s']:.2f} s)", flush=True)
            rows.append(row)
    return rows


def bench_build(args, images_dir: Path, work: Path) -> dict:
    from paddle_chexnet.data.cache_build import build_cache, encode_image

    paths = sorted(images_dir.glob("*.png"))
    out = {"builds": [], "sizes": []}
    for workers in (1, 2):
        target = work / f"build-{workers}"
        result = build_cache(images_dir, target, size=args.resize, workers=workers, progress=False)
        out["builds"].append({"workers": workers, "images": result.encoded, "seconds": result.seconds,
                              "images_per_s": result.encoded / result.seconds})
        print(f"build workers={workers}: {result.encoded / result.seconds:.1f} images/s", flush=True)
        shutil.rmtree(target)
    sample = paths[: args.size_images]
    for size in SIZES:
        encode_image(sample[0], size)  # warm
        started = time.perf_counter()
        stored = sum(encode_image(p, size).nbytes for p in sample)
        ms = (time.perf_counter() - started) * 1000 / len(sample)
        out["sizes"].append({"size": size, "ms_per_image_one_core": ms, "bytes_per_image": stored / len(sample),
                             "projected_gib": NIH_IMAGES * stored / len(sample) / 2**30,
                             "projected_hours_one_core": NIH_IMAGES * ms / 1000 / 3600})
        print(f"size {size}: {ms:.1f} ms per image on one core, {stored / len(sample) / 1e3:.1f} kB per image",
              flush=True)
    return out


def bench_end_to_end(args, images_dir: Path, labels_path: Path, cache_dir: Path, work: Path) -> dict:
    """A tiny training epoch with and without TrainConfig(cache=...), and ten-crop evaluate with and without."""
    import paddle

    from paddle_chexnet.data.cache import CachedDataset
    from paddle_chexnet.data.datasets import ChestXray14Dataset
    from paddle_chexnet.data.label_lists import read_label_list, write_label_list
    from paddle_chexnet.engine.config import TrainConfig
    from paddle_chexnet.engine.trainer import run_training
    from paddle_chexnet.evaluation.evaluate import evaluate
    from paddle_chexnet.inference.predictors import DygraphPredictor
    from paddle_chexnet.models.registry import build_network

    out: dict = {"train": [], "eval": []}
    workers = max(args.workers)
    labels = read_label_list(labels_path)
    if args.train_images:
        labels_path = work / "train_list.txt"
        write_label_list(labels_path, labels.subset(labels.names[: args.train_images]))
    for name, extra in (("png", {}), ("cache", {"cache": str(cache_dir)})):
        config = TrainConfig(image_dir=str(images_dir), train_list=str(labels_path), val_list=str(labels_path),
                             arch="tiny", epochs=1, batch_size=args.batch_size, num_workers=workers,
                             resize=args.resize, crop=args.crop, early_stopping_patience=0, progress=False,
                             output_dir=str(work / f"out-{name}"), log_dir=str(work / f"log-{name}"), **extra)
        started = time.perf_counter()
        run_training(config)
        seconds = time.perf_counter() - started
        out["train"].append({"variant": name, "workers": workers, "seconds": seconds})
        print(f"train {name}: one epoch (train + validation) in {seconds:.1f} s", flush=True)
    paddle.seed(0)
    predictor = DygraphPredictor(build_network("tiny", num_classes=14))
    labels = labels.subset(labels.names[: args.eval_images])
    makers = {"png": lambda: ChestXray14Dataset(images_dir, labels),
              "cache": lambda: CachedDataset(cache_dir, labels, resize=args.resize)}
    times: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):  # interleaved, so that other load on the machine hits both alike
        for num_workers in sorted({0, workers}):
            for name, make in makers.items():
                started = time.perf_counter()
                result = evaluate(predictor, make(), crops="ten", resize=args.resize, crop=args.crop, batch_size=8,
                                  num_workers=num_workers, progress=False, plot=False)
                times.setdefault((name, num_workers), []).append(time.perf_counter() - started)
                print(f"eval ten-crop {name} workers={num_workers}: {times[(name, num_workers)][-1]:.1f} s",
                      flush=True)
    for (name, num_workers), runs in times.items():
        out["eval"].append({"variant": name, "workers": num_workers, "seconds": min(runs), "runs": runs,
                            "images": len(result.names),
                            "images_per_s": len(result.names) / min(runs)})
    return out


def markdown(results: dict, command: str) -> str:
    lines = ["<!-- SECTION: data-cache -->", "## Data path: PNG vs the image cache (`benchmarks/bench_data.py`)", "",
             f"Date: {results['date']}. Machine: {results['machine']}, {results['cores']} usable cores, "
             f"load average {results['load_before']} at start, {results['load_after']} at the end.", "",
             "Command:", "", "```bash", command, "```", "",
             f"Loader: images/s delivered to the training step (seeded random crop {results['crop']} + flip from "
             f"{results['resize']} px, batches of {results['batch_size']}, no network), the real sample.", "",
             "| workers | png | cache-float | cache-uint8 | cache-uint8+norm (CPU) | cache-uint8 / png "
             "| cache-float / png |",
             "|---|---|---|---|---|---|---|"]
    by = {(r["variant"], r["workers"]): r["images_per_s"] for r in results["loader"]}
    for workers in sorted({r["workers"] for r in results["loader"]}):
        png, flt = by[("png", workers)], by[("cache-float", workers)]
        u8, u8n = by[("cache-uint8", workers)], by[("cache-uint8+norm", workers)]
        lines.append(f"| {workers} | {png:.0f} | {flt:.0f} | {u8:.0f} | {u8n:.0f} | {u8 / png:.1f}x "
                     f"| {flt / png:.1f}x |")
    build = results["build"]
    lines += ["", "Build (`build_cache` of the sample at "
              f"{results['resize']} px): " + ", ".join(f"{b['workers']} worker(s) {b['images_per_s']:.0f} images/s"
                                                       for b in build["builds"]) + ".", "",
              "Projection for all 112,120 NIH images (decode + resize measured per size on one core here):", "",
              "| size | ms per image (1 core) | cache size | build time, 1 core | 2 cores | 8 cores |",
              "|---|---|---|---|---|---|"]
    for s in build["sizes"]:
        hours = s["projected_hours_one_core"]
        lines.append(f"| {s['size']} | {s['ms_per_image_one_core']:.1f} | {s['projected_gib']:.1f} GiB | "
                     f"{hours * 60:.0f} min | {hours * 30:.0f} min | {hours * 60 / 8:.0f} min |")
    if "end_to_end" in results:
        e2e = results["end_to_end"]
        lines += ["", "End to end (the real sample; a tiny network, so that loading dominates):", "",
                  "| what | PNG | cache | PNG / cache |", "|---|---|---|---|"]
        train = {row["variant"]: row for row in e2e["train"]}
        lines.append(f"| `train.py --arch tiny`, one epoch (train + validation), {train['png']['workers']} workers "
                     f"| {train['png']['seconds']:.1f} s | {train['cache']['seconds']:.1f} s "
                     f"| {train['png']['seconds'] / train['cache']['seconds']:.2f}x |")
        evals = {(row["variant"], row["workers"]): row for row in e2e["eval"]}
        for workers in sorted({w for _, w in evals}):
            png, cache = evals[("png", workers)], evals[("cache", workers)]
            lines.append(f"| `evaluate` ten-crop, {png['images']} images, {workers} workers (best of "
                         f"{len(png['runs'])} interleaved) | {png['seconds']:.1f} s | {cache['seconds']:.1f} s "
                         f"| {png['seconds'] / cache['seconds']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> dict:
    from paddle_chexnet.cpu.runtime import usable_cores
    from paddle_chexnet.data.cache_build import build_cache

    data = Path(args.data_dir)
    images_dir, labels_path = data / "images", data / "labels" / "sample_list.txt"
    if not images_dir.is_dir() or not labels_path.is_file():
        raise SystemExit(f"{data} needs images/ and labels/sample_list.txt (the real sample, see --data-dir)")
    results = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": cpu_model(),
               "cores": usable_cores(), "python": platform.python_version(), "load_before": _load(),
               "resize": args.resize, "crop": args.crop, "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        work = Path(tmp)
        cache_dir = work / "cache"
        build_cache(images_dir, cache_dir, size=args.resize, workers=usable_cores(), progress=False)
        results["loader"] = bench_loader(args, images_dir, labels_path, cache_dir)
        results["build"] = bench_build(args, images_dir, work)
        if args.end_to_end:
            results["end_to_end"] = bench_end_to_end(args, images_dir, labels_path, cache_dir, work)
    results["load_after"] = _load()
    command = "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    print()
    print(markdown(results, command))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return results


def _load() -> str:
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "unknown"


if __name__ == "__main__":
    main(get_args_parser().parse_args())

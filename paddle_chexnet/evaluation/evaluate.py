"""Ten-crop (or center-crop) evaluation: images -> averaged probabilities -> AUROC -> CSVs and ROC plots.

Where the time goes on a CPU: the network runs 10 times per image in
ten-crop, so it dominates; decoding a 1024x1024 PNG and resizing it is a
small fraction of that. The loader therefore runs the decode and resize in
worker processes (at a lower priority, so
they fill the gaps rather than slow the network) and sends back only the
small resized 8-bit image; the main process normalises and crops it (a few
milliseconds) into one batch of ``B * 10`` crops for the predictor, and
averages the ten probabilities of each image, as CheXNet's reference does.
On the CPU the predictor runs that batch in cache-sized slices of 10 crops
(see :class:`~paddle_chexnet.inference.predictors.Predictor`). ``processes > 1`` instead
runs several single-thread copies of the exported model, each decoding and
predicting its own images (:func:`predict_dataset_parallel`).

The arithmetic is exactly :class:`~paddle_chexnet.data.transforms.EvalTransform`'s
(same functions, same order), which is bit-identical to torchvision's.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from paddle_chexnet.data.datasets import ChestXray14Dataset
from paddle_chexnet.data.images import read_xray
from paddle_chexnet.data.transforms import (
    center_crop,
    normalize,
    resize_shorter_side,
    ten_crop,
)
from paddle_chexnet.evaluation.metrics import AUROC
from paddle_chexnet.evaluation.reports import EvalResult, write_outputs
from paddle_chexnet.inference.predictors import InferencePredictor, Predictor
from paddle_chexnet.utils.system import usable_cores

logger = logging.getLogger(__name__)


_WORKER_READER: Callable[[Path], Image.Image] = read_xray


# Loader processes run a little below normal priority: the network is the bottleneck, and decoding
# only needs a few percent of a core. Not more than this, or other programs on the machine starve them.
LOADER_NICENESS = 5


def _init_worker(reader: Callable[[Path], Image.Image], niceness: int) -> None:
    global _WORKER_READER
    _WORKER_READER = reader
    os.environ["OMP_NUM_THREADS"] = "1"
    # A forked worker inherits Paddle's fatal-signal handler, which prints a
    # "FatalError: Termination signal" report when the pool is terminated at the
    # end of a normal run. A loader worker being stopped is not an error.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if niceness and hasattr(os, "nice"):
        try:
            os.nice(niceness)  # the network is the bottleneck: let it have the cores first
        except OSError:
            pass  # not permitted here: run at normal priority


def _load_resized(path: str, resize: int) -> np.ndarray:
    """Decode and resize one image (the expensive, GIL-free part): uint8 ``[H, W]`` or ``[H, W, 3]``."""
    return np.asarray(resize_shorter_side(_WORKER_READER(Path(path)), resize))


def _to_crops(resized: np.ndarray, crops: str, crop: int) -> np.ndarray:
    """Normalise and crop, as :class:`~paddle_chexnet.data.transforms.EvalTransform`: ``[k, 3, c, c]``."""
    chw = normalize(resized)
    return ten_crop(chw, crop) if crops == "ten" else center_crop(chw, crop)[None]


def default_num_workers() -> int:
    """Half the cores (at least 1, at most 8): on a CPU the network needs the rest."""
    return max(1, min(8, usable_cores() // 2))


def iterate_batches(
    paths: Sequence[str | Path],
    batch_size: int,
    crops: str = "ten",
    resize: int = 256,
    crop: int = 224,
    num_workers: int = 1,
    reader: Callable[[Path], Image.Image] = read_xray,
    prefetch: int | None = None,
) -> Iterator[np.ndarray]:
    """Yield each batch of ``batch_size`` images (fewer in the last) as one float32 ``[B * k, 3, c, c]`` array.

    ``k`` is 10 for ten-crop (image ``i``'s crops are rows ``10 i .. 10 i + 9``), 1 for
    center. With ``num_workers > 0`` decoding runs in that many processes, at
    most ``prefetch`` images ahead (default ``3 * batch_size``), in order.
    """
    if crops not in ("ten", "center"):
        raise ValueError(f"crops must be 'ten' or 'center', got {crops!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    stream = _resized_stream([str(p) for p in paths], resize, num_workers, reader,
                             max(prefetch or 3 * batch_size, batch_size))
    with contextlib.closing(stream):
        while True:
            parts = [_to_crops(resized, crops, crop) for resized in itertools.islice(stream, batch_size)]
            if not parts:
                return
            yield np.concatenate(parts) if len(parts) > 1 else parts[0]


def _resized_stream(
    paths: Sequence[str], resize: int, num_workers: int, reader: Callable[[Path], Image.Image], prefetch: int
) -> Iterator[np.ndarray]:
    """Decoded, resized images in order; ``num_workers`` processes at most ``prefetch`` images ahead."""
    if num_workers <= 0:
        for path in paths:
            yield np.asarray(resize_shorter_side(reader(Path(path)), resize))
        return
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    pool = multiprocessing.get_context(method).Pool(num_workers, _init_worker, (reader, LOADER_NICENESS))
    try:
        todo = iter(paths)
        pending = deque(pool.apply_async(_load_resized, (p, resize)) for p in itertools.islice(todo, prefetch))
        while pending:
            resized = pending.popleft().get()
            for path in itertools.islice(todo, 1):
                pending.append(pool.apply_async(_load_resized, (path, resize)))
            yield resized
    finally:
        pool.terminate()
        pool.join()


def predict_dataset(
    predictor: Predictor,
    dataset: ChestXray14Dataset,
    crops: str = "ten",
    resize: int = 256,
    crop: int = 224,
    batch_size: int = 8,
    num_workers: int | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Probabilities ``[N, C]`` for every image of ``dataset``, averaged over the crops."""
    from tqdm import tqdm

    num_workers = default_num_workers() if num_workers is None else num_workers
    k = 10 if crops == "ten" else 1
    probs = np.zeros((len(dataset), len(predictor.class_names)), dtype=np.float32)
    batches = iterate_batches(dataset.paths, batch_size, crops, resize, crop, num_workers, dataset.reader)
    with tqdm(total=len(dataset), unit="img", desc=f"{crops}-crop", disable=not progress, dynamic_ncols=True) as bar:
        start = 0
        for batch in batches:
            out = np.asarray(predictor(batch), dtype=np.float32)
            n = len(batch) // k
            probs[start:start + n] = out.reshape(n, k, -1).mean(axis=1)
            start += n
            bar.update(n)
    return probs


_WORKER_PREDICTOR: Predictor | None = None


def _init_inference_worker(spec: dict, reader: Callable[[Path], Image.Image]) -> None:
    global _WORKER_PREDICTOR, _WORKER_READER
    from paddle_chexnet.inference.predictors import InferencePredictor

    _WORKER_READER = reader
    _WORKER_PREDICTOR = InferencePredictor(**spec)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in _init_worker: terminating the pool is not an error


def _predict_images(paths: Sequence[str], crops: str, resize: int, crop: int) -> np.ndarray:
    """In a worker: decode, crop and predict a few images; their crop-averaged probabilities ``[n, C]``."""
    batch = np.concatenate([_to_crops(_load_resized(p, resize), crops, crop) for p in paths])
    k = 10 if crops == "ten" else 1
    return _WORKER_PREDICTOR(batch).reshape(len(paths), k, -1).mean(axis=1)


def predict_dataset_parallel(
    predictor: InferencePredictor,
    dataset: ChestXray14Dataset,
    processes: int,
    crops: str = "ten",
    resize: int = 256,
    crop: int = 224,
    batch_size: int = 8,
    progress: bool = True,
) -> np.ndarray:
    """Like :func:`predict_dataset`, with ``processes`` copies of the exported model, each on its own images.

    Each process decodes its batch and runs the network with ``num_threads // processes``
    threads: on a small CPU, whole-image parallelism across processes wastes less time in
    thread synchronisation than splitting each convolution across threads. The processes
    are started with ``spawn`` (a fork of a process that has run oneDNN can hang).
    """
    from tqdm import tqdm

    spec = {
        "prefix": str(predictor.prefix),
        "num_threads": max(1, predictor.num_threads // processes),
        "micro_batch": predictor.micro_batch,
        "class_names": predictor.class_names,
    }
    chunks = [[str(p) for p in dataset.paths[i:i + batch_size]] for i in range(0, len(dataset), batch_size)]
    probs = np.zeros((len(dataset), len(predictor.class_names)), dtype=np.float32)
    task = functools.partial(_predict_images, crops=crops, resize=resize, crop=crop)
    pool = multiprocessing.get_context("spawn").Pool(processes, _init_inference_worker, (spec, dataset.reader))
    try:
        with tqdm(total=len(dataset), unit="img", desc=f"{crops}-crop x{processes}", disable=not progress,
                  dynamic_ncols=True) as bar:
            start = 0
            for out in pool.imap(task, chunks):
                probs[start:start + len(out)] = out
                start += len(out)
                bar.update(len(out))
    finally:
        pool.terminate()
        pool.join()
    return probs


def evaluate(
    predictor: Predictor,
    dataset: ChestXray14Dataset,
    output_dir: str | Path | None = None,
    crops: str = "ten",
    resize: int = 256,
    crop: int = 224,
    batch_size: int = 8,
    num_workers: int | None = None,
    progress: bool = True,
    plot: bool = True,
    processes: int = 1,
) -> EvalResult:
    """Evaluate ``predictor`` on ``dataset`` and (if ``output_dir``) write the results.

    Every image's header is checked before the first batch, so a broken file is
    reported at once. Writes ``aucs.csv`` (``label,auc``), ``preds.csv``
    (``Image Index`` + one probability column per class), ``roc_curves.png``,
    ``metrics.json`` and, when images were skipped, ``skipped.txt``; all atomically.

    Args:
        predictor (Predictor): e.g. from :func:`~paddle_chexnet.inference.predictors.load_predictor`.
        dataset (ChestXray14Dataset): images and labels (its ``transform`` is not used:
            the crops are made here, with the same arithmetic).
        output_dir (str | Path, optional): where to write; ``None`` writes nothing. Default: None.
        crops (str, optional): ``'ten'`` (CheXNet's protocol) or ``'center'``. Default: 'ten'.
        resize (int, optional): shorter side after resizing. Default: 256.
        crop (int, optional): crop size. Default: 224.
        batch_size (int, optional): images per batch (``10 *`` that many crops). Default: 8.
        num_workers (int, optional): loader processes; 0 loads in this process.
            Default: None (:func:`default_num_workers`).
        progress (bool, optional): show a progress bar. Default: True.
        plot (bool, optional): write the ROC plot. Default: True.
        processes (int, optional): with an :class:`~paddle_chexnet.inference.predictors.InferencePredictor`,
            run this many copies of the model in parallel processes
            (:func:`predict_dataset_parallel`; ``num_workers`` is then unused). Default: 1.
    """
    if processes > 1 and not isinstance(predictor, InferencePredictor):
        raise ValueError("processes > 1 needs the Paddle Inference backend (--backend inference)")
    if tuple(dataset.class_names) != tuple(predictor.class_names):
        raise ValueError(
            f"the labels' classes {list(dataset.class_names)} differ from the model's {list(predictor.class_names)}"
        )
    dataset.verify_images()
    started = time.perf_counter()
    if processes > 1:
        probs = predict_dataset_parallel(predictor, dataset, processes, crops, resize, crop, batch_size, progress)
    else:
        probs = predict_dataset(predictor, dataset, crops, resize, crop, batch_size, num_workers, progress)
    seconds = time.perf_counter() - started
    metric = AUROC(class_names=dataset.class_names, gather=False)
    metric.update(probs, dataset.labels)
    mean = metric.accumulate()
    result = EvalResult(
        names=list(dataset.names), class_names=tuple(dataset.class_names), probs=probs, labels=dataset.labels,
        per_class=metric.per_class(), mean=mean, n_used=metric.n_used, skipped=list(dataset.skipped),
        crops=crops, backend=getattr(predictor, "backend", ""), seconds=seconds,
    )
    if output_dir is not None:
        result.files = write_outputs(result, output_dir, plot=plot)
    return result

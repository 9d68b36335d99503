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
(see :class:`~paddle_chexnet.inference.predictors.Predictor`). The crops of the next batch
are made in a background thread while the predictor runs the current one
(:func:`prefetched`), so on a GPU the network does not wait for them; results are
identical with and without it. ``processes > 1`` instead runs several
single-thread copies of the exported model, each decoding and predicting its own
images (:func:`predict_dataset_parallel`).

``skip_unreadable`` leaves out images that cannot be decoded (a truncated PNG
found only when its pixels are read) instead of failing the run; they are
listed, with the reason, in ``skipped.txt``.

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
import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from paddle_chexnet.data.datasets import ChestXray14Dataset
from paddle_chexnet.data.images import (
    DICOM_SUFFIXES,
    SMALL_IMAGE_FRACTION,
    ImageReadError,
    image_size,
    read_xray,
    small_images_message,
)
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
    for _, batch in iterate_indexed_batches(paths, batch_size, crops, resize, crop, num_workers, reader, prefetch):
        yield batch


def iterate_indexed_batches(
    paths: Sequence[str | Path],
    batch_size: int,
    crops: str = "ten",
    resize: int = 256,
    crop: int = 224,
    num_workers: int = 1,
    reader: Callable[[Path], Image.Image] = read_xray,
    prefetch: int | None = None,
    on_error: Callable[[int, str], None] | None = None,
) -> Iterator[tuple[list[int], np.ndarray]]:
    """As :func:`iterate_batches`, with the indices (into ``paths``) of each batch's images.

    Args:
        on_error (Callable[[int, str], None], optional): called with the index and the reason of
            an image that cannot be read, which is then left out; ``None`` raises the
            :class:`~paddle_chexnet.data.images.ImageReadError`. Default: None.
    """
    if crops not in ("ten", "center"):
        raise ValueError(f"crops must be 'ten' or 'center', got {crops!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    stream = _resized_stream([str(p) for p in paths], resize, num_workers, reader,
                             max(prefetch or 3 * batch_size, batch_size))
    with contextlib.closing(stream):
        index = 0
        while True:
            chunk = list(itertools.islice(stream, batch_size))
            if not chunk:
                return
            indices, parts = [], []
            for resized in chunk:
                if isinstance(resized, ImageReadError):
                    if on_error is None:
                        raise resized
                    on_error(index, str(resized))
                else:
                    indices.append(index)
                    parts.append(_to_crops(resized, crops, crop))
                index += 1
            if parts:
                yield indices, (np.concatenate(parts) if len(parts) > 1 else parts[0])


def _load_resized_or_error(path: str, resize: int) -> np.ndarray | ImageReadError:
    """:func:`_load_resized`, returning a read error instead of raising it (so the stream can go on)."""
    try:
        return _load_resized(path, resize)
    except ImageReadError as exc:
        return exc


def _resized_stream(
    paths: Sequence[str], resize: int, num_workers: int, reader: Callable[[Path], Image.Image], prefetch: int
) -> Iterator[np.ndarray | ImageReadError]:
    """Decoded, resized images in order (an image that cannot be read gives its error instead).

    ``num_workers`` processes work at most ``prefetch`` images ahead.
    """
    if num_workers <= 0:
        for path in paths:
            try:
                yield np.asarray(resize_shorter_side(reader(Path(path)), resize))
            except ImageReadError as exc:
                yield exc
        return
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    pool = multiprocessing.get_context(method).Pool(num_workers, _init_worker, (reader, LOADER_NICENESS))
    try:
        todo = iter(paths)
        pending = deque(pool.apply_async(_load_resized_or_error, (p, resize)) for p in itertools.islice(todo, prefetch))
        while pending:
            resized = pending.popleft().get()
            for path in itertools.islice(todo, 1):
                pending.append(pool.apply_async(_load_resized_or_error, (path, resize)))
            yield resized
    finally:
        pool.terminate()
        pool.join()


_DONE = object()


def prefetched(items: Iterable, depth: int = 2) -> Iterator:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead, in order.

    The consumer (the predictor) runs while the thread makes the next batch's crops; an
    exception in the thread is raised in the consumer at the item where it happened. Leaving
    the loop early stops the thread.
    """
    buffer: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            buffer.put((None, exc))
            return
        finally:
            closer = getattr(items, "close", None)
            if stop.is_set() and callable(closer):
                closer()
        buffer.put((_DONE, None))

    thread = threading.Thread(target=produce, name="eval-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting for room, then let it finish
            try:
                buffer.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.1)


def predict_dataset(
    predictor: Predictor,
    dataset: ChestXray14Dataset,
    crops: str = "ten",
    resize: int = 256,
    crop: int = 224,
    batch_size: int = 8,
    num_workers: int | None = None,
    progress: bool = True,
    on_error: Callable[[int, str], None] | None = None,
    prefetch: bool = True,
    fp16: bool = False,
) -> np.ndarray:
    """Probabilities ``[N, C]`` for every image of ``dataset``, averaged over the crops.

    Args:
        on_error (Callable[[int, str], None], optional): see :func:`iterate_indexed_batches`; the
            rows of images left out are NaN. Default: None (a read error stops the run).
        prefetch (bool, optional): make the next batch's crops in a thread while the predictor
            runs (:func:`prefetched`). Default: True.
        fp16 (bool, optional): run the network under ``paddle.amp.auto_cast`` in float16 (a GPU and
            the dygraph backend). Default: False.
    """
    from tqdm import tqdm

    num_workers = default_num_workers() if num_workers is None else num_workers
    k = 10 if crops == "ten" else 1
    probs = np.full((len(dataset), len(predictor.class_names)), np.nan, dtype=np.float32)
    batches = iterate_indexed_batches(dataset.paths, batch_size, crops, resize, crop, num_workers, dataset.reader,
                                      on_error=on_error)
    if prefetch:
        batches = prefetched(batches)
    run = _fp16(predictor) if fp16 else predictor
    with contextlib.closing(batches), tqdm(total=len(dataset), unit="img", desc=f"{crops}-crop",
                                           disable=not progress, dynamic_ncols=True) as bar:
        done = 0
        for indices, batch in batches:
            out = np.asarray(run(batch), dtype=np.float32)
            probs[indices] = out.reshape(len(indices), k, -1).mean(axis=1)
            bar.update(indices[-1] + 1 - done)
            done = indices[-1] + 1
        bar.update(len(dataset) - done)
    return probs


def _fp16(predictor: Predictor) -> Callable[[np.ndarray], np.ndarray]:
    """``predictor`` run under float16 autocast (``paddle.amp.auto_cast``, level O1: BatchNorm stays float32)."""
    import paddle

    def run(batch: np.ndarray) -> np.ndarray:
        with paddle.amp.auto_cast(enable=True, level="O1", dtype="float16"):
            return np.asarray(predictor(batch), dtype=np.float32)

    return run


_WORKER_PREDICTOR: Predictor | None = None


def _init_inference_worker(spec: dict, reader: Callable[[Path], Image.Image]) -> None:
    global _WORKER_PREDICTOR, _WORKER_READER
    from paddle_chexnet.inference.predictors import InferencePredictor

    _WORKER_READER = reader
    _WORKER_PREDICTOR = InferencePredictor(**spec)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in _init_worker: terminating the pool is not an error


def _predict_images(paths: Sequence[str], crops: str, resize: int, crop: int,
                    skip_unreadable: bool = False) -> tuple[np.ndarray, dict[int, str]]:
    """In a worker: decode, crop and predict a few images.

    Returns their crop-averaged probabilities ``[n, C]`` (NaN rows for images left out) and
    ``{position: reason}`` of the images that could not be read (only with ``skip_unreadable``).
    """
    k = 10 if crops == "ten" else 1
    parts, kept, errors = [], [], {}
    for i, path in enumerate(paths):
        try:
            parts.append(_to_crops(_load_resized(path, resize), crops, crop))
        except ImageReadError as exc:
            if not skip_unreadable:
                raise
            errors[i] = str(exc)
            continue
        kept.append(i)
    out = np.full((len(paths), len(_WORKER_PREDICTOR.class_names)), np.nan, dtype=np.float32)
    if parts:
        out[kept] = _WORKER_PREDICTOR(np.concatenate(parts)).reshape(len(kept), k, -1).mean(axis=1)
    return out, errors


def predict_dataset_parallel(
    predictor: InferencePredictor,
    dataset: ChestXray14Dataset,
    processes: int,
    crops: str = "ten",
    resize: int = 256,
    crop: int = 224,
    batch_size: int = 8,
    progress: bool = True,
    on_error: Callable[[int, str], None] | None = None,
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
    task = functools.partial(_predict_images, crops=crops, resize=resize, crop=crop,
                             skip_unreadable=on_error is not None)
    # concurrent.futures, not multiprocessing.Pool: a worker that dies (a crash, the OOM killer) is an
    # error here (BrokenProcessPool), where a Pool would wait forever for the lost batch
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    executor = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_inference_worker, initargs=(spec, dataset.reader))
    try:
        with tqdm(total=len(dataset), unit="img", desc=f"{crops}-crop x{processes}", disable=not progress,
                  dynamic_ncols=True) as bar:
            start = 0
            for out, errors in executor.map(task, chunks):
                for position, reason in errors.items():
                    on_error(start + position, reason)
                probs[start:start + len(out)] = out
                start += len(out)
                bar.update(len(out))
    except BrokenProcessPool as exc:
        raise RuntimeError(f"an inference process of --processes {processes} died ({exc}); run with "
                           "--processes 1 to see the error") from exc
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
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
    skip_unreadable: bool = False,
    fp16: bool = False,
) -> EvalResult:
    """Evaluate ``predictor`` on ``dataset`` and (if ``output_dir``) write the results.

    Every image's header is checked before the first batch, so a broken file is
    reported at once, and images far smaller than the network's input are reported
    in one warning. Writes ``aucs.csv`` (``label,auc``), ``preds.csv``
    (``Image Index`` + one probability column per class), ``roc_curves.png``,
    ``metrics.json`` and, when images were skipped, ``skipped.txt`` (one
    ``name<TAB>reason`` line each); all atomically.

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
        skip_unreadable (bool, optional): leave out images that cannot be read (their names and
            reasons go to ``skipped.txt``) instead of stopping at the first. Default: False.
        fp16 (bool, optional): float16 autocast (a GPU with the dygraph backend). Default: False.

    Raises:
        ImageReadError: an image cannot be read and ``skip_unreadable`` is False (the message
            names it and ``--skip-unreadable``).
    """
    if processes > 1 and not isinstance(predictor, InferencePredictor):
        raise ValueError("processes > 1 needs the Paddle Inference backend (--backend inference)")
    if tuple(dataset.class_names) != tuple(predictor.class_names):
        raise ValueError(
            f"the labels' classes {list(dataset.class_names)} differ from the model's {list(predictor.class_names)}"
        )
    unreadable, sizes = dataset.verify_images(skip_unreadable=skip_unreadable)
    warn_small_images(dataset, sizes, unreadable, crop)

    def on_error(index: int, reason: str) -> None:
        if index not in unreadable:
            logger.warning("leaving out %s: %s", dataset.names[index], reason)
        unreadable[index] = reason

    started = time.perf_counter()
    try:
        if processes > 1:
            probs = predict_dataset_parallel(predictor, dataset, processes, crops, resize, crop, batch_size, progress,
                                             on_error=on_error if skip_unreadable else None)
        else:
            probs = predict_dataset(predictor, dataset, crops, resize, crop, batch_size, num_workers, progress,
                                    on_error=on_error if skip_unreadable else None, fp16=fp16)
    except ImageReadError as exc:
        raise ImageReadError(f"{exc} (--skip-unreadable leaves such images out and lists them in skipped.txt)") \
            from exc
    seconds = time.perf_counter() - started
    keep = np.array([i not in unreadable for i in range(len(dataset))], dtype=bool)
    if not keep.any():
        raise ImageReadError(f"none of the {len(dataset)} images could be read (see {output_dir}/skipped.txt)"
                             if output_dir is not None else f"none of the {len(dataset)} images could be read")
    if unreadable:
        logger.warning("left out %d unreadable image(s) of %d (listed in skipped.txt)", len(unreadable), len(dataset))
    names = [n for n, k in zip(dataset.names, keep) if k]
    labels, probs = dataset.labels[keep], probs[keep]
    metric = AUROC(class_names=dataset.class_names, gather=False)
    metric.update(probs, labels)
    mean = metric.accumulate()
    missing_reason = f"missing under {dataset.image_dir}"
    skipped = [f"{name}\t{missing_reason}" for name in dataset.skipped]
    skipped += [f"{dataset.names[i]}\tunreadable: {unreadable[i]}" for i in sorted(unreadable)]
    result = EvalResult(
        names=names, class_names=tuple(dataset.class_names), probs=probs, labels=labels,
        per_class=metric.per_class(), mean=mean, n_used=metric.n_used, skipped=skipped,
        crops=crops, backend=getattr(predictor, "backend", ""), seconds=seconds,
        name_column=getattr(dataset, "name_column", "Image Index"),
    )
    if output_dir is not None:
        result.files = write_outputs(result, output_dir, plot=plot)
    return result


def warn_small_images(dataset: ChestXray14Dataset, sizes: dict[int, tuple[int, int]], unreadable: dict[int, str],
                      input_size: int) -> None:
    """One warning for the images whose shorter side is far below the network's input (``input_size``)."""
    limit = SMALL_IMAGE_FRACTION * input_size
    found = []
    for i, path in enumerate(dataset.paths):
        size = sizes.get(i)
        if size is None and i not in unreadable and path.suffix.lower() in DICOM_SUFFIXES:
            size = image_size(path)
        if size is not None and min(size) < limit:
            found.append((path, size))
    if found:
        logger.warning("%s", small_images_message(found, len(dataset), input_size))

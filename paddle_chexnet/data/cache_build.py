"""Building an image cache (``tools/build_cache.py``): decode and resize every image once, in parallel, resumably.

The format is described in :mod:`paddle_chexnet.data.cache`. How a build stays
safe when it is killed at any moment (``kill -9`` included):

* Images are encoded in the sorted order of their keys and appended to the
  last shard; worker processes decode in parallel, the main process writes in
  order. Every couple of seconds the shard is flushed and fsynced, then the
  new rows are appended to ``build.journal`` (one JSON line each) and fsynced.
  A row is therefore journaled only after its pixels are on disk.
* A re-run (under the lock) replays the journal up to its last complete line,
  truncates the shards to the end of the last journaled row (never below the
  lengths the existing manifest commits) and carries on with the images not
  yet done, in the same order. The shards and the manifest it ends with are
  byte-identical to those of an uninterrupted build.
* At the end the manifest is replaced atomically (the commit point), then the
  journal is removed. A manifest identical to the existing one (nothing
  changed) is not rewritten.

A build adds and updates, it never drops an image: images whose source changed
(size or mtime) are re-encoded (the old pixels become dead bytes, counted in the
manifest); new sources are added; cached images whose source is no longer in the
folder, or that a narrower ``--label-list`` does not name, are kept. Build into a
new folder to get exactly one selection, or to reclaim dead bytes.

Two builds into one folder at once: the second refuses (``fcntl`` lock on
``CACHE/.lock``). Readers take no lock: shards only grow and the manifest is
replaced atomically, so a training run can read a cache while it is updated.
"""
from __future__ import annotations

import collections
import contextlib
import csv
import itertools
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from paddle_chexnet.data.cache import (
    COLUMNS,
    DECODER,
    FORMAT,
    FORMAT_VERSION,
    JOURNAL_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    RESIZE_METHOD,
    UNREADABLE_NAME,
    CacheError,
    KeyIndex,
    empty_table,
    manifest_text,
    pixel_crc,
    read_manifest,
    shard_name,
)
from paddle_chexnet.data.datasets import IMAGE_SUFFIXES, MissingImagesError
from paddle_chexnet.data.images import read_xray
from paddle_chexnet.data.label_lists import LabelListError, read_label_list
from paddle_chexnet.data.nih import read_name_list
from paddle_chexnet.data.transforms import resize_shorter_side
from paddle_chexnet.utils.io import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)


DEFAULT_SHARD_BYTES = 2 ** 31


# The columns of a label CSV that name images: CheXpert's ``Path``, NIH's Data_Entry ``Image Index``.
CSV_IMAGE_COLUMNS = ("Path", "Image Index")


class CacheLockedError(CacheError):
    """Another build holds the cache folder's lock."""


@dataclass
class BuildResult:
    """What :func:`build_cache` did.

    Attributes:
        root (Path): the cache folder.
        total (int): images in the cache now.
        encoded (int): images decoded and written by this run.
        reused (int): selected images already in the cache with an unchanged source.
        resumed (int): images an interrupted earlier build had written, taken over.
        unreadable (list[tuple[str, str]]): ``(key, reason)`` of the images that could not be decoded.
        missing (list[str]): names from the label lists not in the folder (skipped with ``skip_missing``).
        orphaned (int): cached images whose source is not in the folder (kept).
        manifest_written (bool): False when nothing changed.
        stored_bytes (int): pixel bytes of the images in the cache.
        dead_bytes (int): shard bytes no image uses any more (superseded encodings).
        seconds (float): wall time.
    """

    root: Path
    total: int = 0
    encoded: int = 0
    reused: int = 0
    resumed: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    orphaned: int = 0
    manifest_written: bool = False
    stored_bytes: int = 0
    dead_bytes: int = 0
    seconds: float = 0.0


def scan_sources(image_dir: str | Path, exclude: str | Path | None = None) -> dict[str, tuple[int, int]]:
    """Every image file under ``image_dir`` (any depth, hidden files skipped): ``{key: (bytes, mtime_ns)}``.

    Keys are paths relative to ``image_dir`` with ``/`` separators, sorted.

    Raises:
        FileNotFoundError: the folder does not exist or holds no images.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {image_dir}; pass the folder of the images as --image-dir")
    skip = Path(exclude).resolve() if exclude is not None else None
    found: dict[str, tuple[int, int]] = {}
    pending = [(image_dir, "")]
    while pending:
        folder, prefix = pending.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if skip is None or Path(entry.path).resolve() != skip:
                        pending.append((Path(entry.path), f"{prefix}{entry.name}/"))
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file():
                    stat = entry.stat()
                    found[prefix + entry.name] = (int(stat.st_size), int(stat.st_mtime_ns))
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {image_dir}")
    return dict(sorted(found.items()))


def read_selection(path: str | Path) -> list[str]:
    """The image names a list file gives, in file order.

    Accepted: a CheXNet label list (``<name> <values>``, checked as
    :func:`~paddle_chexnet.data.label_lists.read_label_list` does), a list of
    names one per line (NIH's ``train_val_list.txt``), or a CSV with a ``Path``
    column (CheXpert) or an ``Image Index`` column (NIH's ``Data_Entry_2017.csv``),
    of which only that column is read.

    Raises:
        FileNotFoundError: no such file.
        LabelListError: a malformed list, or a CSV without one of those columns.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label list not found: {path}")
    with open(path, encoding="utf-8-sig", newline="") as handle:
        first = next((line for line in handle if line.strip() and not line.startswith("#")), "")
        if path.suffix.lower() == ".csv" or "," in first:
            handle.seek(0)
            reader = csv.reader(handle)
            header = next(reader, [])
            column = next((header.index(c) for c in CSV_IMAGE_COLUMNS if c in header), None)
            if column is None:
                raise LabelListError(f"{path} line 1: a CSV label list needs a {' or '.join(CSV_IMAGE_COLUMNS)} "
                                     f"column naming the images; its columns are {', '.join(header)}")
            names = []
            for line_no, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) <= column or not row[column].strip():
                    raise LabelListError(f"{path} line {line_no}: no {header[column]} value")
                names.append(row[column].strip())
            return names
    if len(first.split()) == 1:
        return read_name_list(path)
    return list(read_label_list(path).names)


def select_sources(
    sources: Sequence[str], lists: Sequence[str | Path], skip_missing: bool = False, image_dir: str | Path = ""
) -> tuple[list[str], list[str]]:
    """The keys the label lists name (all of ``sources`` without lists), and the names not found.

    Raises:
        MissingImagesError: names not in the folder, unless ``skip_missing``.
    """
    if not lists:
        return sorted(sources), []
    index = KeyIndex(sources, f"the image folder {image_dir}")
    selected: set[str] = set()
    missing: list[str] = []
    total = 0
    for list_path in lists:
        for name in read_selection(list_path):
            total += 1
            key = index.find(name)
            if key is None:
                missing.append(name)
            else:
                selected.add(key)
    if missing and not skip_missing:
        raise MissingImagesError(
            f"{len(missing)} of {total} images named in {', '.join(str(p) for p in lists)} are not under "
            f"{image_dir}; first: {', '.join(missing[:5])}. Check --image-dir, or pass --skip-missing to cache "
            "the ones that are there"
        )
    if missing:
        logger.warning("skipping %d of %d listed images that are not under %s; first: %s",
                       len(missing), total, image_dir, ", ".join(missing[:5]))
    return sorted(selected), missing


@contextlib.contextmanager
def build_lock(root: Path) -> Iterator[None]:
    """Hold ``root/.lock`` for one build; raise :class:`CacheLockedError` if another process holds it.

    A POSIX record lock (``fcntl.lockf``): it belongs to this process only (forked
    decoder processes do not inherit it) and the system releases it when the
    process dies, however it dies.
    """
    try:
        import fcntl
    except ImportError as exc:
        raise OSError("building a cache needs fcntl locks (Linux or macOS)") from exc
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise CacheLockedError(
                f"another build (process {holder}) is writing into {root}; wait for it to finish, "
                "or build into another --output"
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def refuse_foreign_folder(root: Path) -> None:
    """Raise :class:`CacheError` if ``root`` holds files that are not a cache's (never write into a user's folder)."""
    if not root.is_dir() or (root / MANIFEST_NAME).is_file() or (root / JOURNAL_NAME).is_file():
        return
    ours = {LOCK_NAME, UNREADABLE_NAME}
    foreign = sorted(p.name for p in root.iterdir()
                     if p.name not in ours and not p.name.startswith(("pixels-", f".{MANIFEST_NAME}.")))
    if foreign:
        raise CacheError(f"--output {root} is a folder with other files ({', '.join(foreign[:3])}); "
                         "give a new or empty folder for the cache")


def _reason(exc: BaseException, path: str, key: str) -> str:
    """The error's message with the absolute path replaced by the key (the list then stays valid if moved)."""
    message = str(exc).replace(path, key) or type(exc).__name__
    return message if isinstance(exc, OSError) else f"{type(exc).__name__}: {message}"


def encode_image(path: str | Path, size: int) -> np.ndarray:
    """What the cache stores for ``path``: ``resize_shorter_side(read_xray(path), size)`` as C-order uint8."""
    return np.ascontiguousarray(np.asarray(resize_shorter_side(read_xray(path), size), dtype=np.uint8))


def _encode(task: tuple[str, str, int]) -> tuple[str, bytes | None, tuple[int, int, int], int, str]:
    """In a worker: ``(key, pixel bytes, (h, w, c), crc32, '')``, or ``(key, None, (), 0, reason)``."""
    path, key, size = task
    try:
        pixels = encode_image(path, size)
    except Exception as exc:  # noqa: BLE001 - one bad file must not end a build of 100,000; each is listed
        return key, None, (0, 0, 0), 0, _reason(exc, path, key)
    data = pixels.tobytes()
    channels = 1 if pixels.ndim == 2 else int(pixels.shape[2])
    return key, data, (int(pixels.shape[0]), int(pixels.shape[1]), channels), pixel_crc(data), ""


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle (it commits, then stops)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not Paddle's fatal-signal report when the pool is terminated


class _Store:
    """The cache folder during a build: committed rows, the open shard and the journal."""

    def __init__(self, root: Path, size: int, shard_bytes: int, hook: Callable[[str], None]) -> None:
        self.root, self.size, self.shard_bytes, self.hook = root, size, shard_bytes, hook
        self.records: dict[str, dict[str, int]] = {}
        self.shards: list[int] = []  # committed length of each shard
        self.old_text: str | None = None
        self.old_version: str | None = None
        self.resumed = 0
        self.pending: list[dict[str, Any]] = []
        self.journal = None
        self.shard_file = None
        self._load()

    def _load(self) -> None:
        for stale in self.root.glob(f".{MANIFEST_NAME}.*.tmp"):
            stale.unlink()  # a killed build's half-written manifest
        for stale in self.root.glob(f".{UNREADABLE_NAME}.*.tmp"):
            stale.unlink()
        if (self.root / MANIFEST_NAME).is_file():
            try:
                manifest = read_manifest(self.root)
            except CacheError as exc:
                raise CacheError(f"{exc} (or build into another --output)") from exc
            self._check_size(manifest.get("size"), MANIFEST_NAME)
            self.old_text = (self.root / MANIFEST_NAME).read_text(encoding="utf-8")
            self.old_version = manifest.get("package_version")
            table = manifest["images"]
            for i, key in enumerate(table["path"]):
                self.records[key] = {name: int(table[name][i]) for name in COLUMNS[1:]}
            self.shards = [int(s["bytes"]) for s in manifest["shards"]]
        self._replay_journal()
        self._truncate_shards()

    def _check_size(self, size: Any, where: str) -> None:
        if size != self.size:
            raise CacheError(f"{self.root / where} is a cache of {size} px images, this build asks for "
                             f"--size {self.size}; build into another --output (a cache holds one size)")

    def _replay_journal(self) -> None:
        path = self.root / JOURNAL_NAME
        if not path.is_file():
            return
        data = path.read_bytes()
        valid_end = 0
        rows = []
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break  # the torn last line of a killed build
            try:
                row = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                break
            rows.append(row)
            valid_end += len(raw)
        if not rows or rows[0].get("journal") != FORMAT or rows[0].get("format_version") != FORMAT_VERSION:
            logger.warning("%s: not a journal this version wrote; starting the build afresh from the manifest", path)
            path.unlink()
            return
        self._check_size(rows[0].get("size"), JOURNAL_NAME)
        if rows[0].get("shard_bytes") != self.shard_bytes:
            raise CacheError(f"{path}: the interrupted build used shards of {rows[0].get('shard_bytes')} bytes; "
                             "finish it with the same settings, or build into another --output")
        lengths = {}
        for row in rows[1:]:
            try:
                record = {name: int(row[name]) for name in COLUMNS[1:]}
                key = str(row["path"])
            except (KeyError, TypeError, ValueError):
                break
            shard, end = record["shard"], record["offset"] + record["height"] * record["width"] * record["channels"]
            file = self.root / shard_name(shard)
            if not file.is_file() or file.stat().st_size < end:
                break  # journaled but its pixels are not on disk (cannot happen with fsync; checked anyway)
            self.records[key] = record
            lengths[shard] = max(lengths.get(shard, 0), end)
            self.resumed += 1
        for shard, end in lengths.items():
            while len(self.shards) <= shard:
                self.shards.append(0)
            self.shards[shard] = max(self.shards[shard], end)
        if valid_end < len(data):
            os.truncate(path, valid_end)  # appended lines must follow a complete one
        if self.resumed:
            logger.info("resuming an interrupted build: %d images already written", self.resumed)

    def _truncate_shards(self) -> None:
        for i, length in enumerate(self.shards):
            file = self.root / shard_name(i)
            if file.is_file() and file.stat().st_size > length:
                os.truncate(file, length)  # bytes past the last committed row
        index = len(self.shards)
        while (self.root / shard_name(index)).is_file():
            (self.root / shard_name(index)).unlink()
            index += 1

    def begin(self) -> None:
        """Open the journal (a header first, if new) and the last shard, for appending."""
        path = self.root / JOURNAL_NAME
        if not path.is_file():
            header = {"journal": FORMAT, "format_version": FORMAT_VERSION, "size": self.size,
                      "shard_bytes": self.shard_bytes}
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(header, sort_keys=True) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        self.journal = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if not self.shards:
            self.shards.append(0)
        self.shard_file = open(self.root / shard_name(len(self.shards) - 1), "ab")  # noqa: SIM115

    def append(self, key: str, data: bytes, shape: tuple[int, int, int], crc: int, source: tuple[int, int]) -> None:
        """Write one image's pixels to the shard; its row is journaled by the next :meth:`commit`."""
        if self.shards[-1] > 0 and self.shards[-1] + len(data) > self.shard_bytes:
            self._flush_shard()
            self.shard_file.close()
            self.shards.append(0)
            self.shard_file = open(self.root / shard_name(len(self.shards) - 1), "wb")  # noqa: SIM115
        record = {"shard": len(self.shards) - 1, "offset": self.shards[-1], "height": shape[0], "width": shape[1],
                  "channels": shape[2], "source_bytes": source[0], "source_mtime_ns": source[1], "crc32": crc}
        self.shard_file.write(data)
        self.shards[-1] += len(data)
        self.pending.append({"path": key, **record})
        self.records[key] = record
        self.hook("appended")

    def drop(self, key: str) -> None:
        """Forget ``key`` (its source changed and can no longer be decoded)."""
        self.records.pop(key, None)

    def _flush_shard(self) -> None:
        self.shard_file.flush()
        os.fsync(self.shard_file.fileno())

    def commit(self) -> None:
        """Make the rows written so far durable: shard to disk first, then their journal lines."""
        if not self.pending or self.journal is None:
            return
        self._flush_shard()
        self.journal.write("".join(json.dumps(row, sort_keys=True) + "\n" for row in self.pending))
        self.journal.flush()
        os.fsync(self.journal.fileno())
        self.pending = []
        self.hook("committed")

    def close(self) -> None:
        for handle in (self.shard_file, self.journal):
            if handle is not None:
                handle.close()
        self.shard_file = self.journal = None

    def finish(self, unreadable: list[tuple[str, str]], result: BuildResult) -> None:
        """Write the manifest (if it changed) and the unreadable list, then remove the journal."""
        import paddle_chexnet

        self.commit()
        self.close()
        keys = sorted(self.records)
        table = empty_table()
        for key in keys:
            table["path"].append(key)
            for name in COLUMNS[1:]:
                table[name].append(self.records[key][name])
        sizes = [r["height"] * r["width"] * r["channels"] for r in self.records.values()]
        result.stored_bytes = int(sum(sizes))
        result.dead_bytes = int(sum(self.shards)) - result.stored_bytes
        result.total = len(keys)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "package_version": self.old_version or paddle_chexnet.__version__,
            "size": self.size,
            "resize": RESIZE_METHOD,
            "decoder": DECODER,
            "dtype": "uint8",
            "layout": "C order; [height, width] when channels is 1 (grey), [height, width, 3] (RGB) when 3",
            "shard_bytes_max": self.shard_bytes,
            "shards": [{"file": shard_name(i), "bytes": n} for i, n in enumerate(self.shards)],
            "count": len(keys),
            "channels": {"1": sum(c == 1 for c in table["channels"]), "3": sum(c == 3 for c in table["channels"])},
            "stored_bytes": result.stored_bytes,
            "dead_bytes": result.dead_bytes,
            "unreadable": [{"path": key, "reason": reason} for key, reason in unreadable],
            "images": table,
        }
        text = manifest_text(manifest)
        if text != self.old_text:
            manifest["package_version"] = paddle_chexnet.__version__
            text = manifest_text(manifest)
            self.hook("before-manifest")
            with atomic_path(self.root / MANIFEST_NAME) as tmp:
                tmp.write_text(text, encoding="utf-8")
                self.hook("manifest-tmp")
            result.manifest_written = True
            self.hook("manifest-written")
        listing = self.root / UNREADABLE_NAME
        if unreadable:
            body = "".join(f"{key}\t{reason}\n" for key, reason in unreadable)
            if not listing.is_file() or listing.read_text(encoding="utf-8") != body:
                atomic_write_text(listing, body)
        elif listing.is_file():
            listing.unlink()
        journal = self.root / JOURNAL_NAME
        if journal.is_file():
            journal.unlink()


def _no_hook(point: str) -> None:
    """Test seam: called at each point a build can be killed (see tests/test_cache.py)."""


def build_cache(
    image_dir: str | Path,
    output: str | Path,
    size: int = 256,
    workers: int | None = None,
    label_lists: Sequence[str | Path] = (),
    skip_missing: bool = False,
    progress: bool = True,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    commit_seconds: float = 2.0,
    commit_every: int = 512,
    _hook: Callable[[str], None] = _no_hook,
) -> BuildResult:
    """Build or update the cache ``output`` of the images under ``image_dir``, resized to ``size``.

    Everything that can be checked is checked before any image is decoded (the
    folder, the label lists, missing images, the lock, an existing cache's size).
    Images that cannot be decoded do not stop the build: they are returned in
    :attr:`BuildResult.unreadable` and written to ``output/unreadable.txt``; the
    cache of the others is complete.

    Args:
        image_dir (str | Path): the images, at any depth; keys are paths relative to it.
        output (str | Path): the cache folder (created; or an existing cache to update or finish).
        size (int, optional): shorter side after resizing, as the transforms' ``resize``. Default: 256.
        workers (int, optional): decoding processes; 0 decodes in this process.
            Default: None (the cores this process may use).
        label_lists (Sequence, optional): only the images these files name (see
            :func:`read_selection`). Default: () (every image in the folder).
        skip_missing (bool, optional): cache the named images that exist instead of
            raising for the others. Default: False.
        progress (bool, optional): a progress bar with images/s and the time left. Default: True.
        shard_bytes (int, optional): start a new shard file past this many bytes. Default: 2 GiB.
        commit_seconds (float, optional): make progress durable at least this often. Default: 2.0.
        commit_every (int, optional): ... and at least every this many images. Default: 512.

    Raises:
        FileNotFoundError, LabelListError, MissingImagesError: bad folder or lists.
        CacheLockedError: another build is writing into ``output``.
        CacheError: ``output`` is a cache of another size or version, or a folder with other files.
    """
    from tqdm import tqdm

    from paddle_chexnet.cpu.runtime import usable_cores

    started = time.perf_counter()
    if size < 1:
        raise ValueError(f"--size must be at least 1, got {size}")
    workers = usable_cores() if workers is None else int(workers)
    if workers < 0:
        raise ValueError(f"--workers must be 0 or more, got {workers}")
    image_dir, root = Path(image_dir), Path(output)
    if root.exists() and not root.is_dir():
        raise CacheError(f"--output {root} is a file; give a folder for the cache")
    refuse_foreign_folder(root)
    sources = scan_sources(image_dir, exclude=root)
    selected, missing = select_sources(list(sources), label_lists, skip_missing, image_dir)
    root.mkdir(parents=True, exist_ok=True)
    result = BuildResult(root=root, missing=missing)
    with build_lock(root):
        store = _Store(root, size, shard_bytes, _hook)
        result.resumed = store.resumed
        candidates = sorted(set(selected) | {k for k in store.records if k in sources})
        todo = [k for k in candidates if k not in store.records or _changed(store.records[k], sources[k])]
        result.reused = len(candidates) - len(todo)
        result.orphaned = sum(1 for k in store.records if k not in sources)
        logger.info("%s: %d images selected, %d already cached, %d to encode at %d px with %d worker(s)",
                    root, len(selected), result.reused, len(todo), size, workers)
        unreadable: list[tuple[str, str]] = []
        if todo:
            store.begin()
            tasks = [(str(image_dir / key), key, size) for key in todo]
            try:
                with _results(tasks, workers) as results, \
                        tqdm(total=len(tasks), unit="img", desc=f"caching {size} px", disable=not progress,
                             dynamic_ncols=True, smoothing=0.05) as bar:
                    last_commit = time.monotonic()
                    for key, data, shape, crc, reason in results:
                        if data is None:
                            unreadable.append((key, reason))
                            store.drop(key)
                        else:
                            store.append(key, data, shape, crc, sources[key])
                            result.encoded += 1
                        if len(store.pending) >= commit_every or time.monotonic() - last_commit >= commit_seconds:
                            store.commit()
                            last_commit = time.monotonic()
                        bar.update(1)
            except BaseException:
                store.commit()  # what was written is valid: a re-run starts after it
                store.close()
                raise
        store.finish(unreadable, result)
    result.unreadable = unreadable
    result.seconds = time.perf_counter() - started
    return result


def _changed(record: dict[str, int], source: tuple[int, int]) -> bool:
    return (record["source_bytes"], record["source_mtime_ns"]) != source


def _encode_many(tasks: list[tuple[str, str, int]]) -> list[tuple]:
    return [_encode(task) for task in tasks]


@contextlib.contextmanager
def _results(tasks: list[tuple[str, str, int]], workers: int) -> Iterator[Iterator[tuple]]:
    """The encoded images in task order, from ``workers`` processes (0: this one).

    At most ``4 * workers`` chunks are in flight, so memory stays bounded when
    writing is slower than decoding.
    """
    if workers == 0 or len(tasks) == 1:
        yield map(_encode, tasks)
        return
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    pool = multiprocessing.get_context(method).Pool(min(workers, len(tasks)), _init_worker)
    size = max(1, min(8, len(tasks) // (workers * 8)))
    chunks = iter([tasks[i:i + size] for i in range(0, len(tasks), size)])

    def ordered() -> Iterator[tuple]:
        pending = collections.deque(pool.apply_async(_encode_many, (c,)) for c in itertools.islice(chunks, 4 * workers))
        while pending:
            done = pending.popleft().get()
            for chunk in itertools.islice(chunks, 1):
                pending.append(pool.apply_async(_encode_many, (chunk,)))
            yield from done

    try:
        yield ordered()
    finally:
        pool.terminate()
        pool.join()

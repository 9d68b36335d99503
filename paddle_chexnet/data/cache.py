"""The preprocessed image cache: every image decoded and resized once, kept as uint8 pixels in a few large files.

A cache is a folder (everything in it is addressed relative to it, so it can be
moved or copied, e.g. to a node's local disk)::

    CACHE/manifest.json       the commit point: settings, the shards, one row per image (JSON)
    CACHE/pixels-00000.u8 ... append-only shards of raw pixels, memory-mapped by readers
    CACHE/unreadable.txt      images the last build could not decode, with the reason
    CACHE/build.journal       only while a build runs, or after one was killed
    CACHE/.lock               the build lock (``fcntl.flock``)

What is stored for an image is exactly ``resize_shorter_side(read_xray(source), size)``
(:func:`~paddle_chexnet.data.images.read_xray`, then
:func:`~paddle_chexnet.data.transforms.resize_shorter_side`: PIL bilinear, as
``torchvision.transforms.Resize(size)``), as C-order uint8: ``[H, W]`` for a grey
picture (mode ``'L'``), ``[H, W, 3]`` for one with colour content. ``read_xray``
returns ``'L'`` whenever the channels are equal, which is every NIH image
(their one RGBA file included), so a NIH cache is one plane per image; a
colour picture keeps its three interleaved planes so that it too comes back
bit-identical (``channels`` is 3 in its row). The reader therefore returns
what the PNG path returns, and :class:`~paddle_chexnet.data.transforms.EvalTransform`
/ :class:`~paddle_chexnet.data.transforms.TrainTransform` (whose resize is then a
no-op) give bit-identical tensors from either.

Rows are keyed by the image's path relative to the folder the cache was built
from, with ``/`` separators (NIH: ``images_001/images/00000001_000.png`` or
``00000001_000.png``; CheXpert: ``train/patient00001/study1/view1_frontal.jpg``).
:meth:`ImageCache.lookup` also accepts a bare file name (NIH's label lists)
when exactly one key has it, and a longer path that ends with a key (a
CheXpert CSV's ``CheXpert-v1.0-small/train/...``).

Nothing half-written is read as valid: shards only grow, the manifest is
replaced atomically at the end of a build and records each shard's committed
length, and readers map only that many bytes. A reader may therefore keep
training on a cache while a build adds images to it.
"""
from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from paddle_chexnet.data.datasets import ChestXray14Dataset, MissingImagesError
from paddle_chexnet.data.label_lists import LabelList, read_label_list

logger = logging.getLogger(__name__)


FORMAT = "paddle-chexnet-image-cache"


# Bump when the bytes stored for an image would change (decoding, resizing, layout): old caches are then refused.
FORMAT_VERSION = 1


MANIFEST_NAME = "manifest.json"


JOURNAL_NAME = "build.journal"


LOCK_NAME = ".lock"


UNREADABLE_NAME = "unreadable.txt"


RESIZE_METHOD = (
    "shorter side to size, PIL.Image.BILINEAR (paddle_chexnet.data.transforms.resize_shorter_side, "
    "as torchvision.transforms.Resize(size))"
)


DECODER = "paddle_chexnet.data.images.read_xray ('L' when the channels are equal, else 'RGB')"


# The per-image columns of the manifest's "images" table, all the same length.
COLUMNS = ("path", "shard", "offset", "height", "width", "channels", "source_bytes", "source_mtime_ns", "crc32")


BUILD_HINT = "python tools/build_cache.py --image-dir IMAGES --output {root} --size SIZE"


class CacheError(ValueError):
    """A folder that is not a complete, readable cache of this format; the message says what to do."""


class CacheSizeError(CacheError):
    """A cache built for another image size than the run's ``--resize``."""


def shard_name(index: int) -> str:
    """The file name of shard ``index``."""
    return f"pixels-{index:05d}.u8"


def pixel_crc(pixels: bytes | np.ndarray) -> int:
    """CRC-32 of an image's stored bytes (what the manifest's ``crc32`` column holds)."""
    return zlib.crc32(pixels if isinstance(pixels, bytes) else np.ascontiguousarray(pixels).data) & 0xFFFFFFFF


def empty_table() -> dict[str, list]:
    """A manifest image table with no rows."""
    return {name: [] for name in COLUMNS}


def manifest_text(manifest: Mapping[str, Any]) -> str:
    """The manifest as written: sorted keys, one line per table column (deterministic bytes)."""
    head = {k: v for k, v in manifest.items() if k != "images"}
    lines = json.dumps(head, indent=1, sort_keys=True)[:-2].splitlines()
    columns = manifest["images"]
    table = ",\n".join(f"  {json.dumps(name)}: {json.dumps(list(columns[name]), separators=(',', ':'))}"
                       for name in COLUMNS)
    return "\n".join(lines) + ',\n "images": {\n' + table + "\n }\n}\n"


def read_manifest(root: str | Path) -> dict[str, Any]:
    """Read and check ``root/manifest.json``: format, version, table and shard lengths.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        CacheError: no manifest (never built, or a build was interrupted), an unknown
            format or version, a malformed table, or a shard shorter than its committed length.
    """
    root = Path(root)
    hint = BUILD_HINT.format(root=root)
    if not root.is_dir():
        raise FileNotFoundError(f"image cache not found: {root}. Build it with {hint}")
    path = root / MANIFEST_NAME
    if not path.is_file():
        if (root / JOURNAL_NAME).is_file():
            raise CacheError(f"{root} holds an unfinished build (no {MANIFEST_NAME} yet): re-run the same "
                             f"{hint} to finish it")
        raise CacheError(f"{root} is not an image cache (no {MANIFEST_NAME}); build one with {hint}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(f"{path}: unreadable manifest ({exc}); rebuild the cache with {hint}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CacheError(f"{path} is not a paddle-chexnet image cache manifest (key 'format' is not {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CacheError(
            f"{path}: cache format version {manifest.get('format_version')!r}, this version of paddle-chexnet "
            f"reads version {FORMAT_VERSION}; build a new cache (into another folder) with {hint}"
        )
    for key in ("size", "shards", "images", "count"):
        if key not in manifest:
            raise CacheError(f"{path}: key {key!r} is missing; rebuild the cache with {hint}")
    table = manifest["images"]
    lengths = {name: len(table.get(name, ())) for name in COLUMNS}
    if any(n != manifest["count"] for n in lengths.values()):
        raise CacheError(f"{path}: the image table's columns do not all have {manifest['count']} rows ({lengths}); "
                         f"rebuild the cache with {hint}")
    for shard in manifest["shards"]:
        file = root / shard["file"]
        have = file.stat().st_size if file.is_file() else -1
        if have < shard["bytes"]:
            state = "missing" if have < 0 else f"{have} bytes, the manifest says {shard['bytes']}"
            raise CacheError(f"cache shard {file} is {state}: the cache was copied incompletely; copy it again "
                             f"or rebuild it with {hint}")
    return manifest


class KeyIndex:
    """Find the key (relative POSIX path) a name means: the key itself, a bare file name, or a longer path.

    A bare file name (NIH's label lists) matches the one key with that name; a
    path with folders matches the key it ends with (a CheXpert CSV's
    ``CheXpert-v1.0-small/train/...`` finds ``train/...``).

    Args:
        keys (Iterable[str]): the keys.
        where (str, optional): what holds them, for messages. Default: 'the image folder'.
    """

    def __init__(self, keys: Iterable[str], where: str = "the image folder") -> None:
        self.keys = set(keys)
        self.where = where
        self._by_name: dict[str, list[str]] | None = None

    def find(self, name: str) -> str | None:
        """The key ``name`` means, or ``None``.

        Raises:
            CacheError: a bare file name that several keys share (two of them are named).
        """
        name = name.replace("\\", "/")
        if name in self.keys:
            return name
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if len(parts) == 1:
            if self._by_name is None:
                self._by_name = {}
                for key in sorted(self.keys):
                    self._by_name.setdefault(key.rsplit("/", 1)[-1], []).append(key)
            shared = self._by_name.get(parts[0], [])
            if len(shared) > 1:
                raise CacheError(f"{self.where} holds several images named {parts[0]} ({shared[0]}, {shared[1]}); "
                                 "name them by their relative paths, or keep one of them")
            return shared[0] if shared else None
        for start in range(len(parts)):
            key = "/".join(parts[start:])
            if key in self.keys:
                return key
        return None


class ImageCache:
    """Read a cache folder made by ``tools/build_cache.py``: the resized uint8 pixels of each image, by key.

    Opening reads the manifest (and checks it, see :func:`read_manifest`); pixels
    are read from memory-mapped shards on demand, so forked data-loader workers
    share the page cache and a process touches only the images it reads. The
    object pickles as its folder (a spawned worker reopens it).

    Args:
        root (str | Path): the cache folder.

    Attributes:
        root (Path): the folder.
        size (int): the shorter side every image was resized to.
        keys (list[str]): the image keys (relative paths), sorted.
        manifest (dict): the manifest, without its image table.

    Raises:
        FileNotFoundError, CacheError: see :func:`read_manifest`.

    Examples:
        >>> cache = ImageCache("cache-256")  # doctest: +SKIP
        >>> cache.check_size(256)  # doctest: +SKIP
        >>> cache.read_array("00000001_000.png").shape  # doctest: +SKIP
        (256, 256)
    """

    def __init__(self, root: str | Path) -> None:
        self._open(Path(root))

    def _open(self, root: Path) -> None:
        manifest = read_manifest(root)
        table = manifest.pop("images")
        self.root = root
        self.manifest = manifest
        self.size = int(manifest["size"])
        self.keys: list[str] = list(table["path"])
        self._row = {key: i for i, key in enumerate(self.keys)}
        self._shard = np.asarray(table["shard"], dtype=np.int64)
        self._offset = np.asarray(table["offset"], dtype=np.int64)
        self._shape = np.stack([np.asarray(table[c], dtype=np.int64) for c in ("height", "width", "channels")], 1) \
            if self.keys else np.zeros((0, 3), dtype=np.int64)
        self._crc = np.asarray(table["crc32"], dtype=np.int64)
        self._shard_bytes = [int(s["bytes"]) for s in manifest["shards"]]
        self._shard_files = [root / s["file"] for s in manifest["shards"]]
        self._maps: list[np.ndarray | None] = [None] * len(self._shard_files)
        self._names = KeyIndex(self.keys, f"the cache {root}")
        if self.keys:
            ends = self._offset + self._shape.prod(axis=1)
            limits = np.asarray(self._shard_bytes, dtype=np.int64)[self._shard]
            bad = np.flatnonzero((self._shape.min(axis=1) < 1) | (ends > limits))
            if bad.size:
                raise CacheError(f"{root / MANIFEST_NAME}: image {self.keys[bad[0]]} lies outside its shard; "
                                 f"rebuild the cache with {BUILD_HINT.format(root=root)}")
        if (root / JOURNAL_NAME).is_file():
            logger.warning("%s has an unfinished build (%s); reading the last complete one", root, JOURNAL_NAME)

    def __getstate__(self) -> dict[str, Any]:
        return {"root": str(self.root)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._open(Path(state["root"]))

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self._row

    def __repr__(self) -> str:
        return f"ImageCache({str(self.root)!r}, size={self.size}, images={len(self)})"

    @property
    def unreadable(self) -> list[dict[str, str]]:
        """Images the build could not decode: ``[{'path': ..., 'reason': ...}]``."""
        return list(self.manifest.get("unreadable", []))

    def check_size(self, resize: int, flag: str = "--resize") -> None:
        """Raise :class:`CacheSizeError` unless the cache holds images resized to ``resize``."""
        if int(resize) != self.size:
            raise CacheSizeError(
                f"the cache {self.root} holds images resized to {self.size} px (shorter side), the run resizes to "
                f"{resize} ({flag} {resize}); pass {flag} {self.size}, or build a cache for {resize} with "
                f"python tools/build_cache.py --image-dir IMAGES --output CACHE --size {resize}"
            )

    def shape(self, key: str) -> tuple[int, ...]:
        """The stored array's shape: ``(H, W)`` or ``(H, W, 3)``."""
        h, w, c = (int(v) for v in self._shape[self._index(key)])
        return (h, w) if c == 1 else (h, w, c)

    def channels(self, keys: Iterable[str] | None = None) -> int:
        """3 if any of ``keys`` (default: all) has colour content, else 1."""
        rows = self._shape[:, 2] if keys is None else self._shape[[self._index(k) for k in keys], 2]
        return int(rows.max()) if len(rows) else 1

    def read_array(self, key: str | Path) -> np.ndarray:
        """The stored pixels of ``key``: a read-only uint8 view ``[H, W]`` or ``[H, W, 3]`` into the shard.

        ``key`` may be a :class:`~pathlib.Path` (a dataset's ``paths``); it is used
        as a relative POSIX path. The view needs no copy; slice or copy it before
        keeping it for long (it keeps the shard mapped).
        """
        key = key.as_posix() if isinstance(key, Path) else key
        row = self._index(key)
        h, w, c = (int(v) for v in self._shape[row])
        start = int(self._offset[row])
        flat = self._map(int(self._shard[row]))[start:start + h * w * c]
        return flat.reshape((h, w) if c == 1 else (h, w, c))

    def read_image(self, key: str | Path) -> Image.Image:
        """The stored pixels of ``key`` as a PIL image, mode ``'L'`` or ``'RGB'``: a drop-in for ``read_xray``.

        Equal to ``resize_shorter_side(read_xray(source), self.size)``, so the
        transforms' own resize leaves it unchanged. Pass it as ``reader`` to
        :class:`~paddle_chexnet.data.datasets.ChestXray14Dataset`.
        """
        pixels = self.read_array(key)
        return Image.fromarray(np.array(pixels), mode="L" if pixels.ndim == 2 else "RGB")

    def verify(self, keys: Iterable[str] | None = None) -> int:
        """Check the CRC-32 of ``keys`` (default: all); returns how many were checked.

        Raises:
            CacheError: names the first image whose bytes differ from what the build wrote.
        """
        count = 0
        for key in self.keys if keys is None else keys:
            if pixel_crc(self.read_array(key)) != int(self._crc[self._index(key)]):
                raise CacheError(f"cache {self.root}: the pixels of {key} are corrupt (checksum differs); "
                                 f"rebuild the cache into a new folder with {BUILD_HINT.format(root='NEW')}")
            count += 1
        return count

    def lookup(self, names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
        """Map names (keys, bare file names or longer paths ending with a key) to keys.

        Returns:
            tuple[dict[str, str], list[str]]: ``{name: key}`` for the names found, and the names not found.

        Raises:
            CacheError: a bare file name that several keys share (both are named).
        """
        found: dict[str, str] = {}
        missing: list[str] = []
        for name in names:
            key = self._names.find(name)
            if key is None:
                missing.append(name)
            else:
                found[name] = key
        return found, missing

    def _index(self, key: str) -> int:
        try:
            return self._row[key]
        except KeyError:
            raise KeyError(f"{key} is not in the image cache {self.root}") from None

    def _map(self, shard: int) -> np.ndarray:
        mapped = self._maps[shard]
        if mapped is None:
            mapped = np.memmap(self._shard_files[shard], dtype=np.uint8, mode="r", shape=(self._shard_bytes[shard],))
            self._maps[shard] = mapped
        return mapped


class CachedDataset(ChestXray14Dataset):
    """A :class:`~paddle_chexnet.data.datasets.ChestXray14Dataset` whose images come from an :class:`ImageCache`.

    Everything is checked before any image is read: the cache's size against
    ``resize``, and that every listed image is in the cache. ``paths`` are the
    cache keys and ``reader`` is :meth:`ImageCache.read_image` (a PIL image equal
    to the resized PNG), so :func:`~paddle_chexnet.evaluation.evaluate.evaluate`
    and the training loaders use it as they use a folder dataset.

    Args:
        cache (ImageCache | str | Path): the cache, or its folder.
        label_list (LabelList | str | Path): the labels, or a label-list file.
        transform (Callable, optional): e.g. :class:`~paddle_chexnet.data.transforms.EvalTransform`
            or :class:`~paddle_chexnet.data.uint8.Uint8TrainTransform`. Default: None.
        skip_missing (bool, optional): drop listed images that are not in the cache
            (their names are in ``skipped``) instead of raising. Default: False.
        resize (int, optional): the run's ``--resize``; must equal the cache's size. Default: None (not checked).

    Attributes:
        cache (ImageCache): the cache (besides the attributes of ``ChestXray14Dataset``).

    Raises:
        CacheSizeError: the cache was built for another size.
        MissingImagesError: listed images are not in the cache and ``skip_missing`` is False.
    """

    def __init__(
        self,
        cache: ImageCache | str | Path,
        label_list: LabelList | str | Path,
        transform: Callable | None = None,
        skip_missing: bool = False,
        resize: int | None = None,
    ) -> None:
        cache = cache if isinstance(cache, ImageCache) else ImageCache(cache)
        if resize is not None:
            cache.check_size(resize)
        if not isinstance(label_list, LabelList):
            label_list = read_label_list(label_list)
        found, missing = cache.lookup(label_list.names)
        source = label_list.source or "the label list"
        if missing and (not skip_missing or not found):
            unreadable = {Path(u["path"]).name for u in cache.unreadable} & {Path(m).name for m in missing}
            raise MissingImagesError(
                f"{len(missing)} of {len(label_list)} images listed in {source} are not in the image cache "
                f"{cache.root}; first: {', '.join(missing[:5])}"
                + (f" ({len(unreadable)} of them could not be decoded by the build, see "
                   f"{cache.root / UNREADABLE_NAME})" if unreadable else "")
                + (". Add them with python tools/build_cache.py --image-dir IMAGES --output "
                   f"{cache.root} --size {cache.size} --label-list {source}, or pass --skip-missing"
                   if found else "; check --cache and the label list")
            )
        if missing:
            logger.warning("skipping %d of %d listed images missing from the cache %s; first: %s",
                           len(missing), len(label_list), cache.root, ", ".join(missing[:5]))
            label_list = label_list.subset([n for n in label_list.names if n in found])
        super().__init__(cache.root, label_list, transform, image_index={n: Path(k) for n, k in found.items()},
                         reader=cache.read_image)
        self.skipped = missing
        self.cache = cache

    def verify_images(self, skip_unreadable: bool = False) -> tuple[dict[int, str], dict[int, tuple[int, int]]]:
        """Nothing to open: the cache's manifest was checked when it was opened (every row inside its shard).

        The build listed the images it could not decode (``unreadable.txt``); the sources' sizes are not
        kept, so there are no sizes to report either.
        """
        return {}, {}

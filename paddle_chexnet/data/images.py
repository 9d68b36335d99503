"""Reading X-ray image files into the 8-bit image the network's preprocessing expects.

NIH's PNGs are 8-bit grayscale, but real collections also hold RGBA, RGB,
palette and 16-bit files. :func:`read_xray` returns mode ``'L'`` whenever the
picture is gray (all channels equal), else ``'RGB'``. Returning ``'L'`` for a
gray picture is exact, not an approximation: PIL's RGB->L weights sum to
65536/65536, so ``convert('L')`` of equal channels gives the same value, and
resizing one plane equals resizing each of three equal planes. It is also 3x
less resizing work than the reference's ``convert('RGB')``.

16-bit images are scaled linearly from their own minimum..maximum to 0..255:
X-ray detectors fill 10 to 14 of the 16 bits, so scaling by 65535 would give
a nearly black picture. (The reference's ``convert('RGB')`` clips them to 255,
which is worse.)

8-bit gray, RGB and RGBA PNGs (all of NIH's) are decoded by OpenCV when an
OpenCV wheel is installed (``opencv-python-headless``, or the ``opencv-python``
an environment already has): it is faster than PIL and gives the same pixels
(``benchmarks/bench_decode.py`` checks both). Every other file, and any PNG that
OpenCV does not decode as expected, goes through PIL; resizing is PIL's in
every case (:mod:`paddle_chexnet.data.transforms`).
"""
from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image, UnidentifiedImageError

_WIDE_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})


PICTURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
#: every suffix an image folder is searched for (suffix-less DICOM files are found by their magic)
IMAGE_SUFFIXES = PICTURE_SUFFIXES | DICOM_SUFFIXES


class ImageReadError(OSError):
    """An image file that is missing, truncated or not an image."""


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC: the last 8 bytes of a complete PNG
#: PNG colour types OpenCV decodes here, and the array shape each gives (0 gray, 2 RGB, 6 RGBA)
_OPENCV_CHANNELS = {0: None, 2: 3, 6: 4}


@functools.lru_cache(maxsize=None)
def opencv() -> ModuleType | None:
    """The ``cv2`` module when an OpenCV wheel is installed, else ``None`` (PIL decodes everything)."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def opencv_decodes(header: bytes) -> bool:
    """True for the start of an 8-bit gray, RGB or RGBA PNG (its first 26 bytes suffice)."""
    return (len(header) >= 26 and header.startswith(_PNG_SIGNATURE) and header[12:16] == b"IHDR"
            and header[24] == 8 and header[25] in _OPENCV_CHANNELS)


def decode_png_opencv(data: bytes, cv2: ModuleType) -> Image.Image | None:
    """Decode a complete 8-bit gray/RGB/RGBA PNG with OpenCV into what :func:`to_model_mode` gives, or ``None``.

    ``None`` (the caller then uses PIL) for any other file, a truncated one, or a decode whose
    shape is not the one the header promises (OpenCV may expand a ``tRNS`` transparency to alpha).
    """
    if not (opencv_decodes(data) and data.endswith(_PNG_END)):
        return None
    planes = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    channels = _OPENCV_CHANNELS[data[25]]
    if planes is None or planes.dtype != np.uint8 or planes.shape[2:] != ((channels,) if channels else ()):
        return None
    if channels is None:
        return Image.fromarray(planes)
    blue, green, red = planes[..., 0], planes[..., 1], planes[..., 2]  # OpenCV's order; alpha dropped
    if np.array_equal(blue, green) and np.array_equal(blue, red):
        return Image.fromarray(np.ascontiguousarray(blue))
    return Image.fromarray(np.ascontiguousarray(planes[..., 2::-1]))


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale an array linearly from its min..max to 0..255 (all zeros when constant)."""
    values = np.asarray(values, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def to_model_mode(image: Image.Image) -> Image.Image:
    """Convert any PIL image to ``'L'`` (gray content) or ``'RGB'`` (colour content)."""
    mode = image.mode
    if mode == "L":
        return image
    if mode in _WIDE_MODES:
        return Image.fromarray(scale_to_uint8(np.asarray(image)), mode="L")
    if mode in ("1", "LA", "La"):
        return image.convert("L")  # LA -> L drops alpha, as convert('RGB') does
    rgb = image if mode == "RGB" else image.convert("RGB")
    planes = np.asarray(rgb)
    if np.array_equal(planes[..., 0], planes[..., 1]) and np.array_equal(planes[..., 0], planes[..., 2]):
        return Image.fromarray(np.ascontiguousarray(planes[..., 0]), mode="L")
    return rgb


def read_xray(path: str | Path) -> Image.Image:
    """Read a PNG/JPEG (or DICOM, by suffix or magic) X-ray as a PIL image in mode ``'L'`` or ``'RGB'``.

    Raises:
        ImageReadError: the file is missing, unreadable or truncated; the message names it.
    """
    path = Path(path)
    from paddle_chexnet.data.dicom import (  # pydicom itself is imported only for DICOM files
        is_dicom_file,
        read_dicom,
    )

    # DICOM by suffix, or by its "DICM" magic (PACS exports often have no suffix)
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES or (suffix not in PICTURE_SUFFIXES | {'.gif', '.webp'} and is_dicom_file(path)):
        return read_dicom(path)
    try:
        with open(path, "rb") as handle:
            header = handle.read(26)
            cv2 = opencv() if opencv_decodes(header) else None
            if cv2 is not None:
                image = decode_png_opencv(header + handle.read(), cv2)
                if image is not None:
                    return image
            handle.seek(0)
            with Image.open(handle) as opened:
                opened.load()
                return to_model_mode(opened)
    except FileNotFoundError as exc:
        raise ImageReadError(f"image file not found: {path}") from exc
    except UnidentifiedImageError as exc:  # PIL's own text names the file handle, not the path
        raise ImageReadError(f"cannot read image {path}: not an image file PIL can identify. Is the file complete "
                             "(re-extract it)?") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}. Is the file complete (re-extract it)?") from exc


def scan_images(folder: str | Path) -> Iterator[Path]:
    """Image files under ``folder`` at any depth, by suffix (hidden files and folders skipped), sorted per folder."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                yield Path(root) / name


def list_images(path: str | Path) -> list[Path]:
    """One image file, or every image under a folder (any depth; suffix-less DICOM files too), sorted.

    Raises:
        FileNotFoundError: the path does not exist, or the folder holds no image.
    """
    from paddle_chexnet.data.dicom import is_dicom_file

    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no such image or folder: {path}")
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            candidate = Path(root) / name
            if name.startswith("."):
                continue
            suffix = candidate.suffix.lower()
            if suffix in IMAGE_SUFFIXES or (not suffix and is_dicom_file(candidate)):
                found.append(candidate)
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))} or DICOM) found under {path}")
    return found


#: an image whose shorter side is below this fraction of the network's input size is reported as far
#: too small (it is upscaled by more than 2x and carries little of the detail the network was trained on)
SMALL_IMAGE_FRACTION = 0.5


def image_size(path: str | Path) -> tuple[int, int] | None:
    """``(width, height)`` from the file's header (no pixel decoding), or ``None`` when it cannot be read."""
    path = Path(path)
    from paddle_chexnet.data.dicom import is_dicom_file

    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES or (suffix not in PICTURE_SUFFIXES and is_dicom_file(path)):
        try:
            import pydicom

            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
            return int(ds.Columns), int(ds.Rows)
        except Exception:  # noqa: BLE001 - any unreadable header: reading the image later says why
            return None
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def find_small_images(paths: Iterable[str | Path], input_size: int, threads: int = 8,
                      fraction: float = SMALL_IMAGE_FRACTION) -> list[tuple[Path, tuple[int, int]]]:
    """The images whose shorter side is below ``fraction * input_size``, with their sizes, in order.

    Reads only headers, with ``threads`` threads (the time is spent waiting for the disk).
    """
    from concurrent.futures import ThreadPoolExecutor

    limit = fraction * input_size
    paths = [Path(p) for p in paths]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        sizes = list(pool.map(image_size, paths, chunksize=64))
    return [(path, size) for path, size in zip(paths, sizes) if size is not None and min(size) < limit]


def small_images_message(found: Sequence[tuple[Path, tuple[int, int]]], total: int, input_size: int,
                         fraction: float = SMALL_IMAGE_FRACTION, shown: int = 5) -> str:
    """The one warning about :func:`find_small_images`' result: count, threshold, first examples."""
    examples = ", ".join(f"{path.name} ({w}x{h})" for path, (w, h) in found[:shown])
    more = f" and {len(found) - shown} more" if len(found) > shown else ""
    return (f"{len(found)} of {total} images are smaller than {fraction * input_size:g} px on their shorter side "
            f"(the network's input is {input_size} px): they are upscaled and carry little detail, and their "
            f"predictions count like any other: {examples}{more}. Check that they are X-rays at full resolution")

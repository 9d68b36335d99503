"""Reading DICOM X-rays into the 8-bit grayscale picture the network expects.

Hospitals keep radiographs as DICOM, not PNG. A DICOM pixel array is not a
picture yet; three display steps of the standard (PS3.3 C.11) turn it into one,
and we apply them in the standard's order:

1. Modality LUT: ``Rescale Slope/Intercept`` (or a Modality LUT Sequence) from
   stored values to physical values.
2. VOI LUT: the ``Window Center/Width`` (or VOI LUT Sequence) the modality
   chose for display. Values outside the window saturate, which is the point:
   it spends the 8 output bits on the range that shows the anatomy.
3. ``MONOCHROME1`` means "high values are dark" (some CR/DR vendors); it is
   inverted so that bone is bright, as in ``MONOCHROME2`` and NIH's PNGs.

The result is scaled to 0..255: from the VOI output range when a window or
VOI LUT was applied (so the window's saturation is kept), otherwise from the
image's own minimum..maximum, as :func:`paddle_chexnet.data.images.read_xray` does
for 16-bit PNGs. pydicom's processing functions do steps 1 and 2.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from paddle_chexnet.data.images import ImageReadError, scale_to_uint8

_LOG = logging.getLogger(__name__)


DICM_MAGIC = b"DICM"


_PREAMBLE_LENGTH = 128


def is_dicom_file(path: str | Path) -> bool:
    """True when the file starts with DICOM's 128-byte preamble followed by ``DICM``.

    Files without a suffix (PACS exports often have none) are recognised this way.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(_PREAMBLE_LENGTH + len(DICM_MAGIC))
    except OSError:
        return False
    return head[_PREAMBLE_LENGTH:] == DICM_MAGIC


def _import_pydicom():
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as exc:
        raise ImportError(
            "reading DICOM files needs pydicom >= 3.0: pip install 'pydicom>=3.0' "
            "(compressed transfer syntaxes may also need pylibjpeg or gdcm)"
        ) from exc
    return pydicom, apply_modality_lut, apply_voi_lut


def voi_output_range(ds) -> tuple[float, float] | None:
    """The value range a VOI transform of ``ds`` maps onto, or ``None`` when it has none.

    Mirrors PS3.3 C.11.2.1.2: a window maps onto the range of the modality
    output (stored bits, shifted by the rescale); a VOI LUT Sequence maps onto
    ``0 .. 2**bits - 1`` of its LUT descriptor.
    """
    if ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    bits_stored = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        low, high = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.PixelRepresentation) == 0:
        low, high = 0.0, float(2**bits_stored - 1)
    else:
        low, high = float(-(2 ** (bits_stored - 1))), float(2 ** (bits_stored - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = low * float(slope) + float(intercept), high * float(slope) + float(intercept)
    return (min(low, high), max(low, high))


def dicom_to_uint8(ds, apply_window: bool = True) -> np.ndarray:
    """The display pipeline (modality LUT, VOI LUT, MONOCHROME1 inversion) of a read dataset, as uint8.

    Args:
        ds (pydicom.Dataset): a dataset with pixel data.
        apply_window (bool, optional): apply the file's VOI LUT or window; ``False``
            scales the full modality range instead. Default: True.

    Returns:
        numpy.ndarray: ``[H, W]`` uint8 for monochrome data, ``[H, W, 3]`` for colour.
    """
    _, apply_modality_lut, apply_voi_lut = _import_pydicom()
    pixels = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        _LOG.warning("DICOM has %d frames; using the first", frames)
        pixels = pixels[0]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        # colour DICOM (a secondary capture); pydicom already converts YBR to RGB by default
        return scale_to_uint8(pixels) if pixels.dtype != np.uint8 else np.asarray(pixels)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"unsupported Photometric Interpretation {photometric!r}; expected MONOCHROME1/2")
    values = apply_modality_lut(pixels, ds).astype(np.float64)
    out_range = voi_output_range(ds) if apply_window else None
    if out_range is not None:
        values = apply_voi_lut(values, ds).astype(np.float64)
        low, high = out_range
    else:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        scaled = np.zeros(values.shape, dtype=np.float64)
    else:
        scaled = np.clip((values - low) / (high - low), 0.0, 1.0)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.round(scaled * 255.0).astype(np.uint8)


def read_dicom(path: str | Path, apply_window: bool = True) -> Image.Image:
    """Read a DICOM X-ray as an 8-bit PIL image (``'L'``; ``'RGB'`` for colour DICOM).

    Args:
        path (str | Path): the DICOM file (any suffix).
        apply_window (bool, optional): apply the file's VOI LUT or window. Default: True.

    Raises:
        ImportError: pydicom is not installed; the message says how to install it.
        ImageReadError: the file is missing, not DICOM, has no pixel data or
            cannot be decoded; the message names the file.

    Examples:
        >>> image = read_dicom("chest.dcm")  # doctest: +SKIP
        >>> image.mode
        'L'
    """
    pydicom, _, _ = _import_pydicom()
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"DICOM file not found: {path}")
    try:
        ds = pydicom.dcmread(str(path))
    except pydicom.errors.InvalidDicomError as exc:
        raise ImageReadError(f"{path} is not a DICOM file ({exc}); give a DICOM, PNG or JPEG file") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise ImageReadError(f"cannot read DICOM {path}: {exc}. Is the file complete?") from exc
    if "PixelData" not in ds:
        raise ImageReadError(f"DICOM {path} has no pixel data (is it a report or a structured document?)")
    try:
        array = dicom_to_uint8(ds, apply_window=apply_window)
    except (RuntimeError, NotImplementedError, ValueError, AttributeError) as exc:
        raise ImageReadError(
            f"cannot decode the pixels of DICOM {path} (transfer syntax "
            f"{getattr(ds.file_meta, 'TransferSyntaxUID', 'unknown')}): {exc}. Compressed files may need "
            "'pip install pylibjpeg pylibjpeg-libjpeg' or 'python-gdcm'"
        ) from exc
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB" if array.ndim == 3 else "L")

"""``preprocess.json``: what an exported model expects, so that any runtime can reproduce its input exactly.

Every export of ``tools/export_model.py`` has this file beside the model. It
states the input (name, shape, dtype, layout), the output (probabilities: the
graph ends with the sigmoid), the class names and the task, the thresholds
and their rule when the weights' :class:`~paddle_chexnet.models.spec.ModelSpec`
has them (temperatures too), and the preprocessing of
:mod:`paddle_chexnet.data.transforms`, step by step:

1. read the file as 8-bit; gray pictures stay one plane, which is then used for
   all three channels (16-bit pictures are scaled from their minimum..maximum
   to 0..255, see :mod:`paddle_chexnet.data.images`);
2. resize with PIL's bilinear filter so that the shorter side is ``resize``
   (the longer side ``int(resize * long / short)``, as ``torchvision.transforms.Resize``);
3. center crop ``crop`` x ``crop`` (top ``round((H - crop) / 2)``, left ``round((W - crop) / 2)``);
4. float32 ``x / 255``, then ``- mean``, then ``/ std`` per channel (ImageNet's), channels RGB, layout CHW.

:func:`apply_preprocess` is that recipe read back from the file (a reference
for other programs; the package itself uses :class:`~paddle_chexnet.data.transforms.EvalTransform`).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from paddle_chexnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from paddle_chexnet.models.spec import ModelSpec

PREPROCESS_FILE = "preprocess.json"

#: bump when the meaning of a field changes
PREPROCESS_FORMAT = 1

INPUT_NAME = "image"

OUTPUT_NAME = "probabilities"


def preprocess_record(
    spec: ModelSpec,
    crop: int = 224,
    resize: int = 256,
    files: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of ``preprocess.json`` for a network of ``spec`` exported at ``crop``.

    Args:
        spec (ModelSpec): the exported network's spec (class names, task, thresholds ...).
        crop (int, optional): the input's height and width. Default: 224.
        resize (int, optional): the shorter side before the center crop. Default: 256.
        files (Mapping, optional): the model files of the export, relative to its folder. Default: None.
        extra (Mapping, optional): further top-level keys (versions, the source weights). Default: None.

    Raises:
        ValueError: ``crop`` larger than ``resize``, or not positive.
    """
    if crop < 1 or crop > resize:
        raise ValueError(f"crop ({crop}) must be positive and at most resize ({resize})")
    record: dict[str, Any] = {
        "format": "paddle-chexnet-export",
        "format_version": PREPROCESS_FORMAT,
        "task": spec.task,
        "arch": spec.arch,
        "pooling": spec.pooling,
        "class_names": list(spec.class_names),
        "input": {
            "name": INPUT_NAME,
            "shape": ["N", 3, crop, crop],
            "dtype": "float32",
            "layout": "NCHW",
            "batch": "dynamic",
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["N", spec.num_classes],
            "dtype": "float32",
            "meaning": "probability of each class (the graph ends with the sigmoid), in class_names order",
        },
        "preprocess": {
            "read": "8-bit picture; gray when all channels are equal; 16-bit scaled from its min..max to 0..255",
            "resize": {"shorter_side": resize, "longer_side": "int(shorter_side * long / short)",
                       "interpolation": "bilinear", "library": "PIL (Image.resize(..., Image.BILINEAR))",
                       "skip_when_equal": True},
            "crop": {"type": "center", "size": crop,
                     "top": "round((H - size) / 2)", "left": "round((W - size) / 2)"},
            "scale": 1.0 / 255.0,
            "mean": [float(v) for v in IMAGENET_MEAN],
            "std": [float(v) for v in IMAGENET_STD],
            "order": ["float32(pixel) / 255", "- mean[c]", "/ std[c]"],
            "channel_order": "RGB",
            "gray": "the one gray plane is used for all three channels",
            "ten_crop": ("optional, as CheXNet's evaluation: the four corner crops and the center crop of the "
                         "resized image and of its horizontal mirror (torchvision TenCrop); average the "
                         "ten probabilities"),
        },
        "thresholds": None if spec.thresholds is None else {k: float(v) for k, v in spec.thresholds.items()},
        "threshold_rule": spec.threshold_rule,
        "temperatures": None if spec.temperatures is None else {k: float(v) for k, v in spec.temperatures.items()},
    }
    if spec.temperatures is not None:
        record["temperatures_note"] = ("the graph outputs sigmoid(logit); calibrated probabilities are "
                                       "sigmoid(logit(p) / T) per class")
    if spec.thresholds is not None:
        record["thresholds_note"] = "a class is called positive when its probability is at or above its threshold"
    if files:
        record["files"] = dict(files)
    if extra:
        record.update(extra)
    return record


def write_preprocess(folder: str | Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` as ``folder/preprocess.json``."""
    from paddle_chexnet.utils.io import atomic_write_text

    path = Path(folder) / PREPROCESS_FILE
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def read_preprocess(folder_or_file: str | Path) -> dict[str, Any]:
    """``preprocess.json`` of an export folder (or the file itself).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, or not an export's ``preprocess.json``.
    """
    path = Path(folder_or_file)
    if path.is_dir():
        path = path / PREPROCESS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {PREPROCESS_FILE} at {path}; export the model with tools/export_model.py")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(record, dict) or record.get("format") != "paddle-chexnet-export":
        raise ValueError(f"{path}: not the preprocess.json of a paddle-chexnet export")
    return record


def apply_preprocess(record: Mapping[str, Any], image: Image.Image) -> np.ndarray:
    """The ``[1, 3, crop, crop]`` float32 input of one image, following ``record`` (``preprocess.json``).

    Args:
        record (Mapping): the content of ``preprocess.json``.
        image (PIL.Image.Image): the picture as read (mode ``'L'`` or ``'RGB'``;
            :func:`~paddle_chexnet.data.images.read_xray` reads PNG, JPEG and DICOM so).
    """
    steps = record["preprocess"]
    resize, crop = int(steps["resize"]["shorter_side"]), int(steps["crop"]["size"])
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(resize * long / short)
    size = (resize, new_long) if width <= height else (new_long, resize)
    if size != (width, height):
        image = image.resize(size, Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    mean = np.asarray(steps["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(steps["std"], dtype=np.float32)[:, None, None]
    chw = np.broadcast_to((pixels - mean) / std, (3, *pixels.shape[1:]))
    top, left = int(round((chw.shape[1] - crop) / 2.0)), int(round((chw.shape[2] - crop) / 2.0))
    return np.ascontiguousarray(chw[None, :, top:top + crop, left:left + crop], dtype=np.float32)

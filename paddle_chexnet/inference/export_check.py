"""Checking an export against the network it came from: the same probabilities from every runtime.

The inputs are real pictures preprocessed as ``preprocess.json`` says:
synthetic X-rays drawn by :mod:`paddle_chexnet.data.synthetic` (always), and
the user's images when given. The reference is the network in Paddle's
dynamic graph (:class:`~paddle_chexnet.inference.predictors.DygraphPredictor`);
each runtime's largest absolute probability difference must stay within the
bound (1e-5 by default).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paddle_chexnet.data.images import list_images, read_xray
from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.data.transforms import EvalTransform
from paddle_chexnet.inference.predictors import Predictor

DEFAULT_ATOL = 1e-5


@dataclass
class LabelledInputs:
    """Preprocessed images and, where known, their labels.

    Attributes:
        batch (numpy.ndarray): float32 ``[N, 3, crop, crop]``.
        labels (numpy.ndarray | None): ``[N, C]`` 0/1 in the model's class order, or None.
        names (list[str]): one name per image.
        source (str): where they came from, for the reports.
    """

    batch: np.ndarray
    labels: np.ndarray | None
    names: list[str]
    source: str


def generated_inputs(count: int, crop: int = 224, resize: int = 256, seed: int = 0,
                     class_names: Sequence[str] = CLASS_NAMES) -> LabelledInputs:
    """``count`` synthetic X-rays (:func:`~paddle_chexnet.data.synthetic.render_example` at ``resize`` px).

    Their labels are given when the model's classes are ChestX-ray14's 14 findings.
    """
    from PIL import Image

    from paddle_chexnet.data.synthetic import render_example

    transform = EvalTransform("center", resize, crop)
    crops, labels = [], []
    for index in range(count):
        pixels, _, findings = render_example(seed, index, resize)
        crops.append(transform(Image.fromarray(pixels, mode="L")))
        labels.append([float(name in findings) for name in CLASS_NAMES])
    known = tuple(class_names) == tuple(CLASS_NAMES)
    return LabelledInputs(np.stack(crops).astype(np.float32), np.array(labels) if known else None,
                          [f"synthetic_{i:04d}" for i in range(count)],
                          f"{count} synthetic X-rays (paddle_chexnet.data.synthetic, seed {seed})")


def real_inputs(images: str | Path, labels: str | Path | None = None, crop: int = 224, resize: int = 256,
                limit: int | None = None, class_names: Sequence[str] = CLASS_NAMES) -> LabelledInputs:
    """The user's images (a file or a folder), with the label list's labels when one is given.

    Args:
        images (str | Path): an image or a folder (searched at any depth).
        labels (str | Path, optional): a CheXNet label list naming images of that folder; only they are used.
        limit (int, optional): use the first ``limit`` images. Default: None (all).

    Raises:
        FileNotFoundError: no images, or an image of the label list is missing.
        ValueError: a malformed label list (the message names the line).
    """
    transform = EvalTransform("center", resize, crop)
    if labels is not None:
        from paddle_chexnet.data.datasets import index_images
        from paddle_chexnet.data.label_lists import read_label_list

        table = read_label_list(labels, class_names)
        index = index_images(images)
        missing = [name for name in table.names if name not in index]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) of {labels} are not under {images}, e.g. {missing[0]}")
        names = table.names[:limit] if limit else table.names
        paths = [index[name] for name in names]
        values = np.asarray(table.labels[:len(names)], dtype=np.float64)
    else:
        paths = list_images(images)
        paths = paths[:limit] if limit else paths
        names, values = [p.name for p in paths], None
    batch = np.stack([transform(read_xray(path)) for path in paths]).astype(np.float32)
    source = f"{len(paths)} image(s) from {images}" + (f" labelled by {labels}" if labels is not None else "")
    return LabelledInputs(batch, values, names, source)


@dataclass(frozen=True)
class ComparisonRow:
    """One runtime on one set of inputs against the dynamic graph."""

    runtime: str
    inputs: str
    images: int
    max_abs_diff: float
    bound: float

    @property
    def ok(self) -> bool:
        return math.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.bound


def compare(reference: np.ndarray, predictors: Mapping[str, Predictor], batch: np.ndarray, inputs: str,
            bound: float = DEFAULT_ATOL) -> list[ComparisonRow]:
    """Each predictor's probabilities on ``batch`` against ``reference`` (the dynamic graph's)."""
    rows = []
    for name, predictor in predictors.items():
        got = predictor(batch)
        if got.shape != reference.shape:
            diff = float("inf")
        else:
            delta = np.abs(got.astype(np.float64) - reference.astype(np.float64))
            diff = float(delta.max()) if np.isfinite(delta).all() else float("inf")
        rows.append(ComparisonRow(name, inputs, len(batch), diff, bound))
    return rows


def format_comparison(rows: Sequence[ComparisonRow]) -> str:
    """The rows as a text table (runtime, inputs, images, max |prob diff|, bound, result)."""
    header = ("runtime", "inputs", "images", "max |prob diff|", "bound", "result")
    cells = [header] + [(r.runtime, r.inputs, str(r.images), f"{r.max_abs_diff:.2e}", f"{r.bound:.0e}",
                         "ok" if r.ok else "FAILED") for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)

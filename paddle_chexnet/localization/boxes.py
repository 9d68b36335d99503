"""Boxes from heatmaps, and their scoring against NIH's expert boxes.

The chain is: a low-resolution heatmap (7x7 or 8x8 for DenseNet-121) over the
network's input -> :func:`upsample_heatmap` to the ORIGINAL image's pixels
through the exact geometry of the preprocessing (:class:`InputGeometry`) ->
:func:`boxes_from_heatmap` (threshold, connected regions, one box per region)
-> :func:`localization_accuracy` against ``BBox_List_2017.csv``
(:func:`read_bbox_csv`), the evaluation of Wang et al., "ChestX-ray8",
CVPR 2017, Table 3.

Coordinates are continuous pixel coordinates of the original image: the
pixel in column ``i`` covers ``x`` in ``[i, i + 1)``, a box is ``(x, y, w, h)``
with its top-left corner at ``(x, y)``, as in NIH's file (1024x1024 images).
"""
from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from paddle_chexnet.data.labels import canonical_label
from paddle_chexnet.utils.io import atomic_path, atomic_write_text

#: The IoU thresholds of Wang et al. (2017), Table 3, reported by later papers.
IOU_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


#: The IoBB thresholds of Wang et al. (2017), Table 3.
IOBB_THRESHOLDS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)


#: The 8 findings NIH drew boxes for, in our spelling.
BBOX_FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
)


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in original-image pixels.

    Args:
        x (float): left edge.
        y (float): top edge.
        w (float): width (>= 0).
        h (float): height (>= 0).
        score (float, optional): for detected boxes, the peak of the heatmap
            inside the region divided by the map's maximum (1.0 = the hottest
            region). Default: 1.0.
        finding (str, optional): the finding the box is for. Default: "".
    """

    x: float
    y: float
    w: float
    h: float
    score: float = 1.0
    finding: str = ""

    def __post_init__(self) -> None:
        if self.w < 0 or self.h < 0:
            raise ValueError(f"box width and height must be >= 0, got w={self.w}, h={self.h}")

    @property
    def x2(self) -> float:
        return self.x + self.w

    @property
    def y2(self) -> float:
        return self.y + self.h

    @property
    def area(self) -> float:
        return self.w * self.h


def intersection_area(a: Box, b: Box) -> float:
    """Area of the overlap of two boxes (0 when they are disjoint)."""
    width = min(a.x2, b.x2) - max(a.x, b.x)
    height = min(a.y2, b.y2) - max(a.y, b.y)
    return max(width, 0.0) * max(height, 0.0)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when both are empty)."""
    inter = intersection_area(a, b)
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def iobb(detected: Box, truth: Box) -> float:
    """Intersection over the DETECTED box's area, Wang et al.'s IoBB (0 for an empty detection).

    It rewards a detection that lies inside the expert's box, whatever its size.
    """
    return intersection_area(detected, truth) / detected.area if detected.area > 0 else 0.0


@dataclass(frozen=True)
class InputGeometry:
    """Where the network's input lies in the original image.

    The original ``width x height`` image is resized to ``resized_width x
    resized_height`` (PIL maps pixel centres, so the scale is exact:
    ``x_original = x_resized * width / resized_width``), then the input is the
    region ``[left, left + input_width) x [top, top + input_height)`` of the
    resized image (the whole resized image when there is no crop).
    """

    width: int
    height: int
    resized_width: int
    resized_height: int
    left: int = 0
    top: int = 0
    input_width: int = -1
    input_height: int = -1

    def __post_init__(self) -> None:
        if self.input_width < 0:
            object.__setattr__(self, "input_width", self.resized_width - self.left)
        if self.input_height < 0:
            object.__setattr__(self, "input_height", self.resized_height - self.top)

    @classmethod
    def for_transform(cls, width: int, height: int, resize: int, crop: int | None = None) -> "InputGeometry":
        """The geometry of ``Resize(resize)`` (shorter side) then ``CenterCrop(crop)`` (or no crop).

        Uses the same integer arithmetic as :mod:`paddle_chexnet.data.transforms`.
        """
        from paddle_chexnet.data.transforms import five_crop_offsets

        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = resize, int(resize * long / short)
        rw, rh = (new_short, new_long) if width <= height else (new_long, new_short)
        if crop is None:
            return cls(width, height, rw, rh)
        top, left = five_crop_offsets(rh, rw, crop)[4]
        return cls(width, height, rw, rh, left, top, crop, crop)

    @property
    def scale_x(self) -> float:
        return self.width / self.resized_width

    @property
    def scale_y(self) -> float:
        return self.height / self.resized_height

    def input_to_original(self, u: float, v: float) -> tuple[float, float]:
        """Map a point ``(u, v)`` of the network's input to the original image."""
        return (u + self.left) * self.scale_x, (v + self.top) * self.scale_y

    def input_box_to_original(self, box: Box) -> Box:
        """Map a box in the network's input coordinates to the original image."""
        x, y = self.input_to_original(box.x, box.y)
        return Box(x, y, box.w * self.scale_x, box.h * self.scale_y, box.score, box.finding)


def _interpolation_matrix(out_size: int, scale: float, offset: int, input_size: int, cells: int) -> np.ndarray:
    """``[out_size, cells]`` weights of linear interpolation from map cells to original pixel centres.

    ``scale`` is original pixels per resized pixel. Original pixel ``i`` has its centre at ``(i + 0.5) / scale - offset`` in the
    input; map cell ``j`` has its centre at ``(j + 0.5) * input_size / cells``.
    Pixels outside the input get an all-zero row; beyond the outer cell centres
    the edge value is kept.
    """
    centres = (np.arange(out_size, dtype=np.float64) + 0.5) / scale - offset
    position = centres * cells / input_size - 0.5
    inside = (centres >= 0) & (centres < input_size)
    position = np.clip(position, 0.0, cells - 1.0)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, cells - 1)
    frac = position - low
    matrix = np.zeros((out_size, cells), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, low), 1.0 - frac)
    np.add.at(matrix, (rows, high), frac)
    matrix[~inside] = 0.0
    return matrix


def upsample_heatmap(heatmap: np.ndarray, geometry: InputGeometry) -> np.ndarray:
    """Bilinear upsampling of ``[..., h, w]`` maps over the network's input to ``[..., height, width]`` original pixels.

    Parts of the original image that the network did not see (outside a
    center crop) are 0.

    Examples:
        >>> geometry = InputGeometry.for_transform(1024, 1024, resize=256)
        >>> upsample_heatmap(np.ones((8, 8)), geometry).shape
        (1024, 1024)
    """
    heatmap = np.asarray(heatmap, dtype=np.float64)
    h, w = heatmap.shape[-2:]
    rows = _interpolation_matrix(geometry.height, geometry.scale_y, geometry.top, geometry.input_height, h)
    cols = _interpolation_matrix(geometry.width, geometry.scale_x, geometry.left, geometry.input_width, w)
    return (rows @ heatmap @ cols.T).astype(np.float32)


def threshold_level(heatmap: np.ndarray, threshold: float) -> float | None:
    """The value a pixel must reach: ``threshold * max`` (the threshold is relative to the maximum).

    Only the positive part of a map counts as evidence for a finding, for CAM
    (signed) as for Grad-CAM (non-negative): where ``Grad-CAM = ReLU(CAM) / (h w)``
    the boxes differ only where bilinear upsampling mixes in negative cells.
    Measuring from a signed CAM's minimum instead lets the least negative
    background in and merges regions (on the synthetic set, box threshold 0.3,
    it lowered the accuracy at T(IoU)=0.3 from 0.42 to 0.02). When nothing is
    positive, the level falls back to
    ``min + threshold * (max - min)`` so the least negative region is still
    shown. ``None`` for a flat map.
    """
    high, low = float(np.max(heatmap)), float(np.min(heatmap))
    if not math.isfinite(high) or high <= low:
        return None
    if high > 0:
        return threshold * high
    return low + threshold * (high - low)


def boxes_from_heatmap(
    heatmap: np.ndarray,
    threshold: float = 0.5,
    min_area: float = 0.0,
    max_boxes: int | None = None,
    finding: str = "",
    connectivity: int = 8,
) -> list[Box]:
    """One box per connected region of the heatmap at or above the threshold.

    Args:
        heatmap (numpy.ndarray): ``[H, W]`` map in original-image pixels (see :func:`upsample_heatmap`).
        threshold (float, optional): fraction of the map's maximum a pixel must
            reach, see :func:`threshold_level`. Default: 0.5.
        min_area (float, optional): drop boxes smaller than this many pixels. Default: 0.
        max_boxes (int, optional): keep the highest-scoring ones only. Default: None (all).
        finding (str, optional): the finding written into each box. Default: "".
        connectivity (int, optional): 8 (diagonal neighbours join a region) or 4. Default: 8.

    Returns:
        list[Box]: boxes sorted by score, highest first; score = region peak / map maximum.
    """
    from scipy import ndimage

    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1] (relative to the map's maximum), got {threshold}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    heatmap = np.asarray(heatmap)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2-D [H, W], got shape {heatmap.shape}")
    level = threshold_level(heatmap, threshold)
    if level is None:
        return []
    structure = np.ones((3, 3), dtype=bool) if connectivity == 8 else None
    labels, count = ndimage.label(heatmap >= level, structure=structure)
    if count == 0:
        return []
    high = float(np.max(heatmap))
    boxes = []
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        rows, cols = region
        peak = heatmap[region][labels[region] == index].max()  # per-slice: much faster than ndimage.maximum
        box = Box(
            float(cols.start), float(rows.start), float(cols.stop - cols.start), float(rows.stop - rows.start),
            score=float(peak) / high if high > 0 else 1.0, finding=finding,
        )
        if box.area >= min_area:
            boxes.append(box)
    boxes.sort(key=lambda b: -b.score)
    return boxes if max_boxes is None else boxes[:max_boxes]


class BBoxFileError(ValueError):
    """A malformed line in a box file; the message names the file and line."""


def read_bbox_csv(path: str | Path) -> dict[str, list[Box]]:
    """Read NIH's ``BBox_List_2017.csv``: ``Image Index, Finding Label, x, y, w, h`` (+ empty columns).

    Finding names are mapped to the class list's spelling (``Infiltrate`` ->
    ``Infiltration``) by :func:`paddle_chexnet.data.labels.canonical_label`.

    Returns:
        dict[str, list[Box]]: image file name -> its expert boxes, in file order.

    Raises:
        FileNotFoundError: no such file.
        BBoxFileError: a line has too few columns, a non-number, an unknown
            finding or a negative size; the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"box file not found: {path} (NIH's BBox_List_2017.csv)")
    boxes: dict[str, list[Box]] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        for line_no, row in enumerate(csv.reader(handle), start=1):
            cells = [cell.strip() for cell in row]
            if not any(cells):
                continue
            if line_no == 1 and cells[0].lower().startswith("image"):
                continue  # header: "Image Index,Finding Label,Bbox [x,y,w,h],,,"
            if len(cells) < 6 or not all(cells[:6]):
                raise BBoxFileError(
                    f"{path}:{line_no}: expected 'image,finding,x,y,w,h', got {','.join(row)!r}"
                )
            if any(cells[6:]):
                raise BBoxFileError(f"{path}:{line_no}: unexpected extra values {cells[6:]} after x,y,w,h")
            try:
                finding = canonical_label(cells[1])
            except KeyError as exc:
                raise BBoxFileError(f"{path}:{line_no}: {exc.args[0]}") from exc
            try:
                x, y, w, h = (float(v) for v in cells[2:6])
            except ValueError as exc:
                raise BBoxFileError(f"{path}:{line_no}: x,y,w,h must be numbers, got {cells[2:6]}") from exc
            if w < 0 or h < 0:
                raise BBoxFileError(f"{path}:{line_no}: negative box size w={w}, h={h}")
            boxes.setdefault(cells[0], []).append(Box(x, y, w, h, finding=finding))
    return boxes


@dataclass(frozen=True)
class Match:
    """The best overlap any detected box of the same finding reaches with one expert box."""

    image: str
    finding: str
    truth: Box
    best_iou: float
    best_iobb: float
    num_detected: int


def match_boxes(predictions: Mapping[str, Sequence[Box]], truths: Mapping[str, Sequence[Box]]) -> list[Match]:
    """For every expert box, the best IoU and IoBB of the detected boxes of its finding on its image.

    An image or finding without detections scores 0 (a miss), never "skipped".
    """
    matches = []
    for image, truth_boxes in truths.items():
        detected = predictions.get(image, ())
        for truth in truth_boxes:
            same = [box for box in detected if box.finding == truth.finding]
            matches.append(Match(
                image, truth.finding, truth,
                max((iou(box, truth) for box in same), default=0.0),
                max((iobb(box, truth) for box in same), default=0.0),
                len(same),
            ))
    return matches


@dataclass
class LocalizationReport:
    """Accuracy (and average false positives) per finding and threshold.

    ``rows[finding]`` holds ``n`` (expert boxes), ``acc_iou@T`` (fraction of
    expert boxes with a detection of IoU > T), ``afp_iou@T`` (detected boxes
    overlapping no expert box of their finding by IoU > T, per image) and
    ``acc_iobb@T``; the ``"Mean"`` row averages the findings that have boxes.
    """

    iou_thresholds: tuple[float, ...]
    iobb_thresholds: tuple[float, ...]
    rows: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return (["n"] + [f"acc_iou@{t:g}" for t in self.iou_thresholds]
                + [f"afp_iou@{t:g}" for t in self.iou_thresholds]
                + [f"acc_iobb@{t:g}" for t in self.iobb_thresholds])

    def to_csv(self) -> str:
        lines = [",".join(["finding"] + self.columns)]
        for finding, row in self.rows.items():
            values = [f"{int(row['n'])}"] + [f"{row[c]:.4f}" for c in self.columns[1:]]
            lines.append(",".join([finding] + values))
        return "\n".join(lines) + "\n"

    def to_markdown(self) -> str:
        """The accuracy part as Wang et al.'s Table 3 (findings as rows)."""
        acc = [f"acc_iou@{t:g}" for t in self.iou_thresholds] + [f"acc_iobb@{t:g}" for t in self.iobb_thresholds]
        heads = [f"T(IoU)={t:g}" for t in self.iou_thresholds] + [f"T(IoBB)={t:g}" for t in self.iobb_thresholds]
        lines = ["| finding | n | " + " | ".join(heads) + " |", "|---|---:|" + "---:|" * len(heads)]
        for finding, row in self.rows.items():
            lines.append(f"| {finding} | {int(row['n'])} | " + " | ".join(f"{row[c]:.3f}" for c in acc) + " |")
        return "\n".join(lines) + "\n"


def localization_accuracy(
    predictions: Mapping[str, Sequence[Box]],
    truths: Mapping[str, Sequence[Box]],
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
    iobb_thresholds: Sequence[float] = IOBB_THRESHOLDS,
) -> LocalizationReport:
    """Wang et al.'s localization accuracy per finding: an expert box is found when a detection of its finding on its image has IoU > T.

    Args:
        predictions (Mapping[str, Sequence[Box]]): image -> detected boxes (``finding`` set).
        truths (Mapping[str, Sequence[Box]]): image -> expert boxes, e.g. from :func:`read_bbox_csv`.
        iou_thresholds (Sequence[float], optional): T(IoU). Default: 0.1, 0.2, ..., 0.7.
        iobb_thresholds (Sequence[float], optional): T(IoBB). Default: 0.1, 0.25, 0.5, 0.75, 0.9.

    Returns:
        LocalizationReport: per-finding rows in :data:`BBOX_FINDINGS` order, then ``"Mean"``.
    """
    report = LocalizationReport(tuple(iou_thresholds), tuple(iobb_thresholds))
    matches = match_boxes(predictions, truths)
    present = {m.finding for m in matches}
    findings = [f for f in BBOX_FINDINGS if f in present] + sorted(present - set(BBOX_FINDINGS))
    for finding in findings:
        mine = [m for m in matches if m.finding == finding]
        row: dict[str, float] = {"n": float(len(mine))}
        for t in report.iou_thresholds:
            row[f"acc_iou@{t:g}"] = float(np.mean([m.best_iou > t for m in mine]))
        images = sorted({m.image for m in mine})
        for t in report.iou_thresholds:
            false_positives = 0
            for image in images:
                image_truths = [b for b in truths[image] if b.finding == finding]
                for box in predictions.get(image, ()):
                    if box.finding == finding and max(iou(box, g) for g in image_truths) <= t:
                        false_positives += 1
            row[f"afp_iou@{t:g}"] = false_positives / len(images)
        for t in report.iobb_thresholds:
            row[f"acc_iobb@{t:g}"] = float(np.mean([m.best_iobb > t for m in mine]))
        report.rows[finding] = row
    if report.rows:
        columns = report.columns
        report.rows["Mean"] = {c: float(np.mean([r[c] for r in report.rows.values()])) for c in columns}
        report.rows["Mean"]["n"] = float(sum(r["n"] for f, r in report.rows.items() if f != "Mean"))
    return report


BOX_CSV_COLUMNS: tuple[str, ...] = ("image", "finding", "x", "y", "w", "h", "score")


def write_boxes_csv(path: str | Path, boxes: Mapping[str, Iterable[Box]]) -> None:
    """Write ``image,finding,x,y,w,h,score`` rows (original-image pixels), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(BOX_CSV_COLUMNS)
            for image, image_boxes in boxes.items():
                for b in image_boxes:
                    writer.writerow([image, b.finding, f"{b.x:.1f}", f"{b.y:.1f}", f"{b.w:.1f}", f"{b.h:.1f}",
                                     f"{b.score:.4f}"])


def format_localization_txt(boxes: Mapping[str, Sequence[Box]]) -> str:
    """CheXNet-with-localization's text format: ``<image> <n>`` then ``n`` lines ``<finding> <x> <y> <w> <h>``."""
    lines = []
    for image, image_boxes in boxes.items():
        lines.append(f"{image} {len(image_boxes)}")
        lines.extend(f"{b.finding} {b.x:.1f} {b.y:.1f} {b.w:.1f} {b.h:.1f}" for b in image_boxes)
    return "\n".join(lines) + ("\n" if lines else "")


def write_localization_txt(path: str | Path, boxes: Mapping[str, Sequence[Box]]) -> None:
    """Write :func:`format_localization_txt` to ``path`` atomically."""
    atomic_write_text(path, format_localization_txt(boxes))


def read_localization_txt(path: str | Path) -> dict[str, list[Box]]:
    """Read the CheXNet-with-localization text format back (finding names made canonical)."""
    path = Path(path)
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    boxes: dict[str, list[Box]] = {}
    i = 0
    while i < len(lines):
        if not lines[i]:
            i += 1
            continue
        try:
            image, count_text = lines[i].rsplit(maxsplit=1)
            count = int(count_text)
        except ValueError as exc:
            raise BBoxFileError(f"{path}:{i + 1}: expected '<image> <number of boxes>', got {lines[i]!r}") from exc
        image_boxes = boxes.setdefault(image, [])
        for j in range(i + 1, i + 1 + count):
            parts = lines[j].split() if j < len(lines) else []
            if len(parts) != 5:
                raise BBoxFileError(f"{path}:{j + 1}: expected '<finding> <x> <y> <w> <h>'")
            try:
                x, y, w, h = (float(v) for v in parts[1:])
                image_boxes.append(Box(x, y, w, h, finding=canonical_label(parts[0])))
            except (ValueError, KeyError) as exc:
                raise BBoxFileError(f"{path}:{j + 1}: {exc}") from exc
        i += 1 + count
    return boxes

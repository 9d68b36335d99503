"""A seeded synthetic data set in the ChestX-ray14 layout, with known lesion boxes.

Every image is a schematic frontal chest X-ray (dark background, a soft-tissue
body, two dark lung fields, a bright spine/mediastinum, a heart shadow, faint
ribs and noise). Each of the 14 findings is drawn as its own bright pattern
(disc, ring, square, stripes at three angles, checker, cross, ...) of 22-32 %
of the image side, inside a lung, so that

* a DenseNet trained for a few minutes on a CPU can tell the findings apart
  (the demo and ``tests/test_demo.py`` rely on that), and
* the exact box of every drawn lesion is known, so class activation maps can
  be scored against it (IoU), like NIH's ``BBox_List_2017.csv``.

The files are those of ChestX-ray14 plus CheXNet's label lists::

    OUT/images/00000001_000.png ...        8-bit gray PNG, NIH-style names
    OUT/labels/{train,val,test}_list.txt   "<name> <14 values of 0/1>", split by patient
    OUT/BBox_List_2017.csv                 NIH's format, every lesion of every image
    OUT/Data_Entry_2017.csv                NIH's metadata format ("A|B" or "No Finding")
    OUT/train_val_list.txt, OUT/test_list.txt   NIH's official-split format (names)
    OUT/synthetic_info.json                the parameters that made the set

The same arguments give byte-identical files: every image draws from its own
generators seeded by ``(seed, index, 0)`` (chest and noise) and
``(seed, index, 1)`` (findings and lesions), so the order in which a thread
pool finishes does not matter, and :func:`render_example` can redraw any
image, with or without its lesions.
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from paddle_chexnet.data.labels import CLASS_NAMES, NUM_CLASSES
from paddle_chexnet.utils.io import atomic_path, atomic_write_text

# NIH writes this finding differently in BBox_List_2017.csv; the readers map it back.
_NIH_BBOX_SPELLING = {"Infiltration": "Infiltrate"}


# Relative frequency of each finding: the square root of its NIH prevalence
# (Infiltration 17.7 %, ..., Hernia 0.2 %), floored so that even the rarest
# class has about 7 % positives and a validation split of ~100 images can
# score it. CheXNet order.
_NIH_PREVALENCE = np.array(
    [10.3, 2.5, 11.9, 17.7, 5.2, 5.6, 1.3, 4.7, 4.2, 2.1, 2.2, 1.5, 3.0, 0.2]
)


_FLOORED = np.maximum(np.sqrt(_NIH_PREVALENCE), 1.5)


CLASS_WEIGHTS: np.ndarray = _FLOORED / _FLOORED.sum()


# P(0, 1, 2, 3 findings on one image).
NUM_FINDINGS_P: tuple[float, ...] = (0.10, 0.30, 0.35, 0.25)


# Lesion side as a fraction of the image side.
LESION_SIZE_RANGE: tuple[float, float] = (0.22, 0.32)


BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"


DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)


SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class LesionBox:
    """One drawn lesion: its finding and its box in the saved image's pixels.

    ``x, y`` is the top-left pixel, ``w, h`` the size: ``image[y:y + h, x:x + w]``
    is the tight box of the drawn pattern (the final slight blur spreads it by a
    pixel or two).
    """

    finding: str
    x: int
    y: int
    w: int
    h: int


@dataclass
class ImageRecord:
    """One synthetic image: its name, patient, split, 14 labels and boxes."""

    name: str
    patient_id: int
    follow_up: int
    split: str
    labels: tuple[int, ...]
    boxes: list[LesionBox] = field(default_factory=list)

    @property
    def findings(self) -> list[str]:
        """The names of the positive findings, in CheXNet order."""
        return [name for name, value in zip(CLASS_NAMES, self.labels) if value]


@dataclass
class SyntheticDataset:
    """What :func:`make_dataset` wrote: the root folder and one record per image."""

    root: Path
    image_size: int
    seed: int
    records: list[ImageRecord]

    @property
    def image_dir(self) -> Path:
        return self.root / "images"

    def label_list(self, split: str) -> Path:
        """The CheXNet-format label list of ``split`` ('train', 'val' or 'test')."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.root / "labels" / f"{split}_list.txt"

    @property
    def bbox_csv(self) -> Path:
        return self.root / "BBox_List_2017.csv"

    def split_records(self, split: str) -> list[ImageRecord]:
        return [r for r in self.records if r.split == split]


# --------------------------------------------------------------------------- #
# Lesion patterns. Each maps box coordinates u, v in [-1, 1] (u to the right,
# v downwards) to a mask in {0, 1}. They differ in shape, orientation and
# spatial frequency so that early convolution filters separate them.
# --------------------------------------------------------------------------- #
def _disc(u, v, rng):
    return np.hypot(u, v) < 0.95


def _ring(u, v, rng):
    r = np.hypot(u, v)
    return (r < 0.95) & (r > 0.5)


def _square(u, v, rng):
    return (np.abs(u) < 0.9) & (np.abs(v) < 0.9)


def _stripes(angle_deg: float) -> Callable:
    theta = np.deg2rad(angle_deg)

    def pattern(u, v, rng):
        # three bars, one through the centre and two along the edges
        t = np.abs(-u * np.sin(theta) + v * np.cos(theta))
        return _square(u, v, rng) & ((t < 0.2) | ((t > 0.5) & (t < 0.9)))

    return pattern


def _checker(u, v, rng):
    return _square(u, v, rng) & (np.sin((u + 1.0) * np.pi * 1.5) * np.sin((v + 1.0) * np.pi * 1.5) > 0)


def _plus(u, v, rng):
    return ((np.abs(u) < 0.28) & (np.abs(v) < 0.95)) | ((np.abs(v) < 0.28) & (np.abs(u) < 0.95))


def _saltire(u, v, rng):
    inside = (np.abs(u) < 0.95) & (np.abs(v) < 0.95)
    return inside & ((np.abs(u - v) < 0.35) | (np.abs(u + v) < 0.35))


def _speckle(u, v, rng):
    mask = np.zeros(u.shape, dtype=bool)
    for cu, cv in rng.uniform(-0.72, 0.72, size=(9, 2)):
        mask |= np.hypot(u - cu, v - cv) < 0.24
    return mask


def _triangle(u, v, rng):
    return (v < 0.95) & (np.abs(u) < (v + 0.95) / 2.0)


def _target(u, v, rng):
    r = np.hypot(u, v)
    return (r < 0.35) | ((r > 0.65) & (r < 0.95))


def _frame(u, v, rng):
    outer = (np.abs(u) < 0.95) & (np.abs(v) < 0.95)
    inner = (np.abs(u) < 0.5) & (np.abs(v) < 0.5)
    return outer & ~inner


def _dots(u, v, rng):
    return np.hypot(np.abs(u) - 0.55, np.abs(v) - 0.55) < 0.4


PATTERNS: dict[str, Callable] = {
    "Atelectasis": _disc,
    "Cardiomegaly": _ring,
    "Effusion": _square,
    "Infiltration": _stripes(0.0),
    "Mass": _stripes(90.0),
    "Nodule": _stripes(45.0),
    "Pneumonia": _checker,
    "Pneumothorax": _plus,
    "Consolidation": _saltire,
    "Edema": _speckle,
    "Emphysema": _triangle,
    "Fibrosis": _target,
    "Pleural_Thickening": _frame,
    "Hernia": _dots,
}


PATTERN_DESCRIPTIONS: dict[str, str] = {
    "Atelectasis": "filled disc",
    "Cardiomegaly": "ring",
    "Effusion": "filled square",
    "Infiltration": "horizontal stripes",
    "Mass": "vertical stripes",
    "Nodule": "diagonal stripes",
    "Pneumonia": "checkerboard",
    "Pneumothorax": "plus sign",
    "Consolidation": "diagonal cross",
    "Edema": "speckle cluster",
    "Emphysema": "triangle",
    "Fibrosis": "dot inside a ring (target)",
    "Pleural_Thickening": "hollow square",
    "Hernia": "four blobs in a square",
}


assert tuple(PATTERNS) == CLASS_NAMES


# --------------------------------------------------------------------------- #
# Drawing.
# --------------------------------------------------------------------------- #
def _ellipse(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    return ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 < 1.0


def _anatomy(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """A schematic chest: float image in [0, 255] and the two lungs ``(cx, cy, ax, ay)`` in pixels."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    s = float(size)
    image = np.full((size, size), rng.uniform(8, 22), dtype=np.float32)
    body_cx = s * (0.5 + rng.uniform(-0.02, 0.02))
    image[_ellipse(xx, yy, body_cx, s * 0.58, s * rng.uniform(0.45, 0.49), s * 0.56)] = rng.uniform(105, 125)
    lungs = []
    lung_cy = s * (0.47 + rng.uniform(-0.02, 0.02))
    for side in (-1, 1):
        cx = body_cx + side * s * rng.uniform(0.2, 0.22)
        ax, ay = s * rng.uniform(0.15, 0.17), s * rng.uniform(0.3, 0.33)
        lungs.append((cx, lung_cy, ax, ay))
        image[_ellipse(xx, yy, cx, lung_cy, ax, ay)] = rng.uniform(45, 60)
    # Faint ribs: bright arcs that run across the lungs.
    in_lung = _ellipse(xx, yy, *lungs[0]) | _ellipse(xx, yy, *lungs[1])
    rib_phase = rng.uniform(0, 2 * np.pi)
    ribs = np.cos((yy + 0.25 * np.abs(xx - body_cx) ** 1.3 / s ** 0.3) / s * 2 * np.pi * 7 + rib_phase)
    image += in_lung * np.clip(ribs, 0, None) * rng.uniform(8, 14)
    # Spine and mediastinum down the middle, the heart shadow low and to the patient's left.
    image[(np.abs(xx - body_cx) < s * rng.uniform(0.05, 0.065)) & (yy > s * 0.08)] = rng.uniform(150, 175)
    heart = _ellipse(xx, yy, body_cx + s * 0.06, s * 0.66, s * rng.uniform(0.11, 0.13), s * 0.1)
    image[heart] = np.maximum(image[heart], rng.uniform(125, 140))
    return image, lungs


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding (NumPy only, deterministic)."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    taps /= taps.sum()
    for axis in (0, 1):
        padded = np.pad(image, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        length = image.shape[axis]
        image = sum(
            w * np.take(padded, np.arange(k, k + length), axis=axis) for k, w in enumerate(taps)
        ).astype(np.float32)
    return image


def _slots(lungs: Sequence[tuple[float, float, float, float]], size: int) -> list[tuple[float, float]]:
    """Four non-overlapping lesion centres: upper and lower half of each lung."""
    slots = []
    for cx, cy, _, ay in lungs:
        for dy in (-0.5, 0.5):
            slots.append((cx, cy + dy * ay))
    return slots


def draw_lesion(
    image: np.ndarray,
    finding: str,
    center: tuple[float, float],
    side: int,
    amplitude: float,
    rng: np.random.Generator,
) -> LesionBox:
    """Draw ``finding``'s pattern centred at ``center`` (x, y) into ``image`` in place; return its box.

    Args:
        image (numpy.ndarray): float ``[H, W]`` image, modified in place.
        finding (str): one of :data:`~paddle_chexnet.data.labels.CLASS_NAMES`.
        center (tuple[float, float]): lesion centre in pixels, ``(x, y)``.
        side (int): side of the lesion's square in pixels.
        amplitude (float): brightness added on the pattern.
        rng (numpy.random.Generator): randomness of patterns that need it (speckle).

    Returns:
        LesionBox: the tight box of the drawn pixels, clipped to the image.
    """
    if finding not in PATTERNS:
        raise KeyError(f"unknown finding {finding!r}; expected one of {', '.join(CLASS_NAMES)}")
    height, width = image.shape
    x0 = int(round(center[0] - side / 2.0))
    y0 = int(round(center[1] - side / 2.0))
    coords = (np.arange(side, dtype=np.float32) + 0.5) / side * 2.0 - 1.0
    v, u = np.meshgrid(coords, coords, indexing="ij")
    mask = PATTERNS[finding](u, v, rng)
    # Clip the square to the image.
    top, left = max(y0, 0), max(x0, 0)
    bottom, right = min(y0 + side, height), min(x0 + side, width)
    mask = mask[top - y0:bottom - y0, left - x0:right - x0]
    image[top:bottom, left:right] += amplitude * mask
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return LesionBox(
        finding=finding,
        x=int(left + cols[0]),
        y=int(top + rows[0]),
        w=int(cols[-1] - cols[0] + 1),
        h=int(rows[-1] - rows[0] + 1),
    )


def render_image(
    image_size: int,
    findings: Sequence[str],
    anatomy_rng: np.random.Generator,
    lesion_rng: np.random.Generator,
) -> tuple[np.ndarray, list[LesionBox]]:
    """Draw one synthetic X-ray with the given findings (at most 4).

    The chest and the noise draw only from ``anatomy_rng`` and the lesions only
    from ``lesion_rng``, so the same ``anatomy_rng`` seed with ``findings=[]``
    gives the same image without its lesions (the tests use this to check that
    every box covers its lesion and nothing else changed).

    Args:
        image_size (int): side of the square image in pixels.
        findings (Sequence[str]): the findings to draw, each in its own quarter of the lungs.
        anatomy_rng (numpy.random.Generator): randomness of the chest and the noise.
        lesion_rng (numpy.random.Generator): randomness of the lesions' places, sizes and brightness.

    Returns:
        tuple: the ``uint8 [H, W]`` image and one :class:`LesionBox` per finding.
    """
    if len(findings) > 4:
        raise ValueError(f"at most 4 findings fit on one image (one per lung half), got {len(findings)}")
    image, lungs = _anatomy(anatomy_rng, image_size)
    slots = _slots(lungs, image_size)
    chosen = lesion_rng.permutation(len(slots))[: len(findings)]
    boxes = []
    for finding, slot in zip(findings, chosen):
        side = max(8, int(round(image_size * lesion_rng.uniform(*LESION_SIZE_RANGE))))
        jitter = lesion_rng.uniform(-0.035, 0.035, size=2) * image_size
        center = (slots[slot][0] + jitter[0], slots[slot][1] + jitter[1])
        boxes.append(draw_lesion(image, finding, center, side, lesion_rng.uniform(85, 120), lesion_rng))
    # Soft edges like a radiograph, then quantum noise.
    image = _gaussian_blur(image, sigma=max(image_size / 256.0, 0.6))
    image += anatomy_rng.normal(0.0, 5.0, size=image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), boxes


def render_example(
    seed: int, index: int, image_size: int, draw_lesions: bool = True
) -> tuple[np.ndarray, list[LesionBox], list[str]]:
    """Image ``index`` of the data set made with ``seed``, as :func:`make_dataset` draws it.

    Args:
        seed (int): the data set's seed.
        index (int): the image's position in the data set (0-based, in name order).
        image_size (int): side of the image in pixels.
        draw_lesions (bool, optional): ``False`` gives the same chest and noise
            without the lesions. Default: True.

    Returns:
        tuple: the ``uint8 [H, W]`` pixels, the lesion boxes (empty without
        lesions) and the image's findings (its labels, drawn or not).
    """
    lesion_rng = np.random.default_rng([seed, index, 1])
    findings = sample_findings(lesion_rng)
    drawn = findings if draw_lesions else []
    pixels, boxes = render_image(image_size, drawn, np.random.default_rng([seed, index, 0]), lesion_rng)
    return pixels, boxes, findings


def sample_findings(rng: np.random.Generator) -> list[str]:
    """0-3 distinct findings, NIH-like imbalanced (see :data:`CLASS_WEIGHTS`), in CheXNet order."""
    count = int(rng.choice(len(NUM_FINDINGS_P), p=NUM_FINDINGS_P))
    picked = rng.choice(NUM_CLASSES, size=count, replace=False, p=CLASS_WEIGHTS) if count else []
    return [CLASS_NAMES[i] for i in sorted(int(i) for i in picked)]


# --------------------------------------------------------------------------- #
# The data set.
# --------------------------------------------------------------------------- #
def _patients(rng: np.random.Generator, num_images: int) -> list[tuple[int, int]]:
    """``(patient_id, follow_up)`` for every image: 1-5 images per patient."""
    out: list[tuple[int, int]] = []
    patient = 0
    while len(out) < num_images:
        patient += 1
        for follow_up in range(int(rng.integers(1, 6))):
            out.append((patient, follow_up))
    return out[:num_images]


def _split_patients(
    rng: np.random.Generator, patient_ids: Sequence[int], fractions: tuple[float, float]
) -> dict[int, str]:
    """Assign whole patients to val / test (by image count) and the rest to train."""
    counts: dict[int, int] = {}
    for pid in patient_ids:
        counts[pid] = counts.get(pid, 0) + 1
    total = len(patient_ids)
    order = [int(p) for p in rng.permutation(sorted(counts))]
    targets = {"val": fractions[0] * total, "test": fractions[1] * total}
    assigned = {"val": 0, "test": 0}
    split_of: dict[int, str] = {}
    for pid in order:
        for split in ("test", "val"):
            if assigned[split] < targets[split]:
                split_of[pid] = split
                assigned[split] += counts[pid]
                break
        else:
            split_of[pid] = "train"
    return split_of


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _write_png(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _format_number(value: float) -> str:
    return repr(float(value))


def make_dataset(
    output_dir: str | Path,
    num_images: int = 600,
    image_size: int = 128,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.15,
    workers: int | None = None,
) -> SyntheticDataset:
    """Write a synthetic ChestX-ray14-style data set and return its records.

    Args:
        output_dir (str | Path): the folder to write (created; existing files of
            the same names are replaced, other files are left alone).
        num_images (int, optional): number of images. Default: 600.
        image_size (int, optional): side of the square PNGs in pixels. Default: 128.
        seed (int, optional): the same seed gives byte-identical files. Default: 0.
        val_fraction (float, optional): share of images (whole patients) for validation. Default: 0.2.
        test_fraction (float, optional): share of images (whole patients) for testing. Default: 0.15.
        workers (int, optional): threads that draw and write images; ``None`` uses
            ``min(4, os.cpu_count())``. Does not change the output. Default: None.

    Returns:
        SyntheticDataset: the root folder and, per image, its labels and lesion boxes.

    Examples:
        >>> ds = make_dataset("demo/ChestX-ray14-synthetic", num_images=20, image_size=64)
        >>> ds.records[0].name
        '00000001_000.png'
    """
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32 pixels so lesions stay recognisable, got {image_size}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in [0, 1) "
            "and leave images for training"
        )
    root = Path(output_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)

    meta_rng = np.random.default_rng([seed, 0x5EED])
    patients = _patients(meta_rng, num_images)
    split_of = _split_patients(meta_rng, [pid for pid, _ in patients], (val_fraction, test_fraction))
    demographics = {
        pid: (int(meta_rng.integers(18, 86)), "M" if meta_rng.random() < 0.56 else "F")
        for pid in sorted(split_of)
    }

    def build(index: int) -> tuple[ImageRecord, bytes]:
        pixels, boxes, findings = render_example(seed, index, image_size)
        pid, follow_up = patients[index]
        labels = tuple(int(name in findings) for name in CLASS_NAMES)
        record = ImageRecord(f"{pid:08d}_{follow_up:03d}.png", pid, follow_up, split_of[pid], labels, boxes)
        return record, _png_bytes(pixels)

    def build_and_write(index: int) -> ImageRecord:
        record, data = build(index)
        _write_png(root / "images" / record.name, data)
        return record

    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            records = list(pool.map(build_and_write, range(num_images)))
    else:
        records = [build_and_write(i) for i in range(num_images)]

    dataset = SyntheticDataset(root=root, image_size=image_size, seed=seed, records=records)
    _write_tables(dataset, demographics)
    info = {
        "generator": "paddle_chexnet.data.synthetic",
        "seed": seed,
        "num_images": num_images,
        "image_size": image_size,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "split_sizes": {split: len(dataset.split_records(split)) for split in SPLITS},
        "positives": {
            split: dict(zip(CLASS_NAMES, (int(x) for x in _positives(dataset.split_records(split)))))
            for split in SPLITS
        },
        "patterns": PATTERN_DESCRIPTIONS,
    }
    atomic_write_text(root / "synthetic_info.json", json.dumps(info, indent=2) + "\n")
    return dataset


def _positives(records: Sequence[ImageRecord]) -> np.ndarray:
    if not records:
        return np.zeros(NUM_CLASSES, dtype=int)
    return np.array([r.labels for r in records]).sum(axis=0)


def _write_tables(dataset: SyntheticDataset, demographics: dict[int, tuple[int, str]]) -> None:
    root, size = dataset.root, dataset.image_size
    for split in SPLITS:
        lines = [f"{r.name} {' '.join(str(v) for v in r.labels)}\n" for r in dataset.split_records(split)]
        atomic_write_text(dataset.label_list(split), "".join(lines))

    bbox_lines = [BBOX_HEADER + "\n"]
    for record in dataset.records:
        for box in record.boxes:
            label = _NIH_BBOX_SPELLING.get(box.finding, box.finding)
            numbers = ",".join(_format_number(v) for v in (box.x, box.y, box.w, box.h))
            bbox_lines.append(f"{record.name},{label},{numbers}\n")
    atomic_write_text(dataset.bbox_csv, "".join(bbox_lines))

    # NIH scanned at ~0.143 mm per pixel of a 2500-3000 px film, saved at 1024 px.
    spacing = _format_number(round(0.143 * 1024 / size, 6))
    entry_lines = [DATA_ENTRY_HEADER + "\n"]
    for record in dataset.records:
        age, gender = demographics[record.patient_id]
        labels = "|".join(record.findings) or "No Finding"
        entry_lines.append(
            f"{record.name},{labels},{record.follow_up},{record.patient_id},{age + record.follow_up // 2},"
            f"{gender},PA,{size},{size},{spacing},{spacing}\n"
        )
    atomic_write_text(root / "Data_Entry_2017.csv", "".join(entry_lines))
    atomic_write_text(
        root / "train_val_list.txt", "".join(f"{r.name}\n" for r in dataset.records if r.split != "test")
    )
    atomic_write_text(root / "test_list.txt", "".join(f"{r.name}\n" for r in dataset.split_records("test")))


__all__ = [
    "CLASS_WEIGHTS",
    "ImageRecord",
    "LesionBox",
    "PATTERNS",
    "PATTERN_DESCRIPTIONS",
    "SyntheticDataset",
    "draw_lesion",
    "make_dataset",
    "render_example",
    "render_image",
    "sample_findings",
]

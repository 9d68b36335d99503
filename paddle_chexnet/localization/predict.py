"""The logic of ``tools/predict.py`` and ``tools/localize_eval.py``: heatmaps and boxes for image files.

Which pixels the heatmap covers
-------------------------------
By default the network sees the WHOLE image, resized so the shorter side is
``resize`` (256), with no crop: DenseNet is fully convolutional up to its
global average pooling, so it accepts any size, and an 8x8 map then covers
every pixel of the X-ray. A 224 center crop (``crop=224``, what ``eval.py
--crops center`` feeds) would cut 1/16 of the image off each border (64 of
1024 pixels) where NIH's expert boxes do reach, and no box could be found
there. Either way, heatmaps and boxes are mapped back to the ORIGINAL
image's pixels exactly (resize scale and crop offset, see
:class:`~paddle_chexnet.localization.boxes.InputGeometry`).

The probabilities reported next to the heatmaps come from the same forward
pass, so a label "Effusion 0.87" is the probability of the picture shown. They
can differ slightly from ``eval.py``'s ten-crop average, which is the number to
use for AUROC.

Thresholds and calibration
--------------------------
A finding is called positive at or above its threshold: the ``--threshold``
given, else the thresholds stored in the weights' sidecar (``eval.py
--choose-thresholds ... --save-to-weights``), else 0.5. When the sidecar holds
per-class temperatures (``eval.py --calibrate --save-to-weights``), every
probability written or compared with a threshold is the calibrated one,
``sigmoid(logit(p) / T)``; the heatmaps do not change. ``predictions.txt``
says where the thresholds came from and whether the probabilities are
calibrated.
"""
from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from paddle_chexnet.data.images import ImageReadError, list_images, read_xray
from paddle_chexnet.data.labels import CLASS_NAMES, canonical_label
from paddle_chexnet.data.transforms import center_crop, normalize, resize_shorter_side
from paddle_chexnet.localization.boxes import (
    Box,
    InputGeometry,
    boxes_from_heatmap,
    upsample_heatmap,
)
from paddle_chexnet.localization.cam import METHOD_TITLES, compute_heatmaps
from paddle_chexnet.models.base import ChestXrayNet
from paddle_chexnet.utils.io import atomic_write_text

logger = logging.getLogger(__name__)




def prepare_input(image: Image.Image, resize: int = 256, crop: int | None = None) -> tuple[np.ndarray, InputGeometry]:
    """The normalised ``[3, h, w]`` network input of one image and where it lies in the original.

    Args:
        image (PIL.Image.Image): the X-ray as read by :func:`~paddle_chexnet.data.images.read_xray`.
        resize (int, optional): shorter side after resizing. Default: 256.
        crop (int, optional): center crop size; None (or 0) feeds the whole resized image. Default: None.
    """
    crop = crop or None
    chw = normalize(resize_shorter_side(image, resize))
    if crop is not None:
        chw = center_crop(chw, crop)
    geometry = InputGeometry.for_transform(image.width, image.height, resize, crop)
    return chw, geometry


def read_thresholds(spec: str | float | None, class_names: Sequence[str] = CLASS_NAMES) -> np.ndarray:
    """Per-finding probability thresholds from a number, a JSON file or a CSV file.

    Args:
        spec (str | float | None): ``0.5``; a JSON file ``{"Effusion": 0.3, ...}``
            (optionally under a ``"thresholds"`` key, with an optional ``"default"``);
            or a CSV file of ``finding,threshold`` lines (header optional).
            Findings not listed take ``default`` if given, else it is an error.
            None means 0.5.

    Returns:
        numpy.ndarray: ``[num_classes]`` thresholds in ``class_names`` order.

    Raises:
        ValueError: a value outside [0, 1], an unknown finding, a missing finding; the message names the file.
    """
    if spec is None:
        spec = 0.5
    try:
        value = float(spec)
    except (TypeError, ValueError):
        value = None
    if value is not None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"--threshold must be in [0, 1], got {value}")
        return np.full(len(class_names), value)
    path = Path(str(spec))
    if not path.is_file():
        raise FileNotFoundError(f"threshold file not found: {path} (give a number, or a .json/.csv file)")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if isinstance(raw, dict) and isinstance(raw.get("thresholds"), dict):
            raw = raw["thresholds"]
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected an object mapping findings to thresholds")
        items = list(raw.items())
    else:
        items = []
        for line_no, row in enumerate(csv.reader(text.splitlines()), start=1):
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            if len(cells) < 2:
                raise ValueError(f"{path}:{line_no}: expected 'finding,threshold', got {','.join(row)!r}")
            try:
                float(cells[1])
            except ValueError:
                if line_no == 1:
                    continue  # a header
                raise ValueError(f"{path}:{line_no}: threshold {cells[1]!r} is not a number") from None
            items.append((cells[0], cells[1]))
    default = None
    chosen: dict[str, float] = {}
    names = list(class_names)
    for key, raw_value in items:
        try:
            number = float(raw_value)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: threshold for {key!r} is not a number: {raw_value!r}") from None
        if not 0.0 <= number <= 1.0:
            raise ValueError(f"{path}: threshold for {key!r} must be in [0, 1], got {number}")
        if key.strip().lower() == "default":
            default = number
            continue
        try:
            name = canonical_label(key) if key not in names else key
        except KeyError as exc:
            raise ValueError(f"{path}: {exc.args[0]}") from None
        chosen[name] = number
    missing = [n for n in names if n not in chosen]
    if missing and default is None:
        raise ValueError(f"{path}: no threshold for {', '.join(missing)}; add them or a 'default'")
    return np.array([chosen.get(n, default) for n in names], dtype=np.float64)


@dataclass
class ImageHeatmaps:
    """One image's probabilities and low-resolution heatmaps, and how to map them back.

    Attributes:
        path (Path): the file.
        image (PIL.Image.Image): the original picture (as read, 8-bit).
        geometry (InputGeometry): the network input's place in the original.
        probabilities (numpy.ndarray): ``[num_classes]``.
        maps (numpy.ndarray): ``[K, h, w]`` heatmaps over the network input.
        class_ids (numpy.ndarray, optional): ``[K]``, the class of each map; None: all classes in order.
    """

    path: Path
    image: Image.Image
    geometry: InputGeometry
    probabilities: np.ndarray
    maps: np.ndarray
    class_ids: np.ndarray | None = None
    _upsampled: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def heatmap(self, class_id: int) -> np.ndarray:
        """The map of one class at the original image's size (cached).

        Raises:
            KeyError: the map of that class was not computed (see ``class_ids``).
        """
        if class_id not in self._upsampled:
            row = class_id
            if self.class_ids is not None:
                rows = np.flatnonzero(np.asarray(self.class_ids) == class_id)
                if rows.size == 0:
                    raise KeyError(f"no heatmap of class {class_id} was computed for {self.path} "
                                   f"(computed: {np.asarray(self.class_ids).tolist()})")
                row = int(rows[0])
            self._upsampled[class_id] = upsample_heatmap(self.maps[row], self.geometry)
        return self._upsampled[class_id]

    def boxes(self, class_id: int, finding: str, threshold: float = 0.5, min_area_fraction: float = 0.0,
              max_boxes: int | None = None) -> list[Box]:
        """Boxes of one class in original pixels (see :func:`~paddle_chexnet.localization.boxes.boxes_from_heatmap`)."""
        min_area = min_area_fraction * self.image.width * self.image.height
        return boxes_from_heatmap(self.heatmap(class_id), threshold, min_area, max_boxes, finding)


def iter_heatmaps(
    net: ChestXrayNet,
    paths: Sequence[Path],
    method: str = "cam",
    resize: int = 256,
    crop: int | None = None,
    batch_size: int = 8,
    layer: str | None = None,
    progress: Callable[[int], None] | None = None,
    on_error: Callable[[Path, Exception], None] | None = None,
    class_ids: Sequence[int] | None = None,
) -> Iterator[ImageHeatmaps]:
    """Heatmaps for image files, in batches, in the order of ``paths``.

    Images of equal input size share a forward pass; a folder of mixed sizes
    still works (each size is its own batch).

    Args:
        class_ids (Sequence[int], optional): the classes to map (fewer is faster with the gradient
            methods); None maps all. Default: None.
        progress (Callable[[int], None], optional): called with the number of images done after each batch.
        on_error (Callable[[Path, Exception], None], optional): called for a file that cannot be
            read, which is then skipped; None raises the error. Default: None.
    """
    for start in range(0, len(paths), batch_size):
        chunk, images = [], []
        for path in paths[start:start + batch_size]:
            try:
                images.append(read_xray(path))
            except ImageReadError as exc:
                if on_error is None:
                    raise
                on_error(path, exc)
                continue
            chunk.append(path)
        prepared = [prepare_input(image, resize, crop) for image in images]
        results: list[ImageHeatmaps | None] = [None] * len(chunk)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, (chw, _) in enumerate(prepared):
            by_shape.setdefault(chw.shape, []).append(i)
        for indices in by_shape.values():
            batch = np.stack([prepared[i][0] for i in indices])
            out = compute_heatmaps(net, batch, method=method, class_ids=class_ids, layer=layer)
            for j, i in enumerate(indices):
                results[i] = ImageHeatmaps(chunk[i], images[i], prepared[i][1], out.probabilities[j], out.maps[j],
                                           None if class_ids is None else out.class_ids)
        if progress is not None:
            progress(len(paths[start:start + batch_size]))
        yield from results


def format_prediction_table(rows: Sequence[tuple[str, np.ndarray]], class_names: Sequence[str],
                            thresholds: np.ndarray, notes: Sequence[str] = ()) -> str:
    """A readable table: one block per image, findings by decreasing probability, ``*`` at or above the threshold.

    Args:
        notes (Sequence[str], optional): lines printed first, each as ``# note`` (where the thresholds
            came from, whether the probabilities are calibrated). Default: ().
    """
    width = max(len(n) for n in class_names)
    lines = [f"# {note}" for note in notes]
    if lines:
        lines.append("")
    for name, probabilities in rows:
        lines.append(name)
        for k in np.argsort(-probabilities, kind="stable"):
            mark = "*" if probabilities[k] >= thresholds[k] else " "
            lines.append(f"  {mark} {class_names[k]:<{width}}  {probabilities[k]:.4f}  (threshold {thresholds[k]:.4f})")
        lines.append("")
    return "\n".join(lines)


def write_predictions_csv(path: str | Path, rows: Sequence[tuple[str, np.ndarray]],
                          class_names: Sequence[str]) -> None:
    """``image,<finding 1>,...,<finding K>`` probabilities, atomically."""
    lines = [",".join(["image", *class_names])]
    for name, probabilities in rows:
        quoted = f'"{name}"' if ("," in name or '"' in name) else name
        lines.append(",".join([quoted, *(f"{p:.6f}" for p in probabilities)]))
    atomic_write_text(path, "\n".join(lines) + "\n")


def display_name(path: Path, root: Path) -> str:
    """The image's name relative to the input folder (just the file name for a single file)."""
    if root.is_dir():
        return path.relative_to(root).as_posix()
    return path.name


def overlay_name(name: str, finding: str) -> str:
    """``heatmaps/<image path without suffix, '/' -> '__'>_<finding>.png``."""
    stem = name.rsplit(".", 1)[0] if "." in Path(name).name else name
    return f"{stem.replace('/', '__')}_{finding}.png"


@dataclass
class PredictOptions:
    """Settings of :func:`predict` (the flags of ``tools/predict.py``).

    Args:
        method (str): one of :data:`~paddle_chexnet.localization.cam.METHODS` (``'pcam'`` for networks
            with ``pooling='pcam'``).
        thresholds (numpy.ndarray): per-finding probability thresholds; findings at
            or above theirs get an overlay and boxes.
        box_threshold (float): heatmap threshold relative to its maximum.
        resize (int): shorter side of the network input.
        crop (int | None): center crop, or None for the whole image.
        batch_size (int): images per forward pass.
        max_boxes (int | None): boxes per finding and image.
        min_box_area (float): drop boxes smaller than this fraction of the image.
        layer (str | None): layer for the gradient methods.
        overlays (bool): write heatmap PNGs.
        alpha (float): weight of the heatmap colours in the overlays.
        skip_unreadable (bool): log and skip files that cannot be read (a DICOM
            report without pixels, a truncated PNG) instead of stopping.
        temperatures (numpy.ndarray | None): per-finding temperatures; probabilities are then
            ``sigmoid(logit(p) / T)`` everywhere (tables, thresholds, overlay labels). None: as the
            network gives them.
        notes (tuple[str, ...]): lines for the top of ``predictions.txt`` (e.g. which rule made the
            thresholds).
    """

    method: str = "cam"
    thresholds: np.ndarray = field(default_factory=lambda: np.full(len(CLASS_NAMES), 0.5))
    box_threshold: float = 0.5
    resize: int = 256
    crop: int | None = None
    batch_size: int = 8
    max_boxes: int | None = None
    min_box_area: float = 0.0
    layer: str | None = None
    overlays: bool = True
    alpha: float = 0.4
    skip_unreadable: bool = False
    temperatures: np.ndarray | None = None
    notes: tuple[str, ...] = ()


@dataclass
class PredictResult:
    """What :func:`predict` wrote and found."""

    predictions: list[tuple[str, np.ndarray]]
    boxes: dict[str, list[Box]]
    files: dict[str, Path]
    overlays: list[Path]
    skipped: list[Path] = field(default_factory=list)


#: Overlays of images whose shorter side is below this are drawn enlarged by an integer factor.
MIN_OVERLAY_SIDE = 384


def display_scale(size: tuple[int, int], min_side: int = MIN_OVERLAY_SIDE) -> int:
    """The integer factor that brings an image's shorter side to at least ``min_side`` (1 for X-ray sizes)."""
    return max(1, -(-min_side // max(1, min(size))))


def predict(
    net: ChestXrayNet,
    source: str | Path,
    output_dir: str | Path,
    options: PredictOptions | None = None,
    progress_factory: Callable[[int], object] | None = None,
) -> PredictResult:
    """Probabilities, overlays and boxes for an image or a folder; writes them to ``output_dir``.

    Files written (atomically): ``predictions.csv`` (``image`` + one column per
    finding), ``predictions.txt`` (readable table), ``boxes.csv``
    (``image,finding,x,y,w,h,score``), ``bounding_box.txt`` (the text format of
    CheXNet-with-localization) and ``heatmaps/<image>_<finding>.png`` (at the
    image's size; images under :data:`MIN_OVERLAY_SIDE` pixels are drawn
    enlarged by :func:`display_scale` so the label stays legible).

    Args:
        progress_factory (Callable[[int], object], optional): given the number of
            images, returns an object with ``update(n)`` and ``close()`` (e.g. ``tqdm``). Default: None.
    """
    from paddle_chexnet.localization.boxes import (
        write_boxes_csv,
        write_localization_txt,
    )
    from paddle_chexnet.localization.overlays import overlay_heatmap, save_png

    options = options or PredictOptions()
    class_names = list(net.class_names)
    if len(options.thresholds) != len(class_names):
        raise ValueError(f"{len(options.thresholds)} thresholds for {len(class_names)} findings")
    calibrate = None
    if options.temperatures is not None:
        from paddle_chexnet.evaluation.calibration import apply_temperature

        temperatures = np.asarray(options.temperatures, dtype=np.float64)
        if temperatures.shape != (len(class_names),):
            raise ValueError(f"{temperatures.size} temperatures for {len(class_names)} findings")

        def calibrate(probabilities: np.ndarray) -> np.ndarray:
            return apply_temperature(probabilities, temperatures)
    source, output_dir = Path(source), Path(output_dir)
    paths = list_images(source)
    output_dir.mkdir(parents=True, exist_ok=True)
    bar = progress_factory(len(paths)) if progress_factory else None
    predictions: list[tuple[str, np.ndarray]] = []
    all_boxes: dict[str, list[Box]] = {}
    overlays: list[Path] = []
    skipped: list[Path] = []

    def skip(path: Path, exc: Exception) -> None:
        logger.warning("skipped %s: %s", path, exc)
        skipped.append(path)

    try:
        for item in iter_heatmaps(net, paths, options.method, options.resize, options.crop, options.batch_size,
                                  options.layer, progress=bar.update if bar else None,
                                  on_error=skip if options.skip_unreadable else None):
            name = display_name(item.path, source)
            probabilities = item.probabilities if calibrate is None else calibrate(item.probabilities)
            predictions.append((name, probabilities))
            image_boxes: list[Box] = []
            for k in np.flatnonzero(probabilities >= options.thresholds):
                finding = class_names[k]
                found = item.boxes(int(k), finding, options.box_threshold, options.min_box_area, options.max_boxes)
                image_boxes.extend(found)
                if options.overlays:
                    label = f"{finding} p={probabilities[k]:.2f} ({METHOD_TITLES[options.method]})"
                    picture = overlay_heatmap(item.image, item.heatmap(int(k)), found, label, alpha=options.alpha,
                                              scale=display_scale(item.image.size))
                    overlays.append(save_png(picture, output_dir / "heatmaps" / overlay_name(name, finding)))
            all_boxes[name] = image_boxes
    finally:
        if bar is not None:
            bar.close()
    files = {
        "predictions_csv": output_dir / "predictions.csv",
        "predictions_txt": output_dir / "predictions.txt",
        "boxes_csv": output_dir / "boxes.csv",
        "boxes_txt": output_dir / "bounding_box.txt",
    }
    write_predictions_csv(files["predictions_csv"], predictions, class_names)
    atomic_write_text(files["predictions_txt"],
                      format_prediction_table(predictions, class_names, options.thresholds, options.notes))
    write_boxes_csv(files["boxes_csv"], all_boxes)
    write_localization_txt(files["boxes_txt"], all_boxes)
    return PredictResult(predictions, all_boxes, files, overlays, skipped)

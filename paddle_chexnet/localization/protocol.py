"""Wang et al.'s localization protocol: boxes for the findings the experts boxed."""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from paddle_chexnet.localization.boxes import (
    Box,
)
from paddle_chexnet.localization.predict import iter_heatmaps
from paddle_chexnet.models.base import ChestXrayNet

logger = logging.getLogger(__name__)


def localize_known_findings(
    net: ChestXrayNet,
    truths: Mapping[str, Sequence[Box]],
    image_paths: Mapping[str, Path],
    method: str = "cam",
    box_threshold: float = 0.5,
    resize: int = 256,
    crop: int | None = None,
    batch_size: int = 8,
    max_boxes: int | None = None,
    min_box_area: float = 0.0,
    layer: str | None = None,
    progress_factory: Callable[[int], object] | None = None,
) -> dict[str, list[Box]]:
    """Boxes for the findings the experts boxed on each image (Wang et al.'s protocol: the finding is given).

    Args:
        truths (Mapping[str, Sequence[Box]]): image name -> expert boxes (e.g. :func:`~paddle_chexnet.localization.boxes.read_bbox_csv`).
        image_paths (Mapping[str, Path]): image name -> file; every name in ``truths`` must be there.

    Returns:
        dict[str, list[Box]]: image name -> detected boxes of the boxed findings.
    """
    missing = [name for name in truths if name not in image_paths]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} boxed image(s) not found in the image folder, e.g. {', '.join(missing[:5])}; "
            "point --data-dir at the folder holding them, or pass --skip-missing"
        )
    names = list(truths)
    class_names = list(net.class_names)
    unknown = sorted({b.finding for boxes in truths.values() for b in boxes} - set(class_names))
    if unknown:
        raise ValueError(f"boxed findings {unknown} are not outputs of the network ({class_names})")
    # only the boxed findings' maps (NIH boxed 8 of the 14): each is a backward pass with Grad-CAM
    boxed_ids = sorted({class_names.index(b.finding) for boxes in truths.values() for b in boxes})
    bar = progress_factory(len(names)) if progress_factory else None
    detected: dict[str, list[Box]] = {}
    try:
        items = iter_heatmaps(net, [image_paths[n] for n in names], method, resize, crop, batch_size, layer,
                              progress=bar.update if bar else None, class_ids=boxed_ids)
        for name, item in zip(names, items):
            boxes: list[Box] = []
            for finding in dict.fromkeys(b.finding for b in truths[name]):
                k = class_names.index(finding)
                boxes.extend(item.boxes(k, finding, box_threshold, min_box_area, max_boxes))
            detected[name] = boxes
    finally:
        if bar is not None:
            bar.close()
    return detected

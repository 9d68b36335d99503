"""What the web app computes, without the web: one model in memory, an upload in, findings and heatmaps out.

:class:`XrayService` holds the network (loaded once) and does for one file
what ``tools/predict.py`` does: :func:`~paddle_chexnet.data.images.read_xray`,
:func:`~paddle_chexnet.localization.predict.prepare_input` (the whole image,
shorter side 256, no crop), one forward pass through
:func:`~paddle_chexnet.localization.cam.compute_heatmaps`, heatmaps mapped back
to the original pixels, boxes cut at half the map's maximum and
:func:`~paddle_chexnet.localization.overlays.overlay_heatmap`. The
probabilities are therefore the same numbers ``tools/predict.py`` prints for
the same file, calibrated as it does when the checkpoint's sidecar holds
per-class temperatures (``eval.py --calibrate --save-to-weights``), and
findings are called positive by the sidecar's thresholds when it has them.

Calls are serialised by a lock (the network's autograd state is not shared
between threads); the Gradio queue in :mod:`paddle_chexnet.app.ui` keeps users
waiting in line instead.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from paddle_chexnet.data.images import DICOM_SUFFIXES, ImageReadError, read_xray
from paddle_chexnet.localization.boxes import Box, InputGeometry
from paddle_chexnet.localization.cam import METHODS, compute_heatmaps
from paddle_chexnet.localization.predict import (
    METHOD_TITLES,
    ImageHeatmaps,
    display_scale,
    prepare_input,
)

logger = logging.getLogger(__name__)

#: uploads larger than this are refused with a message
MAX_UPLOAD_BYTES = 50 * 1024 * 1024

#: pictures with more pixels than this are refused (a 1024x1024 NIH image has 1 M)
MAX_PIXELS = 40_000_000

DISCLAIMER = ("Research use only. This is not a medical device: its output must not be used for diagnosis, "
              "treatment or any clinical decision.")


class UploadError(ValueError):
    """An upload that cannot be analysed; the message is meant for the page."""


def method_title(method: str) -> str:
    """``'gradcampp'`` -> ``'Grad-CAM++'`` (unknown methods upper-cased: ``'pcam'`` -> ``'PCAM'``)."""
    return METHOD_TITLES.get(method, method.upper())


@dataclass
class Finding:
    """One output of the model for one image."""

    name: str
    probability: float
    threshold: float | None = None

    @property
    def positive(self) -> bool | None:
        """At or above the threshold; None when the model has no thresholds."""
        return None if self.threshold is None else self.probability >= self.threshold


@dataclass
class Analysis:
    """One uploaded image: its picture, the network input and the probabilities; heatmaps computed on demand.

    Attributes:
        name (str): the file's name.
        image (PIL.Image.Image): the picture as read (8-bit).
        chw (numpy.ndarray): the network input ``[3, h, w]``.
        geometry (InputGeometry): where the input lies in the picture.
        probabilities (numpy.ndarray): ``[num_classes]`` (calibrated when the model has temperatures).
        findings (list[Finding]): every class, by decreasing probability.
        class_names (tuple[str, ...]): the model's classes, in output order.
    """

    name: str
    image: Image.Image
    chw: np.ndarray
    geometry: InputGeometry
    probabilities: np.ndarray
    findings: list[Finding]
    class_names: tuple[str, ...]
    _maps: dict = field(default_factory=dict, repr=False)

    def probability_map(self) -> dict[str, float]:
        """``{class name: probability}`` in the model's output order."""
        return {name: float(p) for name, p in zip(self.class_names, self.probabilities)}


@dataclass
class Heatmap:
    """A finding's heatmap drawn over the picture, and its boxes in the picture's pixels."""

    finding: str
    method: str
    overlay: Image.Image
    boxes: list[Box]


class XrayService:
    """The model of the app and what it does with one file.

    Args:
        net (ChestXrayNet): a network of :mod:`paddle_chexnet.models` (in eval mode).
        resize (int, optional): shorter side of the network input (as ``tools/predict.py --resize``). Default: 256.
        box_threshold (float, optional): boxes enclose the map above this fraction of its maximum. Default: 0.5.
        alpha (float, optional): weight of the heatmap colours. Default: 0.4.
        device (str, optional): where the network runs, for the page. Default: 'cpu'.
    """

    def __init__(self, net, resize: int = 256, box_threshold: float = 0.5, alpha: float = 0.4,
                 device: str = "cpu") -> None:
        self.net = net
        self.net.eval()
        self.spec = getattr(net, "spec", None)
        self.class_names = tuple(net.class_names)
        self.resize, self.box_threshold, self.alpha, self.device = resize, box_threshold, alpha, device
        thresholds = temperatures = None
        if self.spec is not None:
            thresholds = self.spec.threshold_values("the checkpoint's thresholds")
            temperatures = self.spec.temperature_values("the checkpoint's temperatures")
        self.thresholds = None if thresholds is None else dict(zip(self.class_names, thresholds))
        self.threshold_rule = getattr(self.spec, "threshold_rule", None)
        #: per-class temperatures applied to every probability (None: the network's own probabilities)
        self.temperatures = None if temperatures is None else np.asarray(temperatures, dtype=np.float64)
        self._lock = threading.Lock()

    @classmethod
    def from_weights(cls, weights: str | Path, device: str = "auto", **kwargs) -> XrayService:
        """Load ``weights`` (:func:`~paddle_chexnet.models.loading.load_network`) on ``device`` (auto: a GPU if
        Paddle sees one, else the CPU)."""
        from paddle_chexnet.models.loading import load_network
        from paddle_chexnet.utils.device import prepare_device

        chosen = prepare_device(device)
        return cls(load_network(weights), device=chosen, **kwargs)

    @property
    def methods(self) -> tuple[str, ...]:
        """The heatmap methods this model offers (PCAM only with the PCAM pooling)."""
        pooling = getattr(self.net, "pooling", "avg")
        return tuple(m for m in METHODS if m != "pcam" or pooling == "pcam")

    def describe(self) -> str:
        """One line about the model for the page."""
        spec = self.spec
        arch = getattr(spec, "arch", type(self.net).__name__)
        task = getattr(spec, "task", None)
        parts = [f"{arch}", f"{len(self.class_names)} findings" + (f" (task {task})" if task else ""),
                 f"pooling {getattr(self.net, 'pooling', 'avg')}", f"on {self.device}"]
        if self.thresholds:
            parts.append(f"thresholds: {self.threshold_rule or 'given'} rule")
        else:
            parts.append("no thresholds in the checkpoint (probabilities only)")
        if self.temperatures is not None:
            parts.append("calibrated probabilities (per-finding temperature scaling)")
        return ", ".join(parts)

    # ------------------------------------------------------------------ reading
    @staticmethod
    def read_upload(path: str | Path | None) -> Image.Image:
        """The picture of an uploaded file, or an :class:`UploadError` saying what is wrong with it."""
        if path is None:
            raise UploadError("No file was uploaded. Drop a PNG, JPEG or DICOM chest X-ray.")
        path = Path(path)
        if not path.is_file():
            raise UploadError(f"The upload {path.name} did not arrive; try again.")
        size = path.stat().st_size
        if size > MAX_UPLOAD_BYTES:
            raise UploadError(f"{path.name} is {size / 2**20:.0f} MB; files up to {MAX_UPLOAD_BYTES // 2**20} MB "
                              "are accepted.")
        if size == 0:
            raise UploadError(f"{path.name} is empty.")
        if path.suffix.lower() not in DICOM_SUFFIXES:
            from paddle_chexnet.data.dicom import is_dicom_file

            try:
                with Image.open(path) as opened:
                    width, height = opened.size
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
                if not is_dicom_file(path):
                    raise UploadError(f"{path.name} is not an image this app reads; give a PNG, JPEG or "
                                      "DICOM file.") from None
                width = height = None
            if width is not None and width * height > MAX_PIXELS:
                raise UploadError(f"{path.name} is {width}x{height} pixels; pictures up to "
                                  f"{MAX_PIXELS // 1_000_000} megapixels are accepted.")
        try:
            image = read_xray(path)
        except ImageReadError as exc:
            raise UploadError(f"{path.name} cannot be used: {_plain(exc, path)}") from None
        except ImportError as exc:
            raise UploadError(f"{path.name} needs a reader that is not installed: {exc}") from None
        if image.width * image.height > MAX_PIXELS:
            raise UploadError(f"{path.name} is {image.width}x{image.height} pixels; pictures up to "
                              f"{MAX_PIXELS // 1_000_000} megapixels are accepted.")
        if min(image.size) < 32:
            raise UploadError(f"{path.name} is {image.width}x{image.height} pixels; an X-ray needs at least 32 "
                              "pixels on each side.")
        return image

    # ------------------------------------------------------------------ the model
    def analyse(self, path: str | Path, name: str | None = None) -> Analysis:
        """Probabilities of one file (and the CAM maps of every class, from the same forward pass).

        Raises:
            UploadError: the file cannot be used (the message is for the user).
        """
        image = self.read_upload(path)
        chw, geometry = prepare_input(image, self.resize, None)
        with self._lock:
            out = compute_heatmaps(self.net, chw[None], "cam")
        probabilities = out.probabilities[0]
        if self.temperatures is not None:
            from paddle_chexnet.evaluation.calibration import apply_temperature

            probabilities = apply_temperature(probabilities, self.temperatures)
        order = {n: i for i, n in enumerate(self.class_names)}
        findings = [Finding(n, float(probabilities[i]), None if not self.thresholds else self.thresholds.get(n))
                    for i, n in enumerate(self.class_names)]
        findings.sort(key=lambda f: (-f.probability, order[f.name]))
        analysis = Analysis(name or Path(path).name, image, chw, geometry, probabilities, findings, self.class_names)
        analysis._maps[("cam", None)] = out.maps[0]
        return analysis

    def heatmap(self, analysis: Analysis, finding: str, method: str = "cam") -> Heatmap:
        """The heatmap overlay and boxes of ``finding`` by ``method`` (computed once per image and choice)."""
        if finding not in self.class_names:
            raise UploadError(f"unknown finding {finding!r}")
        if method not in self.methods:
            raise UploadError(f"unknown heatmap method {method!r}; choose one of {', '.join(self.methods)}")
        k = self.class_names.index(finding)
        if method == "cam":
            maps, class_ids = analysis._maps[("cam", None)], None
        else:
            key = (method, k)
            if key not in analysis._maps:
                with self._lock:
                    analysis._maps[key] = compute_heatmaps(self.net, analysis.chw[None], method, class_ids=[k]).maps[0]
            maps, class_ids = analysis._maps[key], np.array([k])
        item = ImageHeatmaps(Path(analysis.name), analysis.image, analysis.geometry, analysis.probabilities,
                             maps, class_ids)
        boxes = item.boxes(k, finding, self.box_threshold)
        label = f"{finding} p={analysis.probabilities[k]:.2f} ({method_title(method)})"
        from paddle_chexnet.localization.overlays import overlay_heatmap

        overlay = overlay_heatmap(analysis.image, item.heatmap(k), boxes, label, alpha=self.alpha,
                                  scale=display_scale(analysis.image.size))
        return Heatmap(finding, method, overlay, boxes)

    # ------------------------------------------------------------------ results
    def result_record(self, analysis: Analysis, heatmap: Heatmap | None = None) -> dict:
        """The result as a JSON-ready dict: the model, every finding, the shown heatmap's boxes."""
        record = {
            "image": analysis.name,
            "image_size": [analysis.image.width, analysis.image.height],
            "model": {"arch": getattr(self.spec, "arch", None), "task": getattr(self.spec, "task", None),
                      "pooling": getattr(self.net, "pooling", "avg")},
            "threshold_rule": self.threshold_rule if self.thresholds else None,
            "calibrated": self.temperatures is not None,
            "findings": [{"finding": f.name, "probability": f.probability, "threshold": f.threshold,
                          "positive": f.positive} for f in analysis.findings],
            "disclaimer": DISCLAIMER,
        }
        if heatmap is not None:
            record["heatmap"] = {"finding": heatmap.finding, "method": heatmap.method,
                                 "box_threshold": self.box_threshold,
                                 "boxes": [{"x": b.x, "y": b.y, "w": b.w, "h": b.h, "score": b.score}
                                           for b in heatmap.boxes]}
        return record

    def result_csv(self, analysis: Analysis) -> str:
        """``image,finding,probability,threshold,positive`` rows, by decreasing probability."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["image", "finding", "probability", "threshold", "positive"])
        for f in analysis.findings:
            writer.writerow([analysis.name, f.name, f"{f.probability:.6f}",
                             "" if f.threshold is None else f"{f.threshold:.6f}",
                             "" if f.positive is None else int(f.positive)])
        return buffer.getvalue()

    def result_json(self, analysis: Analysis, heatmap: Heatmap | None = None) -> str:
        return json.dumps(self.result_record(analysis, heatmap), indent=2) + "\n"


def _plain(exc: Exception, path: Path) -> str:
    """The reader's message without the server's temporary folder in it."""
    return str(exc).replace(str(path), path.name).replace(str(path.parent) + "/", "")


def write_examples(folder: str | Path, count: int = 3, size: int = 512, seed: int = 2024) -> list[Path]:
    """Synthetic X-rays (:func:`~paddle_chexnet.data.synthetic.render_example`) as PNGs in ``folder``.

    Their names list the findings drawn, e.g. ``synthetic_1_Effusion+Mass.png``.
    """
    from paddle_chexnet.data.synthetic import render_example

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    index = 0
    while len(paths) < count and index < 50:
        pixels, _, findings = render_example(seed, index, size)
        index += 1
        if not findings:
            continue
        path = folder / f"synthetic_{len(paths) + 1}_{'+'.join(findings)}.png"
        Image.fromarray(pixels, mode="L").save(path)
        paths.append(path)
    return paths

"""Checking a converted model against the framework the checkpoint came from.

The reference is not our code: for a PyTorch checkpoint it is torchvision's
constructor of the same architecture (``getattr(torchvision.models,
architecture.torchvision_name)``: ``densenet121`` ... ``efficientnet_b3``) with
the file loaded by torchvision's own strict loading (for DenseNets
``_load_state_dict``, which carries torchvision's regex for the legacy
``norm.1`` names; ``load_state_dict(strict=True)`` for the others); for a
``paddle.vision`` checkpoint (its DenseNets, and its ResNets, whose names are
this package's) it is ``paddle.vision.models`` itself. The only key edit on the
reference side is removing the ``module.``/``densenet121.`` wrapper prefixes
and ``num_batches_tracked`` (:func:`_reference_keys`), which is what re-creating the wrapper
classes would do.

Two comparisons, both on probabilities (sigmoid of the logits):

* random inputs (seeded smooth random images, :func:`random_images`): max absolute
  difference <= 1e-5;
* real images with labels, each framework through its own preprocessing
  (torchvision: ``Resize(256)``, ``TenCrop(224)``, ``ToTensor``, ImageNet
  ``Normalize``, probabilities averaged over the crops; ours:
  :func:`~paddle_chexnet.data.images.read_xray` + :class:`~paddle_chexnet.data.transforms.EvalTransform`):
  max absolute probability difference <= 1e-4 and per-class AUROC difference <= 1e-4.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F

from paddle_chexnet.conversion.layouts import HEAD_NAMES, strip_wrapper_prefixes
from paddle_chexnet.models.registry import build_network, get_architecture
from paddle_chexnet.models.state_dict import mismatch_report

RANDOM_BOUND = 1e-5


PROB_BOUND = 1e-4


AUROC_BOUND = 1e-4


class VerifyError(ValueError):
    """Verification cannot run (no reference for this layout, labels that do not fit, ...)."""


@dataclass
class VerifyResult:
    """Parity of a converted model with its reference.

    Attributes:
        reference (str): what the converted model was compared with.
        class_names (tuple[str, ...]): one per output.
        random_max_diff (float): max |p_ref - p_ours| over the random inputs.
        num_random (int): random inputs used.
        num_images (int): real images used (0 when none were given).
        image_max_diff (numpy.ndarray | None): per-class max |p_ref - p_ours| on the real images.
        auroc_reference (numpy.ndarray | None): per-class AUROC of the reference (NaN: undefined).
        auroc_converted (numpy.ndarray | None): per-class AUROC of the converted model.
        preprocessing (str): how the real images were prepared on each side.
        bounds (dict[str, float]): ``random``, ``prob`` and ``auroc`` limits.
    """

    reference: str
    class_names: tuple[str, ...]
    random_max_diff: float
    num_random: int
    num_images: int = 0
    image_max_diff: np.ndarray | None = None
    auroc_reference: np.ndarray | None = None
    auroc_converted: np.ndarray | None = None
    preprocessing: str = ""
    bounds: dict[str, float] = field(
        default_factory=lambda: {"random": RANDOM_BOUND, "prob": PROB_BOUND, "auroc": AUROC_BOUND}
    )

    @property
    def auroc_diff(self) -> np.ndarray | None:
        """Per-class |AUROC_ref - AUROC_ours| (NaN where undefined)."""
        if self.auroc_reference is None or self.auroc_converted is None:
            return None
        return np.abs(self.auroc_reference - self.auroc_converted)

    def failures(self) -> list[str]:
        """One line per broken bound (empty when the conversion is exact within the bounds)."""
        out = []
        if not self.random_max_diff <= self.bounds["random"]:
            out.append(f"random inputs: max |prob diff| {self.random_max_diff:.3g} > {self.bounds['random']:g}")
        if self.image_max_diff is not None:
            worst = float(np.max(self.image_max_diff))
            if not worst <= self.bounds["prob"]:
                out.append(f"real images: max |prob diff| {worst:.3g} > {self.bounds['prob']:g}")
            diff = self.auroc_diff
            undefined_mismatch = np.isnan(self.auroc_reference) != np.isnan(self.auroc_converted)
            for name, value, odd in zip(self.class_names, diff, undefined_mismatch):
                if odd or (not math.isnan(value) and value > self.bounds["auroc"]):
                    out.append(f"real images: {name} AUROC differs by {value:.3g} > {self.bounds['auroc']:g}")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures()

    def table(self) -> str:
        """A per-class table and the verdict, for printing."""
        lines = [
            f"reference: {self.reference}",
            f"random inputs ({self.num_random}): max |prob diff| = {self.random_max_diff:.3g} "
            f"(bound {self.bounds['random']:g})",
        ]
        if self.image_max_diff is not None:
            lines.append(f"real images ({self.num_images}, {self.preprocessing}):")
            width = max(len(n) for n in self.class_names + ("class",))
            lines.append(
                f"  {'class':<{width}}  {'AUROC ref':>9}  {'AUROC ours':>10}  {'|diff|':>9}  {'max|prob diff|':>14}"
            )
            for i, name in enumerate(self.class_names):
                a, b, d = self.auroc_reference[i], self.auroc_converted[i], self.auroc_diff[i]
                lines.append(
                    f"  {name:<{width}}  {a:>9.6f}  {b:>10.6f}  {d:>9.2e}  {self.image_max_diff[i]:>14.2e}"
                )
            defined = self.auroc_diff[~np.isnan(self.auroc_diff)]
            worst_auroc = float(np.max(defined)) if defined.size else float("nan")
            lines.append(
                f"  max |prob diff| = {float(np.max(self.image_max_diff)):.3g} (bound {self.bounds['prob']:g}), "
                f"max |AUROC diff| = {worst_auroc:.3g} over {defined.size} classes (bound {self.bounds['auroc']:g})"
            )
        failures = self.failures()
        lines.append("PASSED: the converted model matches the reference" if not failures else "FAILED:")
        lines.extend(f"  {line}" for line in failures)
        return "\n".join(lines)


def _reference_keys(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference side's only key edits: drop the ``module.``/``densenet121.`` wrapper prefixes, and
    ``num_batches_tracked`` (torch's BatchNorm loader fills it in; it does not change eval outputs, and
    torchvision's legacy-name regex does not cover a legacy ``norm.1.num_batches_tracked``)."""
    return {
        strip_wrapper_prefixes(k): v for k, v in state.items() if not k.endswith("num_batches_tracked")
    }


class _InMemoryWeights:
    """Stands in for a torchvision ``WeightsEnum`` so torchvision's own ``_load_state_dict`` reads our dict."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def get_state_dict(self, progress: bool = False, check_hash: bool = False) -> dict:
        return dict(self.state)


def _torchvision_head(model, head: str):
    return getattr(model, head) if "." not in head else model.get_submodule(head)


def torchvision_reference(state: Mapping[str, np.ndarray], arch: str = "densenet121"):
    """torchvision's ``arch`` holding ``state`` (a torch-layout state dict), in eval mode, returning logits.

    The classifier is built as the file has it: ``Linear`` for ``classifier.*`` / ``fc.*``,
    ``Sequential(Linear)`` for the ``classifier.0.*`` / ``fc.0.*`` of a ``Sequential(Linear, Sigmoid)``
    head (the sigmoid is applied outside, to compare probabilities).

    Args:
        state (Mapping[str, numpy.ndarray]): the checkpoint's weights with the file's key names.
        arch (str, optional): the registered architecture (its ``torchvision_name`` is built). Default: 'densenet121'.

    Raises:
        VerifyError: the architecture has no torchvision counterpart.
        RuntimeError: from torch's strict ``load_state_dict`` when keys or shapes do not fit.
    """
    try:
        import torch
        import torchvision
        from torchvision.models import densenet as tv_densenet
    except ImportError as exc:
        from paddle_chexnet.conversion.readers import TORCH_INSTALL_HINT

        raise ImportError(f"--verify of a PyTorch checkpoint needs torchvision: {TORCH_INSTALL_HINT}") from exc

    architecture = get_architecture(arch)
    if architecture.torchvision_name is None:
        raise VerifyError(f"{arch} has no torchvision counterpart to verify against")
    head = HEAD_NAMES[architecture.family]
    weights = {k: torch.from_numpy(np.array(v)) for k, v in _reference_keys(state).items()}
    sequential = f"{head}.0.weight" in weights and architecture.family != "efficientnet"
    num_classes = int(weights[f"{head}.0.weight" if sequential else f"{head}.weight"].shape[0])
    model = getattr(torchvision.models, architecture.torchvision_name)(weights=None, num_classes=num_classes)
    if sequential:
        setattr(model, head, torch.nn.Sequential(_torchvision_head(model, head)))
    if architecture.family != "densenet":
        model.load_state_dict(weights)  # strict
    elif hasattr(tv_densenet, "_load_state_dict"):
        tv_densenet._load_state_dict(model, _InMemoryWeights(weights), progress=False)
    else:  # torchvision moved its private helper: fall back to its documented regex, inline
        import re

        pattern = re.compile(
            r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
        )
        renamed = {}
        for key, value in weights.items():
            match = pattern.match(key)
            renamed[match.group(1) + match.group(2) if match else key] = value
        model.load_state_dict(renamed)
    return model.eval()


#: the classifier of paddle.vision's networks
_PADDLE_VISION_HEADS = {"densenet": "out", "resnet": "fc"}


def paddle_vision_reference(state: Mapping[str, np.ndarray], arch: str = "densenet121") -> paddle.nn.Layer:
    """``paddle.vision.models.<arch>`` holding ``state`` (paddle.vision's names), eval mode, logits.

    Raises:
        VerifyError: paddle.vision has no such network, or the keys or shapes do not fit it.
    """
    import paddle.vision.models as paddle_models

    family = get_architecture(arch).family
    if family not in _PADDLE_VISION_HEADS or not hasattr(paddle_models, arch):
        raise VerifyError(f"paddle.vision has no {arch} to verify against")
    head = _PADDLE_VISION_HEADS[family]
    weights = _reference_keys(state)
    sequential = f"{head}.0.weight" in weights
    num_classes = int(weights[f"{head}.0.weight" if sequential else f"{head}.weight"].shape[1])
    model = getattr(paddle_models, arch)(num_classes=num_classes)
    if sequential:
        setattr(model, head, paddle.nn.Sequential(getattr(model, head)))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    report = mismatch_report(expected, weights)
    if report:
        raise VerifyError(f"the checkpoint does not fit paddle.vision's {arch}:\n{report}")
    model.set_state_dict(weights)
    model.eval()  # returns None in Paddle 2.6 and 3.0 (utils/compat.py)
    return model


def random_images(count: int, seed: int = 0, size: int = 224, cells: int = 16) -> np.ndarray:
    """Seeded smooth random gray images, normalised like X-rays: float32 ``[count, 3, size, size]``.

    Uniform noise on a ``cells x cells`` grid, bilinearly enlarged. White noise would be
    a poor probe: it drives a network trained on X-rays to logits of +-80 (seen on a
    calibrated DenseNet-121), where float32 rounding alone (1e-6 relative, in either
    framework) moves a probability near 0.5 by up to 1e-5, the bound itself. Smooth
    images keep the logits in the range real images give, so a difference above the
    bound means a wrong weight, not rounding.
    """
    from PIL import Image

    from paddle_chexnet.data.transforms import normalize

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        grid = Image.fromarray(rng.integers(0, 256, (cells, cells), dtype=np.uint8), mode="L")
        out.append(normalize(grid.resize((size, size), Image.BILINEAR)))
    return np.stack(out).astype(np.float32)


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class _Runner:
    """Probabilities from the reference and from the converted model, batch by batch."""

    def __init__(self, fmt: str, source_state: Mapping[str, np.ndarray], converted: paddle.nn.Layer,
                 arch: str = "densenet121") -> None:
        self.fmt = fmt
        converted.eval()  # returns None in Paddle 2.6 and 3.0 (utils/compat.py)
        self.converted = converted
        family = get_architecture(arch).family
        if fmt in ("arnoweng", "torchvision"):
            self.reference = torchvision_reference(source_state, arch)
            name = get_architecture(arch).torchvision_name
            self.description = f"torchvision.models.{name} (torchvision's own key loading, strict)"
        elif fmt == "paddle_vision" or (fmt == "paddle_chexnet" and family == "resnet"):
            self.reference = paddle_vision_reference(source_state, arch)
            self.description = f"paddle.vision.models.{arch} (set_state_dict after a strict key check)"
        else:
            raise VerifyError(
                f"the source is already in this package's layout ({fmt}); --verify compares a conversion "
                "with the framework the checkpoint came from, and there is none to compare with"
            )
        self.torch_reference = fmt in ("arnoweng", "torchvision")

    def reference_probs(self, batch: np.ndarray) -> np.ndarray:
        if not self.torch_reference:
            with paddle.no_grad():
                return F.sigmoid(self.reference(paddle.to_tensor(batch))).numpy()
        import torch

        with torch.no_grad():
            return torch.sigmoid(self.reference(torch.from_numpy(batch))).numpy()

    def converted_probs(self, batch: np.ndarray) -> np.ndarray:
        with paddle.no_grad():
            return self.converted.predict_proba(paddle.to_tensor(batch)).numpy()


def _torchvision_eval_transform():
    """arnoweng/CheXNet's test transform, from torchvision: ten 224 crops of the 256-resized image."""
    import torch
    from torchvision import transforms as T

    normalize = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    to_tensor = T.ToTensor()
    return T.Compose([
        T.Resize(256),
        T.TenCrop(224),
        T.Lambda(lambda crops: torch.stack([normalize(to_tensor(crop)) for crop in crops])),
    ])


def _reference_crops(torch_reference: bool, path: Path) -> np.ndarray:
    """``[10, 3, 224, 224]`` through the reference framework's own preprocessing."""
    if not torch_reference:  # paddle.vision has no TenCrop; both sides then share ours
        return _our_crops(path)
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")  # as the PyTorch references read images
    return _torchvision_eval_transform()(rgb).numpy()


def _our_crops(path: Path) -> np.ndarray:
    from paddle_chexnet.data.images import read_xray
    from paddle_chexnet.data.transforms import EvalTransform

    return EvalTransform("ten", 256, 224)(read_xray(path))


def verify_conversion(
    fmt: str,
    source_state: Mapping[str, np.ndarray],
    converted_state: Mapping[str, np.ndarray],
    image_paths: Sequence[str | Path] | None = None,
    labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    num_random: int = 8,
    batch_size: int = 4,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    arch: str | None = None,
) -> VerifyResult:
    """Compare a converted state dict with the source checkpoint run by its own framework.

    Args:
        fmt (str): the source layout, from :func:`~paddle_chexnet.conversion.layouts.detect_format`.
        source_state (Mapping[str, numpy.ndarray]): the checkpoint's weights with the file's key names.
        converted_state (Mapping[str, numpy.ndarray]): the converted weights (classifier kept).
        image_paths (Sequence[str | Path], optional): real images for the second check. Default: None.
        labels (numpy.ndarray, optional): ``[N, C]`` 0/1 labels of ``image_paths``. Default: None.
        class_names (Sequence[str], optional): names of the outputs. Default: the model's.
        num_random (int, optional): random ``[3, 224, 224]`` inputs (:func:`random_images`). Default: 8.
        batch_size (int, optional): images per forward pass (x10 crops for real images). Default: 4.
        seed (int, optional): seed of the random inputs. Default: 0.
        progress (Callable[[int, int], None], optional): called with (done, total) images. Default: None.
        arch (str, optional): the registered architecture of the weights. Default: None (recognised from
            ``converted_state``'s keys and shapes).

    Returns:
        VerifyResult: the figures; ``result.passed`` tells whether every bound holds.

    Raises:
        VerifyError: no reference for this layout, no classifier, or labels that do not fit.
    """
    from paddle_chexnet.models.loading import recognise_architecture

    recognised = recognise_architecture(converted_state)
    if recognised is None or (arch is None and recognised.arch is None):
        raise VerifyError("the converted weights are not a registered architecture; there is nothing to compare")
    arch = arch if arch is not None else recognised.arch
    num_classes = recognised.num_classes(converted_state)
    if num_classes is None:
        raise VerifyError("--verify compares classifier outputs; convert with --head keep to verify")
    net = build_network(arch, num_classes=num_classes, class_names=class_names)
    net.set_state_dict({k: np.asarray(v) for k, v in converted_state.items()})
    runner = _Runner(fmt, source_state, net, arch)

    inputs = random_images(num_random, seed)
    random_diff = 0.0
    for part in _batches(num_random, batch_size):
        ref, ours = runner.reference_probs(inputs[part]), runner.converted_probs(inputs[part])
        random_diff = max(random_diff, float(np.max(np.abs(ref.astype(np.float64) - ours))))
    result = VerifyResult(runner.description, tuple(net.class_names), random_diff, num_random)
    if image_paths is None:
        return result

    from paddle_chexnet.evaluation.metrics import compute_auroc

    image_paths = [Path(p) for p in image_paths]
    labels = np.asarray(labels, dtype=np.float64)
    if labels.shape != (len(image_paths), num_classes):
        raise VerifyError(
            f"labels have shape {list(labels.shape)} but there are {len(image_paths)} images and the model "
            f"has {num_classes} outputs; the label list must have one column per output"
        )
    ref_probs = np.zeros((len(image_paths), num_classes))
    our_probs = np.zeros((len(image_paths), num_classes))
    for part in _batches(len(image_paths), batch_size):
        paths = image_paths[part]
        ref_crops = np.stack([_reference_crops(runner.torch_reference, p) for p in paths])
        our_crops = np.stack([_our_crops(p) for p in paths])
        n, crops = ref_crops.shape[:2]
        ref_probs[part] = runner.reference_probs(ref_crops.reshape(n * crops, *ref_crops.shape[2:])).reshape(
            n, crops, -1).mean(axis=1)
        our_probs[part] = runner.converted_probs(our_crops.reshape(n * crops, *our_crops.shape[2:])).reshape(
            n, crops, -1).mean(axis=1)
        if progress is not None:
            progress(part.stop, len(image_paths))
    result.num_images = len(image_paths)
    result.image_max_diff = np.max(np.abs(ref_probs - our_probs), axis=0)
    result.auroc_reference = compute_auroc(labels, ref_probs, result.class_names, warn=False)
    result.auroc_converted = compute_auroc(labels, our_probs, result.class_names, warn=False)
    result.preprocessing = (
        "both through this package's preprocessing (paddle.vision has no TenCrop)"
        if not runner.torch_reference
        else "reference: PIL convert('RGB') + torchvision Resize/TenCrop/ToTensor/Normalize; "
        "ours: read_xray + EvalTransform"
    )
    return result

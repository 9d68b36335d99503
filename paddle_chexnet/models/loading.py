"""Turning a weights file back into its network."""
from __future__ import annotations

import logging
from pathlib import Path

import paddle

from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.models.densenet import chexnet

logger = logging.getLogger(__name__)


MISSING_WEIGHTS_HELP = (
    "Get CheXNet weights by converting a PyTorch checkpoint "
    "(python tools/convert_torch.py --help) or by training (python train.py --help), "
    "then pass the .pdparams file with --weights"
)


def network_from_weights(weights: str | Path, num_classes: int | None = None) -> paddle.nn.Layer:
    """A CheXNet with the weights of ``weights`` (strictly checked); ``num_classes`` read from the file if ``None``."""
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"weights not found: {weights}. {MISSING_WEIGHTS_HELP}")
    if num_classes is None:
        try:
            state = paddle.load(str(weights))
        except Exception as exc:  # paddle raises several types for corrupt files
            raise ValueError(f"{weights} is not a readable .pdparams file ({type(exc).__name__}: {exc})") from exc
        classifier = state.get("classifier.weight") if isinstance(state, dict) else None
        num_classes = int(classifier.shape[1]) if classifier is not None else len(CLASS_NAMES)
    return chexnet(num_classes=num_classes, weights=weights)

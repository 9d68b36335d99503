"""Reading a DenseNet's hyper-parameters off its state dict."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from paddle_chexnet.models.densenet import DenseNet

logger = logging.getLogger(__name__)


def infer_densenet_config(state: Mapping[str, object]) -> dict[str, object]:
    """Read a DenseNet's hyper-parameters off its state dict (torchvision names).

    So that ``predict.py --weights`` works for DenseNet-121 and for the small
    DenseNets of the synthetic demo without architecture flags.

    Raises:
        KeyError: the state dict is not a DenseNet with torchvision names; the message says which key is missing.
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise KeyError(
                f"{key!r} missing: not a paddle_chexnet DenseNet state dict (convert PyTorch checkpoints with "
                "tools/convert_torch.py first)"
            )
        return tuple(int(s) for s in getattr(state[key], "shape", np.shape(state[key])))

    num_init_features = shape("features.conv0.weight")[0]
    growth_rate = shape("features.denseblock1.denselayer1.conv2.weight")[0]
    bn_size = shape("features.denseblock1.denselayer1.conv1.weight")[0] // growth_rate
    block_config = []
    block = 1
    while f"features.denseblock{block}.denselayer1.conv1.weight" in state:
        layers = 1
        while f"features.denseblock{block}.denselayer{layers + 1}.conv1.weight" in state:
            layers += 1
        block_config.append(layers)
        block += 1
    num_classes = shape("classifier.weight")[1]  # Paddle's Linear weight is [in, out]
    return {"growth_rate": growth_rate, "block_config": tuple(block_config), "num_init_features": num_init_features,
            "bn_size": bn_size, "num_classes": num_classes}


def load_model(weights: str | Path, class_names: Sequence[str] | None = None) -> DenseNet:
    """Build the DenseNet a ``.pdparams`` file describes and load it strictly, in eval mode.

    Args:
        weights (str | Path): a ``.pdparams`` file (``train.py``'s checkpoints, converted CheXNet weights).
        class_names (Sequence[str], optional): output names; None gives CheXNet's 14 when there are 14 outputs.
    """
    import paddle

    from paddle_chexnet.models.state_dict import load_weights

    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(
            f"weights file {weights} does not exist; train one with train.py or convert CheXNet's with "
            "tools/convert_torch.py"
        )
    state = paddle.load(str(weights))
    if not isinstance(state, Mapping):
        raise ValueError(f"{weights} holds a {type(state).__name__}, not a state dict")
    config = infer_densenet_config(state)
    net = DenseNet(**config, class_names=class_names)
    load_weights(net, weights)
    net.eval()
    return net

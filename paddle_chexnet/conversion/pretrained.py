"""ImageNet (or any) weights for a network's backbone: a local file in any supported layout, or Paddle's download."""
from __future__ import annotations

import logging
from pathlib import Path

import paddle

from paddle_chexnet.conversion.layouts import FORMAT_DESCRIPTIONS, convert_state_dict
from paddle_chexnet.errors import UserError

logger = logging.getLogger(__name__)

IMAGENET_DOWNLOAD = "imagenet"


#: the paddle.vision module whose ``model_urls`` hold each architecture's ImageNet weights
PADDLE_VISION_WEIGHTS: dict[str, str] = {
    "densenet121": "densenet", "densenet169": "densenet", "densenet201": "densenet",
    "resnet18": "resnet", "resnet50": "resnet", "resnet101": "resnet",
}


class PretrainedDownloadError(UserError):
    """Paddle's ImageNet weights could not be downloaded (offline?), or Paddle has none for the architecture."""


def _torchvision_file_hint(arch: str) -> str:
    return f"torchvision's ImageNet {arch} file (from torchvision.models.{arch}(weights='DEFAULT'))"


def download_imagenet_weights(arch: str = "densenet121") -> str:
    """Download (or find in Paddle's cache) ``paddle.vision``'s ImageNet weights of ``arch``; return the path.

    Args:
        arch (str, optional): a registered architecture that paddle.vision has ImageNet weights for
            (:data:`PADDLE_VISION_WEIGHTS`). Default: 'densenet121'.

    Raises:
        PretrainedDownloadError: Paddle has no ImageNet weights for ``arch`` (EfficientNet), or the download
            failed (offline?); the message says how to use a local file.
    """
    if arch not in PADDLE_VISION_WEIGHTS:
        raise PretrainedDownloadError(
            f"--pretrained {IMAGENET_DOWNLOAD}: paddle.vision has no ImageNet weights for {arch}; pass a local file "
            f"instead, e.g. {_torchvision_file_hint(arch)}"
        )
    import importlib

    from paddle.utils.download import get_weights_path_from_url

    module = importlib.import_module(f"paddle.vision.models.{PADDLE_VISION_WEIGHTS[arch]}")
    url, md5 = module.model_urls[arch]
    try:
        return get_weights_path_from_url(url, md5)
    except Exception as exc:  # network errors come as many types (URLError, timeouts, HTTP errors)
        raise PretrainedDownloadError(
            f"could not download Paddle's ImageNet {arch} from {url} ({type(exc).__name__}: {exc}). "
            f"Without internet, copy a file there and pass --pretrained PATH: {_torchvision_file_hint(arch)} "
            f"or Paddle's {Path(url).name} both work"
        ) from exc


def _arch_of(net: paddle.nn.Layer) -> str:
    spec = getattr(net, "spec", None)
    return spec.arch if spec is not None else "densenet121"


def load_pretrained(net: paddle.nn.Layer, source: str | Path) -> str:
    """Load a backbone into ``net`` from a file, or from Paddle's ImageNet download for ``'imagenet'``.

    Returns:
        str: a one-line summary of what was loaded.

    Raises:
        FileNotFoundError: no such file (the message lists what is accepted).
        PretrainedDownloadError: ``'imagenet'`` could not be downloaded, or Paddle has no weights for the network.
    """
    arch = _arch_of(net)
    path = download_imagenet_weights(arch) if str(source) == IMAGENET_DOWNLOAD else str(source)
    if not Path(path).is_file():
        accepted = [f"a torchvision {arch}-*.pth"] if arch in PADDLE_VISION_WEIGHTS or "efficientnet" in arch else []
        accepted.append("a .pdparams of paddle.vision or of this package")
        if arch in PADDLE_VISION_WEIGHTS:
            accepted.append(f"'{IMAGENET_DOWNLOAD}' to download Paddle's")
        raise FileNotFoundError(f"--pretrained {path}: no such file. Give {', or '.join(accepted)}")
    return load_pretrained_backbone(net, path)


def load_pretrained_backbone(net: paddle.nn.Layer, path: str | Path, trust_pickle: bool = False) -> str:
    """Load every backbone weight of a checkpoint into ``net``; leave its classifier untouched.

    Accepts this package's ``.pdparams``, a ``paddle.vision`` DenseNet or ResNet ``.pdparams``
    (e.g. Paddle's ImageNet ``DenseNet121_pretrained.pdparams``) or any PyTorch file
    :func:`~paddle_chexnet.conversion.readers.read_checkpoint` reads (e.g. torchvision's
    ImageNet ``densenet121-a639ec97.pth``, ``resnet50-11ad3fa6.pth``, ``efficientnet_b0_rwightman-7f5810bc.pth``).
    All backbone weights must be present with the right shape; the file's classifier, whatever its
    size, is ignored.

    Args:
        net (paddle.nn.Layer): a network of :mod:`paddle_chexnet.models`.
        path (str | Path): the checkpoint.
        trust_pickle (bool, optional): allow files that pickle whole modules. Default: False.

    Returns:
        str: a one-line summary of what was loaded.

    Raises:
        StateDictMismatchError: the file's backbone does not fit ``net`` (every difference listed; nothing loaded).

    Examples:
        >>> from paddle_chexnet import chexnet  # doctest: +SKIP
        >>> net = chexnet()  # doctest: +SKIP
        >>> print(load_pretrained_backbone(net, "densenet121-a639ec97.pth"))  # doctest: +SKIP
    """
    from paddle_chexnet.conversion.readers import read_checkpoint

    checkpoint = read_checkpoint(path, trust_pickle=trust_pickle)
    conversion = convert_state_dict(checkpoint.state, model=net, head="drop", source=str(path))
    params = net.state_dict()
    for key, array in conversion.state.items():
        params[key].set_value(array)
    values = sum(int(a.size) for a in conversion.state.values())
    outputs = int(net.head_linear().weight.shape[1])
    return (
        f"loaded {len(conversion.state)} backbone tensors ({values / 1e6:.2f}M values) from {path} "
        f"({conversion.format} layout: {FORMAT_DESCRIPTIONS[conversion.format]}); "
        f"classifier ({outputs} outputs) left as initialised"
    )

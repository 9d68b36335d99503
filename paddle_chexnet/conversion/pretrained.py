"""ImageNet (or any) weights for a network's backbone: a local file in any supported layout, or Paddle's download."""
from __future__ import annotations

import logging
from pathlib import Path

import paddle

from paddle_chexnet.conversion.layouts import FORMAT_DESCRIPTIONS, convert_state_dict
from paddle_chexnet.errors import UserError

logger = logging.getLogger(__name__)

IMAGENET_DOWNLOAD = "imagenet"


class PretrainedDownloadError(UserError):
    """Paddle's ImageNet weights could not be downloaded (offline?)."""


def download_imagenet_weights() -> str:
    """Download (or find in Paddle's cache) ``paddle.vision``'s ImageNet DenseNet-121; return its path.

    Raises:
        PretrainedDownloadError: the download failed (offline?); the message says how to use a local file.
    """
    from paddle.utils.download import get_weights_path_from_url
    from paddle.vision.models.densenet import model_urls

    url, md5 = model_urls["densenet121"]
    try:
        return get_weights_path_from_url(url, md5)
    except Exception as exc:  # network errors come as many types (URLError, timeouts, HTTP errors)
        raise PretrainedDownloadError(
            f"could not download Paddle's ImageNet DenseNet-121 from {url} ({type(exc).__name__}: {exc}). "
            "Without internet, copy a file there and pass --pretrained PATH: torchvision's "
            "densenet121-a639ec97.pth or Paddle's DenseNet121_pretrained.pdparams both work"
        ) from exc


def load_pretrained(net: paddle.nn.Layer, source: str | Path) -> str:
    """Load a backbone into ``net`` from a file, or from Paddle's ImageNet download for ``'imagenet'``.

    Returns:
        str: a one-line summary of what was loaded.

    Raises:
        FileNotFoundError: no such file (the message lists what is accepted).
        PretrainedDownloadError: ``'imagenet'`` could not be downloaded.
    """
    path = download_imagenet_weights() if str(source) == IMAGENET_DOWNLOAD else str(source)
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"--pretrained {path}: no such file. Give a torchvision densenet121-*.pth or a Paddle "
            f"DenseNet121_pretrained.pdparams, or '{IMAGENET_DOWNLOAD}' to download Paddle's"
        )
    return load_pretrained_backbone(net, path)


def load_pretrained_backbone(net: paddle.nn.Layer, path: str | Path, trust_pickle: bool = False) -> str:
    """Load every ``features.*`` weight of a checkpoint into ``net``; leave its classifier untouched.

    Accepts this package's ``.pdparams``, a ``paddle.vision`` DenseNet-121 ``.pdparams``
    (e.g. Paddle's ImageNet ``DenseNet121_pretrained.pdparams``) or any PyTorch file
    :func:`~paddle_chexnet.conversion.readers.read_checkpoint` reads (e.g. torchvision's
    ImageNet ``densenet121-a639ec97.pth``). All backbone weights must be present with
    the right shape; the file's classifier, whatever its size, is ignored.

    Args:
        net (paddle.nn.Layer): a :class:`~paddle_chexnet.models.densenet.DenseNet`.
        path (str | Path): the checkpoint.
        trust_pickle (bool, optional): allow files that pickle whole modules. Default: False.

    Returns:
        str: a one-line summary of what was loaded.

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
    outputs = int(net.state_dict()["classifier.weight"].shape[1])
    return (
        f"loaded {len(conversion.state)} backbone tensors ({values / 1e6:.2f}M values) from {path} "
        f"({conversion.format} layout: {FORMAT_DESCRIPTIONS[conversion.format]}); "
        f"classifier ({outputs} outputs) left as initialised"
    )

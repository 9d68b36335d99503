"""ImageNet weights for the backbone: Paddle's download, or a local file."""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


IMAGENET_DOWNLOAD = "imagenet"


class PretrainedDownloadError(RuntimeError):
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

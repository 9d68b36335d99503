"""Exporting a network for Paddle Inference, and the cache of exports keyed by the weights' content.

:func:`cached_export` keys an export by the SHA-256 of the weights file, the
Paddle version and the crop size, so a second evaluation skips the export and
changed weights can never reuse a stale graph. Exports live in
``<cache root>/exports`` (:func:`~paddle_chexnet.utils.paths.cache_root`).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import paddle

from paddle_chexnet.models.base import WithSigmoid
from paddle_chexnet.models.loading import load_network
from paddle_chexnet.models.state_dict import require_weights_file
from paddle_chexnet.utils.compat import program_file
from paddle_chexnet.utils.hashing import file_sha256
from paddle_chexnet.utils.paths import cache_root

logger = logging.getLogger(__name__)

# Bump when the exported graph changes (e.g. what WithSigmoid computes) so old caches are not reused.
EXPORT_FORMAT = 1
MODEL_PREFIX = "model"


def export_model(net: paddle.nn.Layer, prefix: str | Path, crop: int = 224) -> Path:
    """``paddle.jit.save`` ``WithSigmoid(net)`` with input ``[None, 3, crop, crop]`` to ``prefix``.

    Returns:
        Path: the model file (``prefix.json`` in Paddle 3's format, ``prefix.pdmodel`` in older ones).
    """
    net.eval()
    wrapped = WithSigmoid(net)
    wrapped.eval()
    spec = paddle.static.InputSpec([None, 3, crop, crop], "float32", "image")
    paddle.jit.save(wrapped, str(prefix), input_spec=[spec])
    return model_file(prefix)


def model_file(prefix: str | Path) -> Path:
    """The graph file of an export at ``prefix`` (``.json`` or ``.pdmodel``) that this Paddle loads.

    Raises:
        FileNotFoundError: there is none (see :func:`~paddle_chexnet.utils.compat.program_file`).
    """
    return program_file(prefix)


def default_cache_dir() -> Path:
    """Where exports are kept: ``<cache root>/exports``."""
    return cache_root() / "exports"


def export_key(weights: str | Path, crop: int) -> str:
    """Cache folder name for an export of ``weights`` at ``crop``: content hash, Paddle version, crop size."""
    digest = file_sha256(weights)[:16]
    return f"{Path(weights).stem}-{digest}-paddle{paddle.__version__}-crop{crop}-f{EXPORT_FORMAT}"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def cached_export(
    weights: str | Path,
    crop: int = 224,
    cache_dir: str | Path | None = None,
) -> Path:
    """The exported model of ``weights`` (exporting it on first use); returns the prefix to load.

    The export is written to a temporary folder and renamed into place, so an
    interrupted export never leaves a broken cache entry.

    Args:
        weights (str | Path): a CheXNet ``.pdparams``.
        crop (int, optional): input size. Default: 224.
        cache_dir (str | Path, optional): where exports live; ``None`` uses
            :func:`default_cache_dir`, or a ``.paddle_chexnet_cache`` folder next to the
            weights when that is not writable. Default: None.
    """
    weights = require_weights_file(weights)
    if cache_dir is None:
        cache_dir = default_cache_dir()
        if not _writable(cache_dir):
            cache_dir = weights.parent / ".paddle_chexnet_cache"
    cache_dir = Path(cache_dir)
    final = cache_dir / export_key(weights, crop)
    try:
        model_file(final / MODEL_PREFIX)
        return final / MODEL_PREFIX
    except FileNotFoundError:
        pass
    cache_dir.mkdir(parents=True, exist_ok=True)
    net = load_network(weights)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache_dir))
    try:
        logger.info("exporting %s for Paddle Inference to %s (once per weights file)", weights, final)
        export_model(net, staging / MODEL_PREFIX, crop)
        staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            os.replace(staging, final)
        except OSError:  # another process exported the same weights first: use theirs
            model_file(final / MODEL_PREFIX)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final / MODEL_PREFIX

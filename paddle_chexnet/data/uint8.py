"""The uint8 data path: loader workers crop uint8 pixels, the device normalises them, bit for bit as on the CPU.

:class:`~paddle_chexnet.data.transforms.TrainTransform` and ``EvalTransform``
normalise the whole resized image to float32 and then crop. Normalising is
elementwise, so cropping first and normalising afterwards gives the same
numbers; the transforms here stop before the normalisation and return uint8
crops ``[C, c, c]``. A data-loader worker then sends a quarter of the bytes
(with ``channels=1``, a twelfth) through shared memory, the batch goes to the
device as uint8, and :func:`normalize_uint8` turns it into the float32 input
of the network there, with the arithmetic of
:func:`~paddle_chexnet.data.transforms.normalize`: ``x / 255``, ``- mean``,
``/ std`` in float32, in that order. IEEE float32 division and subtraction are
correctly rounded, so the result is bit-identical to the CPU's;
:func:`device_normalization_is_exact` proves it on a device by trying all
256 values of each channel, and :func:`normalize_uint8_table` is an exact
fallback (a lookup in a table computed by NumPy) for a device where it fails.

Randomness: :class:`Uint8TrainTransform` is a ``TrainTransform`` and draws the
same numbers in the same order (top, left, flip) from the same ``rng``, so
under :class:`~paddle_chexnet.data.sampling.SeededAugmentation` (same seed,
epoch, index) it picks the same crop and flip as the float path.

Wiring (training): ``ChestXray14Dataset(..., transform=Uint8TrainTransform(resize,
crop))`` (or a :class:`~paddle_chexnet.data.cache.CachedDataset`) inside
``SeededAugmentation``, a ``paddle.io.DataLoader`` as before (``use_shared_memory=True``,
its default, moves the uint8 batches between processes; ``prefetch_factor``
batches per worker are prepared ahead), and :func:`attach_uint8_normalization`
on the network so that its first input is normalised on its device.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import paddle
from PIL import Image

from paddle_chexnet.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    center_crop,
    normalize,
    resize_shorter_side,
    ten_crop,
)


def resized_uint8(image: Image.Image | np.ndarray, resize: int) -> np.ndarray:
    """The image resized to shorter side ``resize``, as uint8 ``[H, W]`` or ``[H, W, 3]``.

    A PIL image is resized with :func:`~paddle_chexnet.data.transforms.resize_shorter_side`;
    an array (e.g. :meth:`~paddle_chexnet.data.cache.ImageCache.read_array`) must already
    have that size.

    Raises:
        ValueError: an array of another size, or not uint8 ``[H, W]`` / ``[H, W, 3]``.
    """
    if isinstance(image, Image.Image):
        return np.asarray(resize_shorter_side(image, resize))
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"expected uint8 pixels [H, W] or [H, W, 3], got {pixels.dtype} {list(pixels.shape)}")
    if min(pixels.shape[:2]) != resize:
        raise ValueError(f"the pixels are {pixels.shape[0]}x{pixels.shape[1]}, not resized to a shorter side of "
                         f"{resize}: resize them first (or read a cache built with --size {resize})")
    return pixels


def to_chw(pixels: np.ndarray, channels: int) -> np.ndarray:
    """uint8 ``[H, W]`` / ``[H, W, 3]`` -> ``[channels, H, W]`` (a view where possible).

    Grey is repeated to 3 planes when ``channels`` is 3, as ``normalize`` broadcasts it.

    Raises:
        ValueError: a colour image with ``channels=1``.
    """
    if pixels.ndim == 2:
        plane = pixels[None]
        return plane if channels == 1 else np.broadcast_to(plane, (3,) + pixels.shape)
    if channels == 1:
        raise ValueError("a colour image reached a 1-channel uint8 transform; use channels=3 "
                         "(ImageCache.channels(keys) says which a data set needs)")
    return pixels.transpose(2, 0, 1)


def _check_channels(channels: int) -> int:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey images only) or 3, got {channels}")
    return int(channels)


class Uint8TrainTransform(TrainTransform):
    """:class:`~paddle_chexnet.data.transforms.TrainTransform`'s crop and flip, as uint8 ``[channels, c, c]``.

    ``normalize(x)`` of what this returns (after ``x / 255`` etc. on the device,
    :func:`normalize_uint8`) equals ``TrainTransform`` with the same ``rng`` state, bit for bit.

    Args:
        resize (int, optional): shorter side after resizing. Default: 256.
        crop (int, optional): crop size. Default: 224.
        rng (numpy.random.Generator, optional): as ``TrainTransform``'s. Default: None.
        channels (int, optional): 3, or 1 for data sets of grey images only (a third of the
            bytes; the device broadcasts). Default: 3.
    """

    def __init__(self, resize: int = 256, crop: int = 224, rng: np.random.Generator | None = None,
                 channels: int = 3) -> None:
        super().__init__(resize, crop, rng)
        self.channels = _check_channels(channels)

    def __call__(self, image: Image.Image | np.ndarray) -> np.ndarray:
        chw = to_chw(resized_uint8(image, self.resize), self.channels)
        _, height, width = chw.shape
        top = self._uniform_int(height - self.crop + 1)
        left = self._uniform_int(width - self.crop + 1)
        out = chw[:, top:top + self.crop, left:left + self.crop]
        if self._uniform_int(2) == 1:
            out = out[:, :, ::-1]
        return np.ascontiguousarray(out)


class Uint8EvalTransform(EvalTransform):
    """:class:`~paddle_chexnet.data.transforms.EvalTransform`'s ten crops or center crop, as uint8.

    Returns ``[10, channels, c, c]`` (ten) or ``[channels, c, c]`` (center).

    Args:
        crops (str, optional): ``'ten'`` or ``'center'``. Default: 'ten'.
        resize (int, optional): shorter side after resizing. Default: 256.
        crop (int, optional): crop size. Default: 224.
        channels (int, optional): 3, or 1 for grey images only. Default: 3.
    """

    def __init__(self, crops: str = "ten", resize: int = 256, crop: int = 224, channels: int = 3) -> None:
        super().__init__(crops, resize, crop)
        self.channels = _check_channels(channels)

    def __call__(self, image: Image.Image | np.ndarray) -> np.ndarray:
        chw = to_chw(resized_uint8(image, self.resize), self.channels)
        return ten_crop(chw, self.crop) if self.crops == "ten" else center_crop(chw, self.crop)


def normalize_uint8_numpy(batch: np.ndarray) -> np.ndarray:
    """``normalize`` of a uint8 batch ``[..., C, H, W]`` (C 1 or 3) on the CPU: float32 ``[..., 3, H, W]``.

    For a CPU consumer of uint8 batches (e.g. an evaluation predictor that takes NumPy).
    """
    pixels = np.asarray(batch)
    _check_batch(pixels.dtype == np.uint8, pixels.shape)
    scaled = pixels.astype(np.float32) / np.float32(255.0)
    return (scaled - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]


def _check_batch(is_uint8: bool, shape: Sequence[int]) -> None:
    if not is_uint8 or len(shape) < 3 or shape[-3] not in (1, 3):
        raise ValueError(f"expected a uint8 batch [..., 1 or 3, H, W], got shape {list(shape)}"
                         + ("" if is_uint8 else " of another dtype"))


def _constant(values: np.ndarray, place) -> paddle.Tensor:
    return paddle.to_tensor(np.asarray(values, dtype=np.float32), place=place)


def normalize_uint8(batch: paddle.Tensor) -> paddle.Tensor:
    """Normalise a uint8 batch ``[..., C, H, W]`` (C 1 or 3) on its device: float32 ``[..., 3, H, W]``.

    ``x / 255``, ``- mean``, ``/ std`` in float32, tensor by tensor (not a scale by
    ``1 / 255``, which rounds differently), as :func:`~paddle_chexnet.data.transforms.normalize`.
    A grey batch is normalised plane by plane with per-channel scalars and the
    three planes concatenated (Paddle's CPU kernels broadcast ``[B, 1, H, W]``
    against ``[3, 1, 1]`` several times slower).
    """
    _check_batch(batch.dtype == paddle.uint8, batch.shape)
    place = batch.place
    scaled = paddle.divide(batch.astype("float32"), _constant([255.0], place))
    if batch.shape[-3] == 3:
        mean, std = _constant(IMAGENET_MEAN.reshape(3, 1, 1), place), _constant(IMAGENET_STD.reshape(3, 1, 1), place)
        return paddle.divide(paddle.subtract(scaled, mean), std)
    planes = [paddle.divide(paddle.subtract(scaled, _constant(IMAGENET_MEAN[c:c + 1], place)),
                            _constant(IMAGENET_STD[c:c + 1], place)) for c in range(3)]
    return paddle.concat(planes, axis=-3)


def normalization_table() -> np.ndarray:
    """float32 ``[3, 256]``: ``normalize`` of every uint8 value in each channel, computed by NumPy."""
    values = np.broadcast_to(np.arange(256, dtype=np.uint8), (3, 256))[:, None, :]  # [3 planes, H=1, W=256]
    return np.ascontiguousarray(normalize(values.transpose(1, 2, 0))[:, 0, :])


def normalize_uint8_table(batch: paddle.Tensor, table: paddle.Tensor | None = None) -> paddle.Tensor:
    """:func:`normalize_uint8` by looking values up in :func:`normalization_table` (exact on any device).

    Args:
        batch (paddle.Tensor): uint8 ``[..., C, H, W]``, C 1 or 3.
        table (paddle.Tensor, optional): the table on the batch's device (pass it to avoid a copy per
            call). Default: None.
    """
    _check_batch(batch.dtype == paddle.uint8, batch.shape)
    if table is None:
        table = paddle.to_tensor(normalization_table(), place=batch.place)
    offsets = paddle.to_tensor(np.array([0, 256, 512], dtype=np.int64).reshape(3, 1, 1), place=batch.place)
    index = batch.astype("int64") + offsets  # grey [..., 1, H, W] broadcasts to [..., 3, H, W]
    return paddle.gather(table.reshape([-1]), index.reshape([-1])).reshape(index.shape)


def device_normalization_is_exact(place=None) -> bool:
    """Whether :func:`normalize_uint8` on ``place`` (default: the current device) equals NumPy's for all 256 values.

    Every value of every channel, grey (broadcast) and colour layouts: an
    elementwise kernel has no other input, so this is a complete check.
    """
    values = np.arange(256, dtype=np.uint8)
    colour = np.ascontiguousarray(np.broadcast_to(values, (2, 3, 1, 256)))
    grey = colour[:, :1]
    for batch in (colour, grey):
        expected = normalize_uint8_numpy(batch)
        got = normalize_uint8(paddle.to_tensor(batch, place=place)).numpy()
        if got.shape != expected.shape or not np.array_equal(got.view(np.uint32), expected.view(np.uint32)):
            return False
    return True


def attach_uint8_normalization(network: paddle.nn.Layer, exact_table: bool = False):
    """Make ``network`` normalise a uint8 first input on its device before ``forward`` (float inputs pass as they are).

    A forward pre-hook, so the network's parameter names (and checkpoints) do not change.

    Args:
        network (paddle.nn.Layer): the network.
        exact_table (bool, optional): use :func:`normalize_uint8_table` (for a device where
            :func:`device_normalization_is_exact` is False). Default: False.

    Returns:
        The hook's handle (``handle.remove()`` detaches it).
    """
    def hook(layer: paddle.nn.Layer, inputs: tuple):
        if not inputs or not isinstance(inputs[0], paddle.Tensor) or inputs[0].dtype != paddle.uint8:
            return None
        normalised = normalize_uint8_table(inputs[0]) if exact_table else normalize_uint8(inputs[0])
        return (normalised, *inputs[1:])

    return network.register_forward_pre_hook(hook)

"""Preprocessing identical to torchvision's, computed in NumPy.

The references use ``Resize(256)`` (PIL bilinear), ``TenCrop(224)`` or
``CenterCrop(224)``, ``ToTensor`` and ImageNet ``Normalize``. We call the same
PIL resize and do the same float32 arithmetic in the same order
(``x / 255``, then ``- mean``, then ``/ std``), so the result equals
torchvision's bit for bit; the crops are slices of one normalised array
instead of ten separate conversions.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)


IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size``, as ``torchvision.transforms.Resize(size)``."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) == (width, height):
        return image
    return image.resize((new_w, new_h), Image.BILINEAR)


def normalize(image: Image.Image) -> np.ndarray:
    """``ToTensor`` + ImageNet ``Normalize``: a float32 ``[3, H, W]`` array (gray is broadcast)."""
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    if pixels.ndim == 2:
        pixels = pixels[None, :, :]
    else:
        pixels = pixels.transpose(2, 0, 1)
    return (pixels - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]


def five_crop_offsets(height: int, width: int, crop: int) -> list[tuple[int, int]]:
    """(top, left) of torchvision's ``FiveCrop``: tl, tr, bl, br, center."""
    if crop > height or crop > width:
        raise ValueError(f"crop {crop} is larger than the resized image {height}x{width}")
    center = (int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0)))
    return [(0, 0), (0, width - crop), (height - crop, 0), (height - crop, width - crop), center]


def ten_crop(chw: np.ndarray, crop: int) -> np.ndarray:
    """torchvision's ``TenCrop``: five crops, then five of the horizontally flipped image: ``[10, 3, crop, crop]``."""
    _, height, width = chw.shape
    offsets = five_crop_offsets(height, width, crop)
    flipped = chw[:, :, ::-1]
    crops = [src[:, t:t + crop, l:l + crop] for src in (chw, flipped) for t, l in offsets]
    return np.ascontiguousarray(np.stack(crops))


def center_crop(chw: np.ndarray, crop: int) -> np.ndarray:
    """torchvision's ``CenterCrop``: ``[3, crop, crop]``."""
    _, height, width = chw.shape
    top, left = five_crop_offsets(height, width, crop)[4]
    return np.ascontiguousarray(chw[:, top:top + crop, left:left + crop])


class EvalTransform:
    """Resize, then ten crops ``[10, 3, c, c]`` or the center crop ``[3, c, c]``, normalised.

    Args:
        crops (str, optional): ``'ten'`` or ``'center'``. Default: 'ten'.
        resize (int, optional): shorter side after resizing. Default: 256.
        crop (int, optional): crop size. Default: 224.
    """

    def __init__(self, crops: str = "ten", resize: int = 256, crop: int = 224) -> None:
        if crops not in ("ten", "center"):
            raise ValueError(f"crops must be 'ten' or 'center', got {crops!r}")
        if crop > resize:
            raise ValueError(f"crop ({crop}) must not exceed resize ({resize})")
        self.crops, self.resize, self.crop = crops, resize, crop

    @property
    def num_crops(self) -> int:
        return 10 if self.crops == "ten" else 1

    def __call__(self, image: Image.Image) -> np.ndarray:
        chw = normalize(resize_shorter_side(image, self.resize))
        return ten_crop(chw, self.crop) if self.crops == "ten" else center_crop(chw, self.crop)


class TrainTransform:
    """Resize, random crop and random horizontal flip, normalised: ``[3, c, c]``.

    Args:
        resize (int, optional): shorter side after resizing. Default: 256.
        crop (int, optional): crop size. Default: 224.
        rng (numpy.random.Generator, optional): source of randomness; ``None``
            uses NumPy's global generator (seed it per data-loader worker). Default: None.
    """

    def __init__(self, resize: int = 256, crop: int = 224, rng: np.random.Generator | None = None) -> None:
        if crop > resize:
            raise ValueError(f"crop ({crop}) must not exceed resize ({resize})")
        self.resize, self.crop, self.rng = resize, crop, rng

    def __call__(self, image: Image.Image) -> np.ndarray:
        chw = normalize(resize_shorter_side(image, self.resize))
        _, height, width = chw.shape
        top = self._uniform_int(height - self.crop + 1)
        left = self._uniform_int(width - self.crop + 1)
        out = chw[:, top:top + self.crop, left:left + self.crop]
        if self._uniform_int(2) == 1:
            out = out[:, :, ::-1]
        return np.ascontiguousarray(out)

    def _uniform_int(self, high: int) -> int:
        """An integer in ``[0, high)`` from ``self.rng`` or NumPy's global generator."""
        if self.rng is not None:
            return int(self.rng.integers(0, high))
        return int(np.random.randint(0, high))

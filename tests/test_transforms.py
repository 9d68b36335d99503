"""Preprocessing parity with the PyTorch reference (torchvision Resize/TenCrop/ToTensor/Normalize).

The reference reads ``Image.open(p).convert('RGB')`` and runs torchvision's
transforms; we read with :func:`read_xray` (gray stays one plane) and use
:class:`EvalTransform`. For 8-bit images of every mode the result is
bit-identical (difference 0): the same PIL resize, the same float32 operations
in the same order, and gray broadcast to three equal planes is what
``convert('RGB')`` makes. The one intended difference is 16-bit input, which the
reference clips to 255 and we scale from min..max (see ``images.py``); for it
we check parity given the same 8-bit picture and bound the reference's loss.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from paddle_chexnet.data.images import read_xray
from paddle_chexnet.data.transforms import EvalTransform, five_crop_offsets, ten_crop

SAMPLE_FAST = 4  # real images in the fast suite; all 200 in the slow one


def _reference(crops: str, resize: int = 256, crop: int = 224):
    """CheXNet's PyTorch evaluation transform, as in the reference repository."""
    transforms = pytest.importorskip("torchvision.transforms")
    torch = pytest.importorskip("torch")
    normalize = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    if crops == "ten":
        return transforms.Compose([
            transforms.Resize(resize),
            transforms.TenCrop(crop),
            transforms.Lambda(lambda cs: torch.stack([transforms.ToTensor()(c) for c in cs])),
            transforms.Lambda(lambda cs: torch.stack([normalize(c) for c in cs])),
        ])
    return transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop), transforms.ToTensor(), normalize])


def _assert_same(path_or_image, crops: str, resize: int = 256, crop: int = 224, reference_input=None) -> None:
    ours = EvalTransform(crops, resize, crop)(
        read_xray(path_or_image) if isinstance(path_or_image, (str, Path)) else path_or_image
    )
    if reference_input is None:
        with Image.open(path_or_image) as opened:
            reference_input = opened.convert("RGB")
    theirs = _reference(crops, resize, crop)(reference_input).numpy()
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    diff = float(np.abs(ours - theirs).max())
    assert diff == 0.0, f"preprocessing differs from torchvision by up to {diff}"


def _sample_paths(sample_dir: Path, n: int | None) -> list[Path]:
    paths = sorted((sample_dir / "images").glob("*.png"))
    assert len(paths) == 200
    if n is None:
        return paths
    rgba = [p for p in paths if Image.open(p).mode == "RGBA"]  # the real-world edge case, always included
    return rgba + [p for p in paths if p not in rgba][: n - len(rgba)]


@pytest.mark.torch
@pytest.mark.shared_data
@pytest.mark.parametrize("crops", ["ten", "center"])
def test_real_sample_parity_fast(sample_dir, crops):
    for path in _sample_paths(sample_dir, SAMPLE_FAST):
        _assert_same(path, crops)


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.shared_data
def test_real_sample_parity_all_200(sample_dir):
    for path in _sample_paths(sample_dir, None):
        _assert_same(path, "ten")


def _generated(mode: str, size=(300, 260)) -> Image.Image:
    rng = np.random.default_rng(sum(map(ord, mode)))  # stable across runs (hash() is salted)
    w, h = size
    gray = rng.integers(0, 256, (h, w), dtype=np.uint8)
    if mode == "L":
        return Image.fromarray(gray, "L")
    if mode == "RGB-gray":
        return Image.fromarray(np.stack([gray] * 3, -1), "RGB")
    if mode == "RGB":
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    if mode == "RGBA-gray":
        return Image.fromarray(np.stack([gray] * 3 + [rng.integers(0, 256, (h, w), dtype=np.uint8)], -1), "RGBA")
    if mode == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    if mode == "LA":
        return Image.fromarray(np.stack([gray, rng.integers(0, 256, (h, w), dtype=np.uint8)], -1), "LA")
    if mode == "P-gray":
        image = Image.fromarray(gray // 4, "P")
        image.putpalette([v for i in range(256) for v in (i * 4 % 256,) * 3])
        return image
    if mode == "P":
        image = Image.fromarray(gray // 4, "P")
        image.putpalette(rng.integers(0, 256, 768).tolist())
        return image
    raise ValueError(mode)


@pytest.mark.torch
@pytest.mark.parametrize("mode", ["L", "RGB-gray", "RGB", "RGBA-gray", "RGBA", "LA", "P-gray", "P"])
@pytest.mark.parametrize("crops,resize,crop", [("ten", 256, 224), ("center", 256, 224), ("ten", 40, 32)])
def test_generated_modes_parity(tmp_path, mode, crops, resize, crop):
    path = tmp_path / f"{mode}.png"
    _generated(mode).save(path)
    _assert_same(path, crops, resize, crop)


@pytest.mark.torch
@pytest.mark.parametrize("size", [(256, 256), (255, 300), (1000, 999)])
def test_odd_sizes_parity(tmp_path, size):
    path = tmp_path / "odd.png"
    _generated("L", size).save(path)
    _assert_same(path, "ten")


@pytest.mark.torch
def test_16_bit_parity_given_same_8_bit_picture_and_reference_clipping(tmp_path):
    rng = np.random.default_rng(7)
    values = rng.integers(200, 4096, (260, 300), dtype=np.uint16)  # a 12-bit detector range
    path = tmp_path / "wide.png"
    Image.fromarray(values).save(path)
    ours_8bit = read_xray(path)
    assert ours_8bit.mode == "L"
    pixels = np.asarray(ours_8bit)
    assert pixels.min() == 0 and pixels.max() == 255  # the whole 8-bit range is used
    _assert_same(ours_8bit, "ten", reference_input=ours_8bit.convert("RGB"))
    with Image.open(path) as opened:
        clipped = np.asarray(opened.convert("RGB"))
    # The reference's convert('RGB') clips: almost every pixel saturates, the picture is lost.
    assert (clipped == 255).mean() > 0.9


def test_ten_crop_order_and_flip():
    chw = np.arange(3 * 6 * 8, dtype=np.float32).reshape(3, 6, 8)
    crops = ten_crop(chw, 4)
    assert crops.shape == (10, 3, 4, 4)
    offsets = five_crop_offsets(6, 8, 4)
    assert offsets == [(0, 0), (0, 4), (2, 0), (2, 4), (1, 2)]
    for i, (t, l) in enumerate(offsets):
        np.testing.assert_array_equal(crops[i], chw[:, t:t + 4, l:l + 4])
        np.testing.assert_array_equal(crops[5 + i], chw[:, :, ::-1][:, t:t + 4, l:l + 4])


def test_eval_transform_shapes_and_errors():
    image = _generated("L", (50, 40))
    assert EvalTransform("ten", 40, 32)(image).shape == (10, 3, 32, 32)
    assert EvalTransform("center", 40, 32)(image).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="crops must be"):
        EvalTransform("five")
    with pytest.raises(ValueError, match="must not exceed"):
        EvalTransform("ten", 200, 224)

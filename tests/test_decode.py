"""read_xray's OpenCV decode of 8-bit gray/RGB/RGBA PNGs gives PIL's pixels; every other file stays PIL's."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from paddle_chexnet.data import images
from paddle_chexnet.data.images import ImageReadError, read_xray

cv2 = pytest.importorskip("cv2")


def _pil_only(path, monkeypatch) -> Image.Image:
    with monkeypatch.context() as patch:
        patch.setattr(images, "opencv", lambda: None)
        return read_xray(path)


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.mode == b.mode and a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def _pixels(mode: str, rng: np.random.Generator) -> Image.Image:
    gray = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    colour = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    if mode == "L":
        return Image.fromarray(gray)
    if mode == "RGB-gray":
        return Image.fromarray(gray).convert("RGB")
    if mode == "RGB":
        return Image.fromarray(colour)
    if mode == "RGBA-gray":  # NIH's one RGBA image: gray content, opaque
        return Image.fromarray(gray).convert("RGBA")
    if mode == "RGBA":
        return Image.fromarray(np.dstack([colour, rng.integers(0, 256, (37, 53), dtype=np.uint8)]))
    if mode == "LA":
        return Image.fromarray(np.dstack([gray, gray[::-1]]), mode="LA")
    if mode == "P":
        return Image.fromarray(colour).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    if mode == "I;16":
        return Image.fromarray((gray.astype(np.uint16) * 200 + 7))
    if mode == "1":
        return Image.fromarray(gray > 128)
    raise ValueError(mode)


OPENCV_MODES = ["L", "RGB-gray", "RGB", "RGBA-gray", "RGBA"]
PIL_MODES = ["LA", "P", "I;16", "1"]


@pytest.mark.parametrize("mode", OPENCV_MODES + PIL_MODES)
def test_read_xray_gives_the_pixels_pil_gives(tmp_path, monkeypatch, mode) -> None:
    path = tmp_path / f"{mode.replace(';', '')}.png"
    _pixels(mode, np.random.default_rng(len(mode))).save(path)
    decoded = []
    real = images.decode_png_opencv
    monkeypatch.setattr(images, "decode_png_opencv", lambda data, cv: decoded.append(real(data, cv)) or decoded[-1])
    ours = read_xray(path)
    assert _same(ours, _pil_only(path, monkeypatch))
    assert ours.mode == ("RGB" if mode in ("RGB", "RGBA", "P") else "L")
    assert (decoded != [] and decoded[0] is not None) == (mode in OPENCV_MODES)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_transparency_chunks_do_not_change_the_pixels(tmp_path, monkeypatch, mode) -> None:
    """A ``tRNS`` chunk in a gray or RGB PNG (OpenCV may turn it into alpha): the same pixels as PIL's."""
    path = tmp_path / "transparent.png"
    image = _pixels(mode, np.random.default_rng(3))
    image.save(path, transparency=7 if mode == "L" else (7, 8, 9))
    assert b"tRNS" in path.read_bytes()
    assert _same(read_xray(path), _pil_only(path, monkeypatch))


def test_text_chunks_and_a_jpeg_are_read_as_before(tmp_path, monkeypatch) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "x" * 5000)
    png, jpeg = tmp_path / "text.png", tmp_path / "x.jpg"
    _pixels("L", np.random.default_rng(4)).save(png, pnginfo=info)
    _pixels("RGB", np.random.default_rng(4)).save(jpeg, quality=90)
    for path in (png, jpeg):
        assert _same(read_xray(path), _pil_only(path, monkeypatch))


@pytest.mark.parametrize("cut", [40, 200])
def test_a_truncated_png_is_refused_naming_the_file(tmp_path, cut) -> None:
    path = tmp_path / "00000001_000.png"
    _pixels("L", np.random.default_rng(5)).save(path)
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(ImageReadError, match=r"cannot read image .*00000001_000\.png"):
        read_xray(path)


@pytest.mark.parametrize("cut", [-20, -4])
def test_a_png_cut_in_its_last_chunks_is_left_to_pil(tmp_path, monkeypatch, cut) -> None:
    """Without its IEND chunk a PNG is not OpenCV's: PIL reads the pixels it holds, as it always did."""
    path = tmp_path / "cut.png"
    _pixels("L", np.random.default_rng(5)).save(path)
    path.write_bytes(path.read_bytes()[:cut])
    decoded = []
    real = images.decode_png_opencv
    monkeypatch.setattr(images, "decode_png_opencv", lambda data, cv: decoded.append(real(data, cv)) or decoded[-1])
    assert _same(read_xray(path), _pil_only(path, monkeypatch))
    assert decoded == [None]


def test_not_an_image_is_refused_naming_the_file(tmp_path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not a picture")
    with pytest.raises(ImageReadError, match=r"cannot read image .*notes\.png: not an image file PIL can identify"):
        read_xray(path)


def test_without_opencv_pil_decodes_everything(tmp_path, monkeypatch) -> None:
    path = tmp_path / "gray.png"
    _pixels("L", np.random.default_rng(6)).save(path)
    monkeypatch.setattr(images, "opencv", lambda: None)
    monkeypatch.setattr(images, "decode_png_opencv", lambda data, cv: pytest.fail("OpenCV used"))
    assert read_xray(path).mode == "L"


def _sample_images(sample_dir, limit=None):
    paths = sorted((sample_dir / "images").glob("*.png"))
    rgba = [p for p in paths if Image.open(p).mode == "RGBA"]
    assert rgba, "the sample's RGBA image is missing"
    return sorted(set(paths[:limit] + rgba)) if limit else paths


@pytest.mark.shared_data
def test_real_nih_images_decode_to_pil_pixels(sample_dir, monkeypatch) -> None:
    """Ten gray NIH images and the sample's RGBA one (all 200: the slow test and benchmarks/bench_decode.py)."""
    for path in _sample_images(sample_dir, limit=10):
        assert _same(read_xray(path), _pil_only(path, monkeypatch)), path.name


@pytest.mark.slow
@pytest.mark.shared_data
def test_all_200_real_nih_images_decode_to_pil_pixels(sample_dir, monkeypatch) -> None:
    for path in _sample_images(sample_dir):
        assert _same(read_xray(path), _pil_only(path, monkeypatch)), path.name

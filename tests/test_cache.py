"""The image cache: exactness against the PNG path, crash safety of the build, and the uint8 data path.

Exactness is bit for bit: the cache stores ``resize_shorter_side(read_xray(p), size)``
and the transforms' resize is then a no-op, so every array compared here must
be *equal* (``np.array_equal``, float32 compared as bits), not close.

Crash safety: a build is killed with SIGKILL (a forked child that kills itself
at a chosen point, or the real command killed from outside in the slow test),
then re-run; the folder must then be byte-identical (every file but the lock)
to that of an uninterrupted build.
"""
from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

from paddle_chexnet.data.cache import (
    JOURNAL_NAME,
    MANIFEST_NAME,
    UNREADABLE_NAME,
    CachedDataset,
    CacheError,
    CacheSizeError,
    ImageCache,
    shard_name,
)
from paddle_chexnet.data.cache_build import (
    CacheLockedError,
    build_cache,
    read_selection,
)
from paddle_chexnet.data.datasets import ChestXray14Dataset, MissingImagesError
from paddle_chexnet.data.images import read_xray
from paddle_chexnet.data.label_lists import LabelList
from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.data.sampling import SeededAugmentation
from paddle_chexnet.data.transforms import EvalTransform, TrainTransform, resize_shorter_side
from paddle_chexnet.data.uint8 import (
    Uint8EvalTransform,
    Uint8TrainTransform,
    attach_uint8_normalization,
    device_normalization_is_exact,
    normalize_uint8,
    normalize_uint8_numpy,
    normalize_uint8_table,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZE, CROP = 64, 56

MODES = ["L", "RGB-gray", "RGB", "RGBA-gray", "RGBA", "LA", "P-gray", "P", "I;16", "1", "JPEG-L", "JPEG-RGB"]


def _make(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    gray = rng.integers(0, 256, (h, w), dtype=np.uint8)
    noise = rng.integers(0, 256, (h, w), dtype=np.uint8)
    if mode in ("L", "JPEG-L"):
        return Image.fromarray(gray, "L")
    if mode == "RGB-gray":
        return Image.fromarray(np.stack([gray] * 3, -1), "RGB")
    if mode in ("RGB", "JPEG-RGB"):
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    if mode == "RGBA-gray":
        return Image.fromarray(np.stack([gray] * 3 + [noise], -1), "RGBA")
    if mode == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
    if mode == "LA":
        return Image.fromarray(np.stack([gray, noise], -1), "LA")
    if mode in ("P-gray", "P"):
        image = Image.fromarray(gray // 4, "P")
        palette = [v for i in range(256) for v in (i * 4 % 256,) * 3] if mode == "P-gray" \
            else rng.integers(0, 256, 768).tolist()
        image.putpalette(palette)
        return image
    if mode == "I;16":
        return Image.fromarray(rng.integers(200, 4096, (h, w), dtype=np.uint16))
    if mode == "1":
        return Image.fromarray(gray > 127)
    raise ValueError(mode)


def _write_images(folder: Path, count: int = 12, nested: bool = False) -> list[Path]:
    """``count`` small images of the modes above, varied sizes (some need no resize, one is upsampled)."""
    sizes = [(90, 70), (64, 80), (70, 64), (40, 50), (101, 99), (64, 64)]
    paths = []
    for i in range(count):
        mode = MODES[i % len(MODES)]
        suffix = ".jpg" if mode.startswith("JPEG") else ".png"
        sub = folder / (f"train/patient{i % 3:05d}/study1" if nested else "")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"{i:08d}_000{suffix}"
        _make(mode, sizes[i % len(sizes)], seed=i).save(path, quality=90) if suffix == ".jpg" \
            else _make(mode, sizes[i % len(sizes)], seed=i).save(path)
        paths.append(path)
    return paths


def _folder_bytes(root: Path) -> dict[str, bytes]:
    """Every file of a cache folder but the lock (which holds a process id)."""
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file() and p.name != ".lock"}


def _label_list(names: list[str]) -> LabelList:
    labels = np.random.default_rng(1).integers(0, 2, (len(names), len(CLASS_NAMES))).astype(np.float32)
    return LabelList(names, labels, CLASS_NAMES, "test list")


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def _assert_exact(cache: ImageCache, key: str, source: Path, size: int = SIZE, crop: int = CROP) -> None:
    """The cache gives the PNG path's pixels, and every transform the same tensors, bit for bit."""
    expected = resize_shorter_side(read_xray(source), size)
    got = cache.read_image(key)
    assert got.mode == expected.mode and got.size == expected.size
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    np.testing.assert_array_equal(cache.read_array(key), np.asarray(expected))
    for crops in ("ten", "center"):
        from_png = EvalTransform(crops, size, crop)(read_xray(source))
        assert np.array_equal(_bits(EvalTransform(crops, size, crop)(got)), _bits(from_png))
        uint8 = Uint8EvalTransform(crops, size, crop)(cache.read_array(key))
        assert uint8.dtype == np.uint8
        assert np.array_equal(_bits(normalize_uint8_numpy(uint8)), _bits(from_png))
    for seed in range(3):
        from_png = TrainTransform(size, crop, np.random.default_rng(seed))(read_xray(source))
        from_cache = TrainTransform(size, crop, np.random.default_rng(seed))(got)
        uint8 = Uint8TrainTransform(size, crop, np.random.default_rng(seed))(cache.read_array(key))
        assert np.array_equal(_bits(from_cache), _bits(from_png))
        assert np.array_equal(_bits(normalize_uint8(paddle.to_tensor(uint8[None])).numpy()[0]), _bits(from_png))


@pytest.fixture()
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    _write_images(folder)
    return folder


def test_every_mode_is_exact_against_the_png_path(tmp_path, images):
    result = build_cache(images, tmp_path / "cache", size=SIZE, workers=0, progress=False)
    assert result.total == 12 and result.encoded == 12 and not result.unreadable
    cache = ImageCache(tmp_path / "cache")
    assert cache.size == SIZE and len(cache) == 12
    for key in cache.keys:
        _assert_exact(cache, key, images / key)
    colour = [k for k in cache.keys if cache.shape(k)[-1] == 3 and len(cache.shape(k)) == 3]
    # read_xray gives 'RGB' only for colour content: RGB, RGBA, P (colour palette), JPEG-RGB
    assert sorted(MODES[int(k[:8]) % len(MODES)] for k in colour) == ["JPEG-RGB", "P", "RGB", "RGBA"]
    assert cache.manifest["channels"] == {"1": 8, "3": 4}


def test_parallel_build_is_byte_identical_to_serial(tmp_path, images):
    build_cache(images, tmp_path / "serial", size=SIZE, workers=0, progress=False)
    build_cache(images, tmp_path / "parallel", size=SIZE, workers=2, progress=False)
    assert _folder_bytes(tmp_path / "serial") == _folder_bytes(tmp_path / "parallel")


def test_seeded_training_loader_is_exact_with_uint8_crops_and_device_normalisation(tmp_path, images):
    build_cache(images, tmp_path / "cache", size=SIZE, workers=0, progress=False)
    names = sorted(p.name for p in images.iterdir())
    labels = _label_list(names)
    png = SeededAugmentation(ChestXray14Dataset(images, labels, TrainTransform(SIZE, CROP)), seed=7)
    cached = SeededAugmentation(CachedDataset(tmp_path / "cache", labels, Uint8TrainTransform(SIZE, CROP),
                                              resize=SIZE), seed=7)
    for epoch in (0, 3):
        png.set_epoch(epoch)
        cached.set_epoch(epoch)
        order = np.random.default_rng(epoch).permutation(len(names))[:6].tolist()
        loaders = [paddle.io.DataLoader(ds, batch_sampler=[order], num_workers=0) for ds in (png, cached)]
        (float_batch, float_labels), (uint8_batch, uint8_labels) = next(iter(loaders[0])), next(iter(loaders[1]))
        assert uint8_batch.dtype == paddle.uint8 and list(uint8_batch.shape) == [6, 3, CROP, CROP]
        assert np.array_equal(_bits(normalize_uint8(uint8_batch).numpy()), _bits(float_batch.numpy()))
        np.testing.assert_array_equal(uint8_labels.numpy(), float_labels.numpy())


def test_evaluation_reads_the_cache_through_evaluate_loader(tmp_path, images):
    from paddle_chexnet.evaluation.evaluate import iterate_batches

    build_cache(images, tmp_path / "cache", size=SIZE, workers=0, progress=False)
    names = sorted(p.name for p in images.iterdir())
    png = ChestXray14Dataset(images, _label_list(names))
    cached = CachedDataset(tmp_path / "cache", _label_list(names), resize=SIZE)
    cached.verify_images()
    for workers in (0, 1):
        a = list(iterate_batches(png.paths, 5, "ten", SIZE, CROP, num_workers=0, reader=png.reader))
        b = list(iterate_batches(cached.paths, 5, "ten", SIZE, CROP, num_workers=workers, reader=cached.reader))
        assert len(a) == len(b) == 3
        for x, y in zip(a, b):
            assert np.array_equal(_bits(x), _bits(y))


def test_one_channel_crops_for_grey_caches(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        _make("L", (80, 70), i).save(folder / f"{i}.png")
    build_cache(folder, tmp_path / "cache", size=SIZE, workers=0, progress=False)
    cache = ImageCache(tmp_path / "cache")
    assert cache.channels() == 1
    for key in cache.keys:
        crop = Uint8TrainTransform(SIZE, CROP, np.random.default_rng(0), channels=1)(cache.read_array(key))
        assert crop.shape == (1, CROP, CROP)
        expected = TrainTransform(SIZE, CROP, np.random.default_rng(0))(read_xray(folder / key))
        assert np.array_equal(_bits(normalize_uint8(paddle.to_tensor(crop[None])).numpy()[0]), _bits(expected))
        ten = Uint8EvalTransform("ten", SIZE, CROP, channels=1)(cache.read_image(key))
        assert ten.shape == (10, 1, CROP, CROP)
        assert np.array_equal(_bits(normalize_uint8_table(paddle.to_tensor(ten)).numpy()),
                              _bits(EvalTransform("ten", SIZE, CROP)(read_xray(folder / key))))
    with pytest.raises(ValueError, match="colour image"):
        Uint8TrainTransform(SIZE, CROP, channels=1)(np.zeros((SIZE, SIZE, 3), np.uint8))
    with pytest.raises(ValueError, match="not resized"):
        Uint8TrainTransform(SIZE, CROP)(np.zeros((SIZE + 1, SIZE + 2), np.uint8))


def test_device_normalisation_is_bit_identical_on_the_cpu_for_every_value():
    assert device_normalization_is_exact("cpu")
    from paddle_chexnet.data.transforms import normalize

    rng = np.random.default_rng(3)
    for shape in [(2, 3, 7, 5), (10, 1, 16, 16), (4, 3, 224, 224)]:
        batch = rng.integers(0, 256, shape, dtype=np.uint8)
        expected = np.stack([normalize(b[0] if b.shape[0] == 1 else b.transpose(1, 2, 0)) for b in batch])
        for fn in (normalize_uint8, normalize_uint8_table):
            got = fn(paddle.to_tensor(batch)).numpy()
            assert got.dtype == np.float32 and got.shape == (shape[0], 3) + shape[2:]
            assert np.array_equal(_bits(got), _bits(expected)), fn.__name__
    with pytest.raises(ValueError, match="uint8 batch"):
        normalize_uint8(paddle.zeros([2, 3, 4, 4], dtype="float32"))


def test_network_hook_normalises_uint8_input_and_keeps_parameter_names():
    paddle.seed(0)
    net = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3), paddle.nn.ReLU(), paddle.nn.Flatten(),
                               paddle.nn.Linear(4 * 30 * 30, 2))
    names = list(net.state_dict())
    batch = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    expected = net(paddle.to_tensor(normalize_uint8_numpy(batch))).numpy()
    handle = attach_uint8_normalization(net)
    assert list(net.state_dict()) == names
    np.testing.assert_array_equal(net(paddle.to_tensor(batch)).numpy(), expected)
    np.testing.assert_array_equal(net(paddle.to_tensor(normalize_uint8_numpy(batch))).numpy(), expected)
    handle.remove()
    with pytest.raises(Exception):  # noqa: B017 - uint8 straight into a convolution: the hook is gone
        net(paddle.to_tensor(batch))


# --- crash safety --------------------------------------------------------------------------------------------------

KILL_POINTS = [("appended", 1), ("appended", 5), ("committed", 1), ("committed", 3), ("before-manifest", 1),
               ("manifest-tmp", 1), ("manifest-written", 1)]

BUILD_OPTIONS = {"size": SIZE, "workers": 0, "progress": False, "commit_every": 2, "shard_bytes": 3 * SIZE * 80 * 3}


def _build_killed_at(images: Path, output: Path, point: str, nth: int, **options) -> None:
    """Build in a forked child that SIGKILLs itself at the ``nth`` time it reaches ``point``."""
    seen = {"n": 0}

    def hook(name: str) -> None:
        if name == point:
            seen["n"] += 1
            if seen["n"] == nth:
                os.kill(os.getpid(), signal.SIGKILL)

    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            build_cache(images, output, _hook=hook, **{**BUILD_OPTIONS, **options})
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"the build was not killed at {point}"


@pytest.mark.parametrize("point,nth", KILL_POINTS)
def test_killed_build_resumes_to_byte_identical_cache(tmp_path, images, point, nth):
    build_cache(images, tmp_path / "clean", **BUILD_OPTIONS)
    clean = _folder_bytes(tmp_path / "clean")
    assert len([n for n in clean if n.startswith("pixels-")]) > 1  # the shard roll-over is exercised too
    _build_killed_at(images, tmp_path / "killed", point, nth)
    if point.startswith(("appended", "committed")):
        with pytest.raises(CacheError, match="unfinished build"):
            ImageCache(tmp_path / "killed")
    result = build_cache(images, tmp_path / "killed", **BUILD_OPTIONS)
    assert result.total == 12
    assert _folder_bytes(tmp_path / "killed") == clean
    assert not (tmp_path / "killed" / JOURNAL_NAME).exists()


def test_killed_twice_and_killed_update_resume_to_identical_caches(tmp_path, images):
    _build_killed_at(images, tmp_path / "killed", "committed", 1)
    _build_killed_at(images, tmp_path / "killed", "appended", 3)
    build_cache(images, tmp_path / "killed", **BUILD_OPTIONS)
    build_cache(images, tmp_path / "clean", **BUILD_OPTIONS)
    assert _folder_bytes(tmp_path / "killed") == _folder_bytes(tmp_path / "clean")
    # an update (two changed sources, one new) killed half-way, against the same update uninterrupted
    for name in ("00000002_000.png", "00000007_000.png"):
        _make("L", (77, 66), seed=99).save(images / name)
        os.utime(images / name, ns=(time.time_ns(), time.time_ns() + 10**9))
    _make("L", (66, 77), seed=98).save(images / "zz_new.png")
    _build_killed_at(images, tmp_path / "killed", "appended", 2)
    old = ImageCache(tmp_path / "killed")  # the previous complete cache is still readable meanwhile
    assert len(old) == 12
    build_cache(images, tmp_path / "killed", **BUILD_OPTIONS)
    result = build_cache(images, tmp_path / "clean", **BUILD_OPTIONS)
    assert result.encoded == 3 and result.dead_bytes > 0
    assert _folder_bytes(tmp_path / "killed") == _folder_bytes(tmp_path / "clean")


def test_torn_journal_line_and_shard_tail_are_ignored(tmp_path, images):
    build_cache(images, tmp_path / "clean", **BUILD_OPTIONS)
    _build_killed_at(images, tmp_path / "killed", "committed", 2)
    journal = tmp_path / "killed" / JOURNAL_NAME
    lines = journal.read_bytes().splitlines(keepends=True)
    with open(journal, "ab") as handle:  # what a kill in the middle of a journal write leaves
        handle.write(lines[-1][: len(lines[-1]) // 2])
    last = max((tmp_path / "killed").glob("pixels-*"))
    with open(last, "ab") as handle:  # pixels of an image whose row was never journaled
        handle.write(b"\x7f" * 1000)
    _build_killed_at(images, tmp_path / "killed", "committed", 1)  # appends its rows after the torn one
    result = build_cache(images, tmp_path / "killed", **BUILD_OPTIONS)
    assert result.resumed == 6  # 2 commits of 2 rows, then 1 more: no row lost to the torn line
    assert _folder_bytes(tmp_path / "killed") == _folder_bytes(tmp_path / "clean")


def test_second_concurrent_build_refuses_and_first_is_unharmed(tmp_path, images):
    ready, go = tmp_path / "ready", tmp_path / "go"

    def pause(name: str) -> None:
        if name == "committed" and not ready.exists():
            ready.touch()
            deadline = time.monotonic() + 30
            while not go.exists() and time.monotonic() < deadline:
                time.sleep(0.01)

    pid = os.fork()
    if pid == 0:
        try:
            build_cache(images, tmp_path / "cache", _hook=pause, **BUILD_OPTIONS)
            os._exit(0)
        finally:
            os._exit(1)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(CacheLockedError, match=f"process {pid}"):
            build_cache(images, tmp_path / "cache", **BUILD_OPTIONS)
    finally:
        go.touch()
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    build_cache(images, tmp_path / "clean", **BUILD_OPTIONS)
    assert _folder_bytes(tmp_path / "cache") == _folder_bytes(tmp_path / "clean")


# --- updates, errors, lookups --------------------------------------------------------------------------------------

def test_rerun_with_nothing_changed_rewrites_nothing(tmp_path, images):
    build_cache(images, tmp_path / "cache", **BUILD_OPTIONS)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "cache").iterdir()
              if p.name != ".lock"}
    result = build_cache(images, tmp_path / "cache", **{**BUILD_OPTIONS, "workers": 2})
    assert result.encoded == 0 and result.reused == 12 and not result.manifest_written
    assert result.seconds < 5
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "cache").iterdir()
             if p.name != ".lock"}
    assert after == before


def test_changed_and_added_sources_are_re_encoded(tmp_path, images):
    build_cache(images, tmp_path / "cache", size=SIZE, workers=0, progress=False)
    shard = (tmp_path / "cache" / shard_name(0)).read_bytes()
    changed = images / "00000000_000.png"
    _make("L", (90, 70), seed=1234).save(changed)
    os.utime(changed, ns=(time.time_ns(), changed.stat().st_mtime_ns + 10**9))
    _make("L", (70, 90), seed=4321).save(images / "added.png")
    result = build_cache(images, tmp_path / "cache", size=SIZE, workers=0, progress=False)
    assert result.encoded == 2 and result.reused == 11 and result.total == 13
    assert result.dead_bytes == 64 * 82  # the old 90x70 picture, resized to 82x64
    assert (tmp_path / "cache" / shard_name(0)).read_bytes()[:len(shard)] == shard  # append-only
    cache = ImageCache(tmp_path / "cache")
    _assert_exact(cache, "00000000_000.png", changed)
    _assert_exact(cache, "added.png", images / "added.png")


def test_unreadable_images_are_listed_and_set_the_exit_code(tmp_path, images):
    from paddle_chexnet.cli.build_cache import entry

    (images / "empty.png").write_bytes(b"")
    good = (images / "00000000_000.png").read_bytes()
    (images / "truncated.png").write_bytes(good[: len(good) // 2])
    (images / "text.png").write_text("not an image")
    output = tmp_path / "cache"
    argv = ["--image-dir", str(images), "--output", str(output), "--size", str(SIZE), "--workers", "0",
            "--no-progress"]
    assert entry(argv) == 1
    listing = (output / UNREADABLE_NAME).read_text().splitlines()
    assert [line.split("\t")[0] for line in listing] == ["empty.png", "text.png", "truncated.png"]
    assert all("cannot read image" in line and str(images) not in line for line in listing)
    cache = ImageCache(output)  # the other images form a complete cache
    assert len(cache) == 12 and [u["path"] for u in cache.unreadable] == ["empty.png", "text.png", "truncated.png"]
    manifest = (output / MANIFEST_NAME).read_bytes()
    assert entry(argv + ["--skip-unreadable"]) == 0
    assert (output / MANIFEST_NAME).read_bytes() == manifest
    with pytest.raises(MissingImagesError, match="could not be decoded by the build"):
        CachedDataset(output, _label_list(["00000000_000.png", "text.png"]))


def test_missing_listed_images_fail_before_any_work(tmp_path, images):
    listed = tmp_path / "list.txt"
    listed.write_text("00000001_000.png\n00000003_000.png\nabsent.png\n")
    with pytest.raises(MissingImagesError, match="1 of 3 images named .* absent.png.*--skip-missing"):
        build_cache(images, tmp_path / "cache", size=SIZE, workers=0, label_lists=[listed], progress=False)
    assert not (tmp_path / "cache").exists()
    result = build_cache(images, tmp_path / "cache", size=SIZE, workers=0, label_lists=[listed], skip_missing=True,
                         progress=False)
    assert result.missing == ["absent.png"] and ImageCache(tmp_path / "cache").keys == ["00000001_000.png",
                                                                                          "00000003_000.png"]
    labels = _label_list(["00000001_000.png", "00000002_000.png", "00000003_000.png"])
    with pytest.raises(MissingImagesError, match="1 of 3 images listed in test list are not in the image cache"):
        CachedDataset(tmp_path / "cache", labels)
    dataset = CachedDataset(tmp_path / "cache", labels, skip_missing=True)
    assert dataset.names == ["00000001_000.png", "00000003_000.png"] and dataset.skipped == ["00000002_000.png"]
    np.testing.assert_array_equal(dataset.labels, labels.labels[[0, 2]])


def test_wrong_size_is_a_clear_error(tmp_path, images):
    build_cache(images, tmp_path / "cache", size=SIZE, workers=0, progress=False)
    names = sorted(p.name for p in images.iterdir())
    with pytest.raises(CacheSizeError, match=f"resized to {SIZE} px.*--resize 224.*--size 224"):
        CachedDataset(tmp_path / "cache", _label_list(names), resize=224)
    with pytest.raises(CacheError, match=f"cache of {SIZE} px images.*--size 96"):
        build_cache(images, tmp_path / "cache", size=96, workers=0, progress=False)


def test_moved_cache_still_works_and_pickles(tmp_path, images):
    build_cache(images, tmp_path / "cache", size=SIZE, workers=0, progress=False)
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(str(tmp_path / "cache"), moved)
    cache = ImageCache(moved)
    for key in cache.keys:
        _assert_exact(cache, key, images / key)
    clone = pickle.loads(pickle.dumps(cache))
    assert clone.root == moved and clone.keys == cache.keys
    np.testing.assert_array_equal(clone.read_array(cache.keys[0]), cache.read_array(cache.keys[0]))
    assert cache.verify() == 12


def test_incomplete_or_corrupt_caches_are_refused(tmp_path, images):
    build_cache(images, tmp_path / "cache", **BUILD_OPTIONS)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "cache", copy)
    with open(copy / shard_name(1), "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(CacheError, match="copied incompletely"):
        ImageCache(copy)
    with open(tmp_path / "cache" / shard_name(0), "r+b") as handle:
        handle.seek(10)
        value = handle.read(1)
        handle.seek(10)
        handle.write(bytes([value[0] ^ 0xFF]))
    with pytest.raises(CacheError, match="corrupt"):
        ImageCache(tmp_path / "cache").verify()
    with pytest.raises(CacheError, match="not an image cache"):
        ImageCache(images)
    with pytest.raises(FileNotFoundError, match="image cache not found"):
        ImageCache(tmp_path / "nowhere")
    with pytest.raises(CacheError, match="folder with other files"):
        build_cache(images, images, size=SIZE, workers=0, progress=False)


def test_nested_folders_and_every_list_format(tmp_path):
    images = tmp_path / "CheXpert-v1.0-small"
    paths = _write_images(images, count=6, nested=True)
    keys = [p.relative_to(images).as_posix() for p in paths]
    csv = tmp_path / "train.csv"
    csv.write_text("Path,Sex,Age\n" + "".join(f"CheXpert-v1.0-small/{k},Male,50\n" for k in keys[:3]))
    names = tmp_path / "names.txt"
    names.write_text(Path(keys[3]).name + "\n")
    chexnet = tmp_path / "labels.txt"
    chexnet.write_text(f"{Path(keys[4]).name} " + " ".join(["0"] * 14) + "\n")
    assert read_selection(csv) == [f"CheXpert-v1.0-small/{k}" for k in keys[:3]]
    assert read_selection(names) == [Path(keys[3]).name] and read_selection(chexnet) == [Path(keys[4]).name]
    result = build_cache(images, tmp_path / "cache", size=SIZE, workers=0, label_lists=[csv, names, chexnet],
                         progress=False)
    cache = ImageCache(tmp_path / "cache")
    assert result.total == 5 and cache.keys == sorted(keys[:5])
    found, missing = cache.lookup([f"CheXpert-v1.0-small/{keys[0]}", keys[1], Path(keys[4]).name, "nope.png"])
    assert found == {f"CheXpert-v1.0-small/{keys[0]}": keys[0], keys[1]: keys[1], Path(keys[4]).name: keys[4]}
    assert missing == ["nope.png"]
    for key in cache.keys:
        _assert_exact(cache, key, images / key)
    bad = tmp_path / "bad.csv"
    bad.write_text("Image,Sex\nx.png,M\n")
    with pytest.raises(ValueError, match="Path or Image Index column"):
        read_selection(bad)


def test_shared_bare_names_are_ambiguous(tmp_path):
    images = tmp_path / "images"
    for sub in ("a", "b"):
        (images / sub).mkdir(parents=True)
        _make("L", (70, 70), 0).save(images / sub / "same.png")
    build_cache(images, tmp_path / "cache", size=SIZE, workers=0, progress=False)
    cache = ImageCache(tmp_path / "cache")
    assert cache.lookup(["a/same.png"])[0] == {"a/same.png": "a/same.png"}
    with pytest.raises(CacheError, match="several images named same.png .a/same.png, b/same.png"):
        cache.lookup(["same.png"])


# --- the real sample -----------------------------------------------------------------------------------------------

def _sample_subset(sample_dir: Path, tmp_path: Path, n: int | None) -> Path:
    paths = sorted((sample_dir / "images").glob("*.png"))
    if n is not None:
        rgba = [p for p in paths if Image.open(p).mode == "RGBA"]  # the real-world edge case, always included
        paths = rgba + [p for p in paths if p not in rgba][: n - len(rgba)]
    folder = tmp_path / "sample"
    folder.mkdir()
    for path in paths:
        (folder / path.name).symlink_to(path)
    return folder


@pytest.mark.shared_data
def test_real_sample_is_exact_fast(sample_dir, tmp_path):
    folder = _sample_subset(sample_dir, tmp_path, 3)
    build_cache(folder, tmp_path / "cache", size=256, workers=0, progress=False)
    cache = ImageCache(tmp_path / "cache")
    assert cache.channels() == 1  # NIH's RGBA file holds grey content: stored as one plane
    for key in cache.keys:
        _assert_exact(cache, key, folder / key, 256, 224)


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_sample_is_exact_all_200(sample_dir, tmp_path):
    folder = _sample_subset(sample_dir, tmp_path, None)
    build_cache(folder, tmp_path / "cache", size=256, workers=2, progress=False)
    cache = ImageCache(tmp_path / "cache")
    assert len(cache) == 200
    for key in cache.keys:
        expected = np.asarray(resize_shorter_side(read_xray(folder / key), 256))
        np.testing.assert_array_equal(cache.read_array(key), expected)
        uint8 = Uint8EvalTransform("ten", 256, 224, channels=1)(cache.read_array(key))
        assert np.array_equal(_bits(normalize_uint8(paddle.to_tensor(uint8)).numpy()),
                              _bits(EvalTransform("ten", 256, 224)(read_xray(folder / key))))


# --- the command, as a user runs it --------------------------------------------------------------------------------

def _command(*args: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "tools" / "build_cache.py"), *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


def _big_image_farm(folder: Path, count: int, distinct: int = 24) -> None:
    """``count`` names for ``distinct`` 1024x1024 PNGs (symlinks): a build that takes seconds, cheaply made."""
    originals = folder.parent / "originals"
    originals.mkdir()
    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.arange(1024), np.arange(1024)) // 8
    for i in range(distinct):
        pixels = ((ramp + rng.integers(0, 64, (1024, 1024))) % 256).astype(np.uint8)
        Image.fromarray(pixels).save(originals / f"{i}.png")
    folder.mkdir()
    for i in range(count):
        (folder / f"{i:06d}.png").symlink_to(originals / f"{i % distinct}.png")


@pytest.mark.slow
def test_command_killed_at_random_moments_then_resumed_equals_clean_build(tmp_path):
    images = tmp_path / "images"
    _big_image_farm(images, 400)
    args = ["--image-dir", str(images), "--size", "96", "--workers", "2", "--no-progress"]
    started = time.monotonic()
    subprocess.run(_command(*args, "--output", str(tmp_path / "clean")), env=_env(), check=True,
                   capture_output=True)
    clean_seconds = time.monotonic() - started
    rng = np.random.default_rng(0)
    killed = tmp_path / "killed"

    def written() -> int:
        return sum(p.stat().st_size for p in killed.glob("pixels-*")) if killed.is_dir() else 0

    mid_build_kills = 0
    for _ in range(5):
        before = written()
        child = subprocess.Popen(_command(*args, "--output", str(killed)), env=_env(),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while child.poll() is None and written() == before:  # until it writes pixels (or ends)
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.25) * clean_seconds)  # then a random moment of the writing
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            mid_build_kills += 1
        child.wait()
    assert mid_build_kills >= 2
    done = subprocess.run(_command(*args, "--output", str(tmp_path / "killed")), env=_env(), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert _folder_bytes(tmp_path / "killed") == _folder_bytes(tmp_path / "clean")


@pytest.mark.slow
def test_command_two_builds_at_once_one_refuses(tmp_path):
    images = tmp_path / "images"
    _big_image_farm(images, 400)
    cmd = _command("--image-dir", str(images), "--output", str(tmp_path / "cache"), "--size", "96", "--workers",
                   "1", "--no-progress")
    first = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "cache" / JOURNAL_NAME).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    assert first.wait() == 0 and (tmp_path / "cache" / MANIFEST_NAME).exists()
    assert second.returncode == 1 and "another build" in second.stderr, second.stderr
    assert ImageCache(tmp_path / "cache").verify() == 400

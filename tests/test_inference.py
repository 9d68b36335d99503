"""The fast path (Paddle Inference + oneDNN) against the dynamic graph, and the export cache."""
from __future__ import annotations

import numpy as np
import paddle
import pytest
from conftest import seeded_network

from paddle_chexnet.inference.export import cached_export, default_cache_dir, export_key
from paddle_chexnet.inference.predictors import (
    DygraphPredictor,
    InferencePredictor,
    load_predictor,
)
from paddle_chexnet.models.densenet import chexnet
from paddle_chexnet.utils.io import atomic_paddle_save


def _batch(n: int, size: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, size, size)).astype(np.float32)


def test_dygraph_predictor_is_sigmoid_of_logits():
    net = seeded_network()
    x = _batch(3, 32)
    probs = DygraphPredictor(net)(x)
    with paddle.no_grad():
        expected = paddle.nn.functional.sigmoid(net(paddle.to_tensor(x))).numpy()
    assert probs.shape == (3, 14) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-7)


def test_inference_matches_dygraph_tiny_variable_batch(tmp_path):
    net = seeded_network()
    fast = InferencePredictor.from_network(net, tmp_path / "export", crop=32, num_threads=1)
    slow = DygraphPredictor(net)
    assert fast.class_names == net.class_names
    for n in (5, 3, 1, 20):  # the batch size changes between calls
        x = _batch(n, 32, seed=n)
        np.testing.assert_allclose(fast(x), slow(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("micro_batch", [1, 4, 7, None])
def test_micro_batches_give_the_same_probabilities(tmp_path, micro_batch):
    net = seeded_network()
    x = _batch(13, 32, seed=4)
    whole = DygraphPredictor(net)(x)
    np.testing.assert_allclose(DygraphPredictor(net, micro_batch=micro_batch)(x), whole, rtol=0, atol=1e-6)
    fast = InferencePredictor.from_network(net, tmp_path / "e", crop=32, num_threads=1, micro_batch=micro_batch)
    np.testing.assert_allclose(fast(x), whole, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def chexnet_weights(tmp_path_factory):
    """A randomly initialised full CheXNet saved as .pdparams (speed and parity do not depend on the values)."""
    paddle.seed(3)
    net = chexnet()
    path = tmp_path_factory.mktemp("weights") / "random_chexnet.pdparams"
    atomic_paddle_save(net.state_dict(), path)
    return path


def test_full_chexnet_fast_path_matches_dygraph_within_1e5(chexnet_weights, tmp_path):
    fast = load_predictor(chexnet_weights, "inference", "cpu", crop=224, cache_dir=tmp_path, num_threads=2)
    slow = load_predictor(chexnet_weights, "dygraph", "cpu", crop=224)
    assert isinstance(fast, InferencePredictor) and isinstance(slow, DygraphPredictor)
    assert fast.micro_batch == 10 and slow.micro_batch == 10  # CPU default
    x = _batch(2, 224)
    diff = np.abs(fast(x) - slow(x)).max()
    assert diff <= 1e-5, f"Paddle Inference differs from the dynamic graph by {diff}"


def test_export_cache_reused_and_keyed_by_content(chexnet_weights, tmp_path, monkeypatch):
    first = cached_export(chexnet_weights, crop=32, cache_dir=tmp_path)
    assert first.parent.parent == tmp_path and "crop32" in first.parent.name
    assert paddle.__version__ in first.parent.name
    stamp = first.with_suffix(".pdiparams").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("exported again although the cache holds this model")

    monkeypatch.setattr("paddle_chexnet.inference.export.export_model", fail)
    again = cached_export(chexnet_weights, crop=32, cache_dir=tmp_path)
    assert again == first and again.with_suffix(".pdiparams").stat().st_mtime_ns == stamp
    monkeypatch.undo()
    # Same name, other content: a new key, so stale exports are never used.
    copy = tmp_path / "w" / chexnet_weights.name
    copy.parent.mkdir()
    copy.write_bytes(chexnet_weights.read_bytes()[:-1] + b"\x00")
    assert export_key(copy, 32) != export_key(chexnet_weights, 32)
    assert export_key(chexnet_weights, 224) != export_key(chexnet_weights, 32)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_default_cache_dir_env(monkeypatch, tmp_path):
    from paddle_chexnet.cpu.kernels import build_directory

    monkeypatch.delenv("PADDLE_CHEXNET_KERNEL_DIR", raising=False)
    monkeypatch.setenv("PADDLE_CHEXNET_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c" / "exports"
    assert build_directory() == tmp_path / "c" / "kernels"  # one cache root for both
    monkeypatch.delenv("PADDLE_CHEXNET_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "paddle_chexnet" / "exports"
    assert build_directory() == tmp_path / "x" / "paddle_chexnet" / "kernels"


def test_load_predictor_errors(tmp_path, chexnet_weights):
    with pytest.raises(FileNotFoundError, match=r"nothing.pdparams.*convert_torch.py.*train.py"):
        load_predictor(tmp_path / "nothing.pdparams")
    with pytest.raises(ValueError, match="unknown backend"):
        load_predictor(chexnet_weights, backend="onnx")
    with pytest.raises(ValueError, match="--backend dygraph"):
        load_predictor(chexnet_weights, backend="inference", device="gpu")
    bad = tmp_path / "bad.pdparams"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="bad.pdparams"):
        load_predictor(bad, backend="dygraph")

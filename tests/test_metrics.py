"""AUROC against scikit-learn: ties, one-valued classes, logits, paddle.Model, and the distributed gather."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import paddle
import pytest
from sklearn.metrics import roc_auc_score

from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.evaluation.metrics import (
    AUROC,
    UndefinedAUROCWarning,
    compute_auroc,
    mean_auroc,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sk(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return np.array([roc_auc_score(labels[:, c], scores[:, c]) for c in range(labels.shape[1])])


@pytest.mark.parametrize("n,seed", [(7, 0), (50, 1), (1000, 2)])
def test_equals_sklearn_random(n, seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 14)) < 0.3).astype(np.float32)
    labels[:2, :] = [[0], [1]]  # both values in every class
    scores = rng.random((n, 14)).astype(np.float32)
    np.testing.assert_allclose(compute_auroc(labels, scores), _sk(labels, scores), rtol=0, atol=1e-12)


def test_equals_sklearn_with_heavy_ties():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, (400, 5))
    scores = rng.integers(0, 4, (400, 5)) / 4.0  # only 4 distinct scores: ties everywhere
    ours = compute_auroc(labels, scores)
    np.testing.assert_allclose(ours, _sk(labels, scores), rtol=0, atol=1e-12)
    assert compute_auroc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5])[0] == 0.5


def test_known_values():
    assert compute_auroc([[0], [0], [1], [1]], [[0.1], [0.4], [0.35], [0.8]])[0] == pytest.approx(0.75)
    assert compute_auroc([0, 1], [0.9, 0.1])[0] == 0.0  # perfectly wrong is 0, not clipped


def test_one_valued_class_is_nan_with_warning_and_left_out_of_mean():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, (30, 3)).astype(float)
    labels[:, 1] = 0  # no positives
    scores = rng.random((30, 3))
    with pytest.warns(UndefinedAUROCWarning, match=r"1 class\(es\).*: b; reported as NaN"):
        per = compute_auroc(labels, scores, class_names=["a", "b", "c"])
    assert np.isnan(per[1]) and np.isfinite(per[[0, 2]]).all()
    np.testing.assert_allclose(per[[0, 2]], _sk(labels[:, [0, 2]], scores[:, [0, 2]]), atol=1e-12)
    mean, used = mean_auroc(per)
    assert used == 2 and mean == pytest.approx(per[[0, 2]].mean())
    assert mean_auroc({"a": float("nan")})[1] == 0 and np.isnan(mean_auroc({"a": float("nan")})[0])


def test_nan_labels_are_unknown():
    labels = np.array([[0.0], [1.0], [np.nan], [1.0]])
    scores = np.array([[0.2], [0.9], [0.0], [0.1]])
    assert compute_auroc(labels, scores)[0] == pytest.approx(roc_auc_score([0, 1, 1], [0.2, 0.9, 0.1]))


def test_bad_inputs():
    with pytest.raises(ValueError, match="must both be"):
        compute_auroc(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        compute_auroc([[0], [2]], [[0.1], [0.2]])
    with pytest.raises(ValueError, match="NaN or infinity"):
        compute_auroc([[0], [1]], [[0.1], [np.nan]])


def test_metric_batches_logits_and_tensors():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, (64, 14)).astype(np.float32)
    logits = rng.normal(size=(64, 14)).astype(np.float32)
    m = AUROC()
    assert m.name() == ["auroc"]
    for i in range(0, 64, 10):
        m.update(paddle.to_tensor(logits[i:i + 10]), labels[i:i + 10])
    expected = _sk(labels, 1 / (1 + np.exp(-logits.astype(np.float64))))
    assert m.accumulate() == pytest.approx(expected.mean(), abs=1e-12)
    assert m.n_used == 14
    per = m.per_class()
    assert list(per) == list(CLASS_NAMES)
    np.testing.assert_allclose(list(per.values()), expected, atol=1e-12)
    m.update(logits[:3] * 0 + 5, labels[:3])  # new data invalidates the cached result
    assert m.accumulate() != pytest.approx(expected.mean(), abs=1e-12)
    m.reset()
    assert np.isnan(m.accumulate()) and m.n_used == 0
    with pytest.raises(ValueError, match=r"shape \[B, 14\]"):
        m.update(np.zeros((2, 13)), np.zeros((2, 13)))


def test_metric_in_paddle_model():
    """paddle.Model calls compute, then update with NumPy, and logs accumulate() under name()."""
    paddle.seed(0)
    rng = np.random.default_rng(6)
    x = rng.normal(size=(48, 5)).astype(np.float32)
    y = (x[:, :2] + 0.5 * rng.normal(size=(48, 2)) > 0).astype(np.float32)

    class Data(paddle.io.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i], y[i]

    net = paddle.nn.Linear(5, 2)
    model = paddle.Model(net)
    model.prepare(
        paddle.optimizer.SGD(0.1, parameters=net.parameters()),
        paddle.nn.BCEWithLogitsLoss(),
        metrics=[AUROC(class_names=["p", "q"])],
    )
    result = model.evaluate(Data(), batch_size=16, verbose=0)
    with paddle.no_grad():
        logits = net(paddle.to_tensor(x)).numpy()
    assert result["auroc"] == pytest.approx(_sk(y, logits).mean(), abs=1e-9)
    model.fit(Data(), epochs=1, batch_size=16, verbose=0)  # the train loop too


_DIST_SCRIPT = """
import json, sys
import numpy as np
import paddle.distributed as dist
sys.path.insert(0, {repo!r})
from paddle_chexnet.evaluation.metrics import AUROC

def worker():
    dist.init_parallel_env()
    rank = dist.get_rank()
    rng = np.random.default_rng(rank)
    n = 9 if rank == 0 else 4
    preds, labels = rng.random((n, 3)), rng.integers(0, 2, (n, 3))
    np.save({out!r} + f"/rows{{rank}}.npy", np.concatenate([preds, labels], 1))
    m = AUROC(class_names=["a", "b", "c"])
    m.update(preds, labels)
    empty = AUROC(class_names=["a", "b", "c"])  # a rank with no rows must not break the gather
    if rank == 0:
        empty.update(preds, labels)
    result = {{"mean": m.accumulate(), "per": m.per_class(), "ws": dist.get_world_size(),
               "empty": empty.accumulate()}}
    with open({out!r} + f"/result{{rank}}.json", "w") as fh:
        json.dump(result, fh)

if __name__ == "__main__":
    dist.spawn(worker, nprocs=2, backend="gloo")
"""


def test_distributed_gather_two_processes(tmp_path):
    script = tmp_path / "dist_auroc.py"
    script.write_text(textwrap.dedent(_DIST_SCRIPT.format(repo=REPO, out=str(tmp_path))))
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = np.concatenate([np.load(tmp_path / f"rows{r}.npy") for r in (0, 1)])
    expected = _sk(rows[:, 3:], rows[:, :3])
    rank0_only = np.load(tmp_path / "rows0.npy")
    for rank in (0, 1):
        result = json.loads((tmp_path / f"result{rank}.json").read_text())
        assert result["ws"] == 2
        np.testing.assert_allclose(list(result["per"].values()), expected, atol=1e-12)
        assert result["mean"] == pytest.approx(expected.mean(), abs=1e-12)
        assert result["empty"] == pytest.approx(_sk(rank0_only[:, 3:], rank0_only[:, :3]).mean(), abs=1e-12)


def test_no_warning_when_all_defined():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compute_auroc([[0], [1]], [[0.3], [0.4]])

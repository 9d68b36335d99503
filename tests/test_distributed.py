"""Two CPU processes on gloo (``paddle.distributed.launch``) against one process doing the same arithmetic.

What "equal" means with BatchNorm: each process normalises its half of the
global batch with that half's statistics, so a single process running the
*whole* batch at once computes a different function. The single-process
reference therefore runs the two halves separately in training mode, sums
``loss / 2`` of each (``paddle.DataParallel`` averages the two processes'
gradients, which is the same thing) and then takes one optimizer step.
Parameters must then agree to 1e-5. BatchNorm running statistics are updated
per process; the training code broadcasts rank 0's before validation, so both
ranks must hold the statistics of the *first* half.

Validation must cover the whole set once: 7 images over 2 processes means one
padded duplicate, which must not count. The logged loss and AUROC are compared
with a single-process evaluation of all 7 images.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddle_chexnet.cpu.layers import use_cpu_training_layers
from paddle_chexnet.data.labels import CLASS_NAMES
from paddle_chexnet.data.sampling import SeededBatchSampler
from paddle_chexnet.engine.config import TrainConfig
from paddle_chexnet.engine.losses import make_loss
from paddle_chexnet.engine.optim import build_optimizer, build_scheduler
from paddle_chexnet.engine.trainer import build_datasets, build_network, seed_everything
from paddle_chexnet.evaluation.metrics import AUROC

REPO = Path(__file__).resolve().parents[1]


def _launch(root: Path, config: TrainConfig, **extra_env: str) -> None:
    """``paddle.distributed.launch --nproc_per_node 2`` of tests/distributed_worker.py with ``config``."""
    (root / "config.json").write_text(json.dumps(config.to_dict()))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra_env)
    for key in ("PADDLE_TRAINERS_NUM", "PADDLE_TRAINER_ID", "PADDLE_TRAINER_ENDPOINTS", "PADDLE_CURRENT_ENDPOINT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
           "--log_dir", str(root / "launch"), str(REPO / "tests" / "distributed_worker.py"),
           str(root / "config.json"), str(root)]
    done = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        logs = "\n".join(p.read_text()[-3000:] for p in sorted((root / "launch").glob("workerlog.*")))
        pytest.fail(f"distributed run failed ({done.returncode}):\n{done.stdout[-2000:]}\n"
                    f"{done.stderr[-2000:]}\n{logs}")


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, Path]:
    from conftest import make_split_dataset as make_dataset

    root = tmp_path_factory.mktemp("dist")
    data = make_dataset(root / "data", n_train=12, n_val=7)
    config = TrainConfig(
        data_dir=str(data), arch="tiny", resize=36, crop=32, batch_size=2, num_workers=0, epochs=1,
        max_steps_per_epoch=1, schedule="constant", lr=1e-2, early_stopping_patience=0, device="cpu",
        progress=False, output_dir=str(root / "outputs"), log_dir=str(root / "logs"),
    )
    _launch(root, config)
    return config, root


def test_two_processes_read_disjoint_shares_of_one_image_cache(tmp_path: Path) -> None:
    """Several processes (or machines, on shared storage) use one cache; each reads only its share of a batch."""
    from conftest import make_split_dataset as make_dataset

    from paddle_chexnet.cli import build_cache

    data = make_dataset(tmp_path / "data", n_train=12, n_val=7)
    assert build_cache.entry(["--image-dir", str(data / "images"), "--output", str(tmp_path / "cache"),
                              "--size", "36", "--no-progress"]) == 0
    config = TrainConfig(
        data_dir=str(data), arch="tiny", resize=36, crop=32, batch_size=2, num_workers=0, epochs=1,
        schedule="constant", early_stopping_patience=0, device="cpu", progress=False, cache=str(tmp_path / "cache"),
        output_dir=str(tmp_path / "outputs"), log_dir=str(tmp_path / "logs"),
    )
    _launch(tmp_path, config, RECORD_CACHE_READS="1")
    reads = [[k for k in (tmp_path / f"reads{rank}.txt").read_text().split() if k.startswith("train_")]
             for rank in (0, 1)]
    assert len(reads[0]) == len(reads[1]) == 6  # 12 training images, 2 per process per step
    assert not set(reads[0]) & set(reads[1])
    assert set(reads[0]) | set(reads[1]) == {f"train_{i:03d}.png" for i in range(12)}


def load(path: Path) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in paddle.load(str(path)).items()}


def batch(dataset, indices) -> tuple[paddle.Tensor, paddle.Tensor]:
    items = [dataset[int(i)] for i in indices]
    return (paddle.to_tensor(np.stack([x for x, _ in items])), paddle.to_tensor(np.stack([y for _, y in items])))


def single_process_step(config: TrainConfig) -> tuple[paddle.nn.Layer, dict[str, np.ndarray]]:
    seed_everything(config.seed)
    train_set, _ = build_datasets(config)
    net = build_network(config, len(CLASS_NAMES), CLASS_NAMES)
    use_cpu_training_layers(net)  # as the trainer does on the CPU: the kernels' rounding in both
    optimizer = build_optimizer("adam", net.parameters(), build_scheduler("constant", config.lr))
    loss_fn = make_loss("none")
    train_set.set_epoch(0)
    sampler = SeededBatchSampler(len(train_set), config.batch_size, seed=config.seed, num_replicas=2, rank=0)
    sampler.set_epoch(0)
    order = sampler.global_order()
    net.train()
    first_half_stats = None
    for half in (order[0:2], order[2:4]):  # rank 0's and rank 1's share of global batch 0
        x, y = batch(train_set, half)
        (loss_fn(net(x), y) / 2).backward()
        if first_half_stats is None:  # BatchNorm running statistics are non-trainable parameters in Paddle
            first_half_stats = {n: p.numpy().copy() for n, p in net.state_dict().items() if p.stop_gradient}
    optimizer.step()
    return net, first_half_stats


def test_ranks_equal_each_other_and_a_single_process_step(two_process_run) -> None:
    config, root = two_process_run
    rank0, rank1 = load(root / "rank0.pdparams"), load(root / "rank1.pdparams")
    assert json.loads((root / "rank0.json").read_text())["world_size"] == 2
    # --device cpu: gloo, also where a CUDA build of Paddle would pick NCCL (engine.distributed.use_cpu_backend)
    assert {json.loads((root / f"rank{r}.json").read_text())["backend"] for r in (0, 1)} == {"gloo"}
    for key in rank0:
        np.testing.assert_allclose(rank1[key], rank0[key], rtol=0, atol=1e-7, err_msg=key)

    reference, first_half_stats = single_process_step(config)
    initial = build_network(config, len(CLASS_NAMES), CLASS_NAMES).state_dict()  # another init: not vacuous
    moved = 0.0
    trainable = [(n, p) for n, p in reference.named_parameters() if not p.stop_gradient]
    assert len(trainable) + len(first_half_stats) == len(rank0)
    for name, param in trainable:
        np.testing.assert_allclose(rank0[name], param.numpy(), rtol=0, atol=1e-5, err_msg=name)
        moved = max(moved, float(np.abs(param.numpy() - initial[name].numpy()).max()))
    assert moved > 1e-3
    for name, value in first_half_stats.items():  # rank 0's statistics, broadcast to rank 1
        np.testing.assert_allclose(rank1[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(rank0[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    # the checkpoint rank 0 wrote holds the same weights
    saved = load(Path(config.checkpoint_dir) / "last.pdparams")
    for key in rank0:
        np.testing.assert_array_equal(saved[key], rank0[key], err_msg=key)


def test_validation_covers_the_whole_set_once(two_process_run) -> None:
    config, root = two_process_run
    _, val_set = build_datasets(config)
    assert len(val_set) == 7  # odd: one padded duplicate across 2 processes
    net = build_network(config, len(CLASS_NAMES), CLASS_NAMES)
    net.set_state_dict(paddle.load(str(root / "rank0.pdparams")))
    net.eval()
    x, y = batch(val_set, range(len(val_set)))
    with paddle.no_grad():
        logits = net(x)
    expected_loss = float(make_loss("none")(logits, y))
    metric = AUROC(class_names=CLASS_NAMES, gather=False)
    metric.update(logits.numpy(), y.numpy())
    expected_auroc = metric.accumulate()

    for rank in (0, 1):  # every process computed the same whole-set figures
        row = json.loads((root / f"rank{rank}.json").read_text())["history"][0]
        assert row["val_loss"] == pytest.approx(expected_loss, rel=1e-5)
        assert row["mean_auroc"] == pytest.approx(expected_auroc, abs=1e-6)
    csv_rows = (Path(config.run_log_dir) / "history.csv").read_text().splitlines()
    assert len(csv_rows) == 2  # header + one epoch, written once

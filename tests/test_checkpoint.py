"""Checkpoints: atomic writes under a simulated crash, consistency check, optimizer state across name changes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import paddle
import pytest

import paddle_chexnet.utils.io as io_utils
from paddle_chexnet.engine.checkpoint import (
    CheckpointError,
    checkpoint_files,
    find_resumable,
    load_checkpoint,
    optimizer_state,
    read_checkpoint_meta,
    save_checkpoint,
    tidy_checkpoint_dir,
)
from paddle_chexnet.engine.optim import build_optimizer, build_scheduler
from paddle_chexnet.models.densenet import DenseNet


def tiny_net() -> DenseNet:
    return DenseNet(growth_rate=4, block_config=(1, 2), num_init_features=8, bn_size=2, num_classes=3)


def trained(steps: int, seed: int = 0) -> tuple[DenseNet, paddle.optimizer.Optimizer]:
    paddle.seed(seed)
    net = tiny_net()
    optimizer = build_optimizer("adam", net.parameters(), build_scheduler("plateau", 1e-2))
    x = paddle.to_tensor(np.random.default_rng(seed).standard_normal((2, 3, 32, 32)).astype("float32"))
    for _ in range(steps):
        net(x).mean().backward()
        optimizer.step()
        optimizer.clear_grad()
    return net, optimizer


def params(net: paddle.nn.Layer) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in net.state_dict().items()}


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    net, optimizer = trained(2)
    save_checkpoint(tmp_path, "last", net, optimizer, {"epoch": 4, "metric": {"auroc": np.float32(0.5)}})
    meta = json.loads((tmp_path / "last.json").read_text())
    assert meta["epoch"] == 4 and meta["metric"]["auroc"] == 0.5
    # the JSON names the stored files it was committed with; last.* are the same files under the names users see
    assert sorted(Path(f).suffix for f in meta["files"]) == [".pdopt", ".pdparams"]
    assert all(f.startswith(".store/last-") for f in meta["files"])
    for relative in meta["files"]:
        assert (tmp_path / relative).samefile(tmp_path / ("last" + Path(relative).suffix))
    other = tiny_net()
    load_checkpoint(tmp_path, "last", other)
    for key, value in params(net).items():
        np.testing.assert_array_equal(params(other)[key], value, err_msg=key)


def test_optimizer_state_loads_into_a_network_with_other_generated_names(tmp_path: Path) -> None:
    """Paddle names parameters conv2d_N.w_0 by creation order; a second network in one process gets other N."""
    net, optimizer = trained(2)
    save_checkpoint(tmp_path, "last", net, optimizer, {"epoch": 0})
    saved = paddle.load(str(tmp_path / "last.pdopt"))
    assert "features.conv0.weight_moment1_0" in saved and not any(k.startswith("conv2d_") for k in saved)

    restored_net = tiny_net()
    assert restored_net.features.conv0.weight.name != net.features.conv0.weight.name
    restored_opt = build_optimizer("adam", restored_net.parameters(), build_scheduler("plateau", 1e-2))
    load_checkpoint(tmp_path, "last", restored_net, restored_opt)
    # one more identical step on both: equal only if moments, beta powers and lr were restored
    x = paddle.to_tensor(np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype("float32"))
    for n, o in ((net, optimizer), (restored_net, restored_opt)):
        n(x).mean().backward()
        o.step()
        o.clear_grad()
    for key, value in params(net).items():
        np.testing.assert_allclose(params(restored_net)[key], value, rtol=0, atol=1e-7, err_msg=key)
    assert optimizer_state(restored_net, restored_opt).keys() == optimizer_state(net, optimizer).keys()


class Crash(BaseException):
    """Stands for the process being killed (not an Exception, so nothing catches it)."""


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_crash_while_writing_leaves_the_previous_checkpoint_loadable(tmp_path: Path, monkeypatch) -> None:
    old_net, old_opt = trained(1)
    save_checkpoint(tmp_path, "last", old_net, old_opt, {"epoch": 0})
    before = _files(tmp_path)

    new_net, new_opt = trained(3, seed=1)
    real_save = paddle.save

    def half_then_crash(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])  # the disk holds half a file
        raise Crash()

    monkeypatch.setattr(paddle, "save", half_then_crash)
    with pytest.raises(Crash):
        save_checkpoint(tmp_path, "last", new_net, new_opt, {"epoch": 1})
    monkeypatch.undo()

    assert _files(tmp_path) == before  # untouched, no temp file left
    restored = tiny_net()
    assert load_checkpoint(tmp_path, "last", restored)["epoch"] == 0
    for key, value in params(old_net).items():
        np.testing.assert_array_equal(params(restored)[key], value, err_msg=key)


def test_crash_before_the_json_keeps_last_whole(tmp_path: Path, monkeypatch) -> None:
    """Killed after both binary files were written but before the JSON: ``last`` is the previous one, whole.

    Before the JSON named its files, the same kill left a new last.pdparams beside the old last.json, and
    resuming fell back to an older ``best``.
    """
    net0, opt0 = trained(1)
    save_checkpoint(tmp_path, "best", net0, opt0, {"epoch": 0})
    save_checkpoint(tmp_path, "last", net0, opt0, {"epoch": 0})
    net1, opt1 = trained(2, seed=1)
    save_checkpoint(tmp_path, "last", net1, opt1, {"epoch": 1})
    before = params(net1)

    net2, opt2 = trained(3, seed=2)
    import paddle_chexnet.engine.checkpoint as checkpoint

    def crash(path, text):
        raise Crash()

    monkeypatch.setattr(checkpoint, "atomic_write_text", crash)  # killed after .pdparams/.pdopt, before .json
    with pytest.raises(Crash):
        save_checkpoint(tmp_path, "last", net2, opt2, {"epoch": 2})
    monkeypatch.undo()

    assert find_resumable(tmp_path) == "last"  # not 'best': last is whole
    restored = tiny_net()
    assert load_checkpoint(tmp_path, "last", restored)["epoch"] == 1
    for key, value in before.items():
        np.testing.assert_array_equal(params(restored)[key], value, err_msg=key)
    # the orphaned new files are removed at the next start
    assert len(list((tmp_path / ".store").iterdir())) == 6
    tidy_checkpoint_dir(tmp_path)
    assert len(list((tmp_path / ".store").iterdir())) == 4


def test_a_changed_file_is_detected_and_resume_falls_back(tmp_path: Path) -> None:
    net0, opt0 = trained(1)
    save_checkpoint(tmp_path, "best", net0, opt0, {"epoch": 0})
    save_checkpoint(tmp_path, "last", net0, opt0, {"epoch": 0})
    stored = checkpoint_files(tmp_path, "last")["params"]
    data = bytearray(stored.read_bytes())
    data[-1] ^= 1
    stored.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        read_checkpoint_meta(tmp_path, "last")
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        load_checkpoint(tmp_path, "last", tiny_net())
    assert find_resumable(tmp_path) == "best"


def test_tidy_removes_stale_temporary_files_and_repairs_the_visible_names(tmp_path: Path) -> None:
    net0, opt0 = trained(1)
    save_checkpoint(tmp_path, "last", net0, opt0, {"epoch": 0})
    stale = [tmp_path / ".last.pdopt.abc123.tmp", tmp_path / ".store" / ".last-1.pdparams.x.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    (tmp_path / "last.pdparams").unlink()  # killed between the JSON and the visible names
    removed = tidy_checkpoint_dir(tmp_path)
    assert sorted(removed) == sorted(stale) and not any(p.exists() for p in stale)
    assert (tmp_path / "last.pdparams").samefile(checkpoint_files(tmp_path, "last")["params"])


def test_incomplete_checkpoint_names_the_missing_file(tmp_path: Path) -> None:
    net, opt = trained(1)
    save_checkpoint(tmp_path, "last", net, opt, {"epoch": 0})
    stored_opt = checkpoint_files(tmp_path, "last")["opt"]
    stored_opt.unlink()
    with pytest.raises(CheckpointError, match=stored_opt.name):
        read_checkpoint_meta(tmp_path, "last")
    with pytest.raises(CheckpointError, match="no consistent checkpoint"):
        find_resumable(tmp_path)
    assert find_resumable(tmp_path / "elsewhere") is None


def test_atomic_helpers_used_for_every_file(tmp_path: Path, monkeypatch) -> None:
    written = []
    real = io_utils.atomic_path

    def spy(path):
        written.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(io_utils, "atomic_path", spy)
    net, opt = trained(1)
    save_checkpoint(tmp_path, "best", net, opt, {"epoch": 0})
    # both binary files under new names, then the JSON naming them (the commit), then the names users see
    assert [Path(w).suffix for w in written[:2]] == [".pdparams", ".pdopt"] and written[0].startswith("best-")
    assert written[2:] == ["best.json", "best.pdparams", "best.pdopt"]


def test_non_finite_weights_are_never_saved(tmp_path: Path) -> None:
    from paddle_chexnet.engine.checkpoint import NonFiniteCheckpointError

    net, opt = trained(1)
    save_checkpoint(tmp_path, "last", net, opt, {"epoch": 0})
    before = _files(tmp_path)
    weight = net.features.conv0.weight
    weight.set_value(paddle.full(weight.shape, float("nan")))
    with pytest.raises(NonFiniteCheckpointError, match=r"weights hold NaN or infinity in 1 tensor.*features.conv0"):
        save_checkpoint(tmp_path, "last", net, opt, {"epoch": 1})
    assert _files(tmp_path) == before


_SAVER = r"""
import sys
import paddle
from paddle_chexnet.engine.checkpoint import save_checkpoint
from paddle_chexnet.models.densenet import DenseNet
from paddle_chexnet.engine.optim import build_optimizer, build_scheduler

net = DenseNet(growth_rate=4, block_config=(1, 2), num_init_features=8, bn_size=2, num_classes=3)
opt = build_optimizer("adam", net.parameters(), build_scheduler("constant", 1e-3))
for epoch in range(10**6):
    for value in net.state_dict().values():
        value.set_value(paddle.full(value.shape, float(epoch), dtype=value.dtype))
    save_checkpoint(sys.argv[1], "last", net, opt, {"epoch": epoch})
    if epoch % 2 == 0:
        save_checkpoint(sys.argv[1], "best", net, opt, {"epoch": epoch})
    print(epoch, flush=True)
"""


@pytest.mark.parametrize("delay", [0.05, 0.21, 0.37])
def test_killed_at_any_moment_a_consistent_checkpoint_remains(tmp_path: Path, delay: float) -> None:
    """SIGKILL a process that saves checkpoints in a loop; what is left must load and agree with its JSON."""
    import os
    import signal
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(tmp_path)], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "0"  # one full save done
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    name = find_resumable(tmp_path)
    assert name in ("last", "best")
    net = tiny_net()
    meta = load_checkpoint(tmp_path, name, net, build_optimizer("adam", net.parameters(),
                                                                build_scheduler("constant", 1e-3)))
    for key, value in net.state_dict().items():  # the weights belong to the epoch the JSON names
        np.testing.assert_array_equal(value.numpy(), np.full(value.shape, meta["epoch"], dtype="float32"), err_msg=key)

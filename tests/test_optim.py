"""The optimizers against PyTorch's: Adam and SGD with momentum, with and without L2 weight decay."""
from __future__ import annotations

import numpy as np
import paddle
import pytest

from paddle_chexnet.engine.optim import build_optimizer, build_scheduler

STEPS = 4


def _initial_weights_and_batches() -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(6, 5)), rng.normal(size=5), rng.normal(size=(5, 3)), rng.normal(size=3)]
    batches = [rng.normal(size=(4, 6)) for _ in range(STEPS)]
    return [w.astype("float32") for w in weights], [b.astype("float32") for b in batches]


def _train(framework: str, name: str, weight_decay: float) -> np.ndarray:
    """A 6->5->3 two-layer net trained STEPS steps from the same weights and batches; the final weights."""
    (w1, b1, w2, b2), batches = _initial_weights_and_batches()
    if framework == "paddle":
        params = [paddle.create_parameter(list(a.shape), "float32",
                                          default_initializer=paddle.nn.initializer.Assign(a)) for a in (w1, b1, w2, b2)]
        opt = build_optimizer(name, params, build_scheduler("constant", 0.01), weight_decay=weight_decay)
        for x in batches:
            h = paddle.nn.functional.relu(paddle.to_tensor(x) @ params[0] + params[1])
            loss = ((h @ params[2] + params[3]) ** 2).mean()
            loss.backward()
            opt.step()
            opt.clear_grad()
        return np.concatenate([p.numpy().ravel() for p in params])
    import torch

    params = [torch.tensor(a, requires_grad=True) for a in (w1, b1, w2, b2)]
    if name == "adam":
        opt = torch.optim.Adam(params, lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=weight_decay)
    for x in batches:
        h = torch.relu(torch.from_numpy(x) @ params[0] + params[1])
        loss = ((h @ params[2] + params[3]) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    return np.concatenate([p.detach().numpy().ravel() for p in params])


@pytest.mark.torch
@pytest.mark.parametrize("name", ["adam", "sgd"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_optimizer_steps_match_torch(name, weight_decay):
    pytest.importorskip("torch")
    paddle_weights = _train("paddle", name, weight_decay)
    torch_weights = _train("torch", name, weight_decay)
    start = np.concatenate([w.ravel() for w in _initial_weights_and_batches()[0]])
    assert np.abs(paddle_weights - start).max() > 1e-3  # the steps did move the weights
    np.testing.assert_allclose(paddle_weights, torch_weights, rtol=0, atol=2e-6)


def test_adam_is_multi_tensor():
    """Paddle's per-parameter CPU adam kernel slows every later MKL product ~3.5x (optim.build_optimizer)."""
    net = paddle.nn.Linear(3, 2)
    opt = build_optimizer("adam", net.parameters(), 1e-3)
    assert opt._use_multi_tensor

"""Optimizers and learning-rate schedules, as the references train CheXNet.

* The paper: Adam (lr 1e-3, betas 0.9/0.999), learning rate divided by 10 each
  time the validation loss plateaus (``schedule='plateau'``).
* jrzech's reproduction: SGD with momentum 0.9 (``optimizer='sgd'``).
* Paddle-CheXNet: a piecewise schedule, lr times 0.1 at given epochs
  (``schedule='piecewise'``).

Every schedule is a ``paddle.optimizer.lr.LRScheduler`` stepped once per epoch
(after validation), so its state travels inside ``optimizer.state_dict()`` and
a resumed run continues it exactly. Paddle's ``paddle.callbacks.ReduceLROnPlateau``
is deliberately not used: it keeps its counters in the callback, where a
checkpoint does not see them, and only works with a float learning rate.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import paddle

OPTIMIZERS = ("adam", "sgd")


SCHEDULES = ("plateau", "piecewise", "constant")


def build_scheduler(
    schedule: str,
    lr: float,
    plateau_factor: float = 0.1,
    plateau_patience: int = 0,
    milestones: Sequence[int] = (10, 15, 18),
    gamma: float = 0.1,
) -> paddle.optimizer.lr.LRScheduler:
    """An epoch-level learning-rate schedule.

    Args:
        schedule (str): ``'plateau'`` (divide by ``1 / plateau_factor`` when the validation loss
            stops improving), ``'piecewise'`` (times ``gamma`` at each epoch in ``milestones``) or
            ``'constant'``.
        lr (float): the initial learning rate.
        plateau_factor (float, optional): multiplier on a plateau. Default: 0.1.
        plateau_patience (int, optional): epochs without improvement tolerated before
            reducing; 0 reduces after the first epoch that does not improve, as the paper. Default: 0.
        milestones (Sequence[int], optional): epochs (0-based, counted after each finished
            epoch) at which the piecewise schedule multiplies by ``gamma``. Default: (10, 15, 18).
        gamma (float, optional): the piecewise multiplier. Default: 0.1.
    """
    if schedule == "plateau":
        return paddle.optimizer.lr.ReduceOnPlateau(
            learning_rate=lr, mode="min", factor=plateau_factor, patience=plateau_patience, verbose=False
        )
    if schedule == "piecewise":
        milestones = sorted(int(m) for m in milestones)
        if not milestones:
            raise ValueError("schedule 'piecewise' needs at least one milestone epoch (--milestones 10 20)")
        values = [lr * gamma**i for i in range(len(milestones) + 1)]
        return paddle.optimizer.lr.PiecewiseDecay(boundaries=milestones, values=values)
    if schedule == "constant":
        return paddle.optimizer.lr.PiecewiseDecay(boundaries=[1 << 30], values=[lr, lr])
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


def build_optimizer(
    name: str,
    parameters: Iterable[paddle.Tensor],
    learning_rate: float | paddle.optimizer.lr.LRScheduler,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
) -> paddle.optimizer.Optimizer:
    """Adam or SGD with momentum; ``weight_decay`` is L2 added to the gradient, as in torch's Adam/SGD.

    Args:
        name (str): ``'adam'`` or ``'sgd'``.
        parameters (Iterable[paddle.Tensor]): the network's parameters.
        learning_rate (float | LRScheduler): the rate or its schedule.
        weight_decay (float, optional): L2 coefficient. Default: 0.0.
        momentum (float, optional): SGD momentum. Default: 0.9.
        betas (tuple[float, float], optional): Adam's betas. Default: (0.9, 0.999).
    """
    decay = paddle.regularizer.L2Decay(weight_decay) if weight_decay > 0 else None
    parameters = list(parameters)
    if name == "adam":
        # Multi-tensor Adam (one merged_adam kernel for all parameters): the same update to float
        # rounding (tests/test_optim.py checks it against torch), and it avoids a CPU trap. With MKL's
        # generic code path (an AMD processor and MKL_DEBUG_CPU_TYPE unset or empty) Paddle's
        # per-parameter CPU adam kernel was seen, while profiling, to leave the calling thread in a
        # state where every later matrix product ran several times slower (not with SGD or
        # merged_adam). On MKL's AVX2 path the two measure alike (BENCHMARKS.md).
        return paddle.optimizer.Adam(
            learning_rate=learning_rate, beta1=betas[0], beta2=betas[1], epsilon=1e-8,
            parameters=parameters, weight_decay=decay, use_multi_tensor=True,
        )
    if name == "sgd":
        return paddle.optimizer.Momentum(
            learning_rate=learning_rate, momentum=momentum, parameters=parameters, weight_decay=decay
        )
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def current_lr(optimizer: paddle.optimizer.Optimizer) -> float:
    """The learning rate the optimizer will use for its next step."""
    return float(optimizer.get_lr())

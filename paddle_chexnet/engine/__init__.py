"""Training: ``run_training(TrainConfig(...))`` and its pieces.

* ``config``: ``TrainConfig``, the settings of a run, from which ``train.py``'s flags are made.
* ``trainer``: ``run_training``, the wiring of ``paddle.Model`` (datasets, network, optimizer, callbacks).
* ``callbacks``: epochs, validation metrics, schedule, early stopping, logs, checkpoints, guards.
* ``checkpoint``: atomic ``.pdparams`` + ``.pdopt`` + ``.json`` checkpoints and resuming.
* ``losses``, ``optim``: weighted BCE on logits; Adam/SGD and the epoch-level schedules.
* ``distributed``: what a run under ``paddle.distributed.launch`` needs besides Paddle's own engine.
"""

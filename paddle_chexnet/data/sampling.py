"""Reproducible data order and augmentation: everything random is a function of (seed, epoch, index).

A resumed run must see exactly the batches and the crops an uninterrupted run
would have seen, whatever the number of data-loader workers. So nothing here
draws from a global generator that advances with the run:

* :class:`SeededBatchSampler` shuffles with ``numpy.random.default_rng([seed, epoch])``
  and splits each global batch between the processes of a distributed run
  (the same layout as ``paddle.io.DistributedBatchSampler``: process ``r``
  takes the ``r``-th slice of every global batch);
* :class:`SeededAugmentation` gives the training transform a generator
  seeded by ``[seed, epoch, index]`` before each image is transformed.

Call ``set_epoch(epoch)`` on both before each epoch (the training callbacks do).
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import paddle


class SeededBatchSampler(paddle.io.BatchSampler):
    """Batches of indices for one process, in an order fixed by ``(seed, epoch)``.

    The index list of an epoch (shuffled or not) is padded with its first
    indices to a multiple of ``num_replicas``, cut into global batches of
    ``batch_size * num_replicas``, and process ``rank`` takes its slice of each.
    With one process this is an ordinary seeded shuffling batch sampler.

    Args:
        num_samples (int): the dataset's length.
        batch_size (int): images per step *per process*.
        shuffle (bool, optional): shuffle every epoch. Default: True.
        seed (int, optional): the run's seed. Default: 0.
        drop_last (bool, optional): drop a last global batch smaller than the others. Default: False.
        num_replicas (int, optional): processes; ``None`` asks ``paddle.distributed``. Default: None.
        rank (int, optional): this process; ``None`` asks ``paddle.distributed``. Default: None.

    Examples:
        >>> sampler = SeededBatchSampler(10, batch_size=4, seed=0, num_replicas=1, rank=0)
        >>> sampler.set_epoch(3)
        >>> sum(len(b) for b in sampler)
        10
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if num_samples < 1:
            raise ValueError("the dataset is empty")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.num_replicas = paddle.distributed.get_world_size() if num_replicas is None else int(num_replicas)
        self.rank = paddle.distributed.get_rank() if rank is None else int(rank)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is outside 0..{self.num_replicas - 1}")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the order of epoch ``epoch`` (0-based)."""
        self.epoch = int(epoch)

    def global_order(self) -> np.ndarray:
        """All processes' indices of this epoch, padded, in global-batch order."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        total = int(math.ceil(self.num_samples / self.num_replicas)) * self.num_replicas
        if total > self.num_samples:
            order = np.concatenate([order, np.resize(order, total - self.num_samples)])
        return order

    def __iter__(self) -> Iterator[list[int]]:
        order = self.global_order()
        global_batch = self.batch_size * self.num_replicas
        for start in range(0, len(order), global_batch):
            chunk = order[start:start + global_batch]
            if self.drop_last and len(chunk) < global_batch:
                return
            share = len(chunk) // self.num_replicas
            yield chunk[self.rank * share:(self.rank + 1) * share].tolist()

    def __len__(self) -> int:
        total = int(math.ceil(self.num_samples / self.num_replicas)) * self.num_replicas
        global_batch = self.batch_size * self.num_replicas
        return total // global_batch if self.drop_last else int(math.ceil(total / global_batch))


class SeededAugmentation(paddle.io.Dataset):
    """Wrap a dataset whose ``transform`` has an ``rng`` attribute; seed it per ``(seed, epoch, index)``.

    Works with :class:`~paddle_chexnet.data.datasets.ChestXray14Dataset` and
    :class:`~paddle_chexnet.data.transforms.TrainTransform`. Data-loader workers get
    a copy of this object when an epoch's iteration starts, so set the epoch
    before iterating (workers are not persistent).

    Args:
        dataset (paddle.io.Dataset): the dataset; ``dataset.transform.rng`` is replaced per item.
        seed (int, optional): the run's seed. Default: 0.
    """

    def __init__(self, dataset: paddle.io.Dataset, seed: int = 0) -> None:
        super().__init__()
        if not hasattr(getattr(dataset, "transform", None), "rng"):
            raise TypeError(
                f"{type(dataset).__name__}.transform has no 'rng' attribute to seed; use "
                "paddle_chexnet.transforms.TrainTransform (or a transform with an rng attribute)"
            )
        self.dataset = dataset
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation of epoch ``epoch`` (0-based)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        self.dataset.transform.rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        return self.dataset[index]

    def __getattr__(self, name: str):
        # labels, names, class_names ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

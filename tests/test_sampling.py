"""Seeded batch sampler and augmentation: deterministic per (seed, epoch), a partition across processes."""
from __future__ import annotations

import numpy as np
import pytest

from paddle_chexnet.data.sampling import SeededAugmentation, SeededBatchSampler
from paddle_chexnet.data.transforms import TrainTransform


def batches(n, bs, epoch, seed=0, replicas=1, rank=0, **kw):
    sampler = SeededBatchSampler(n, bs, seed=seed, num_replicas=replicas, rank=rank, **kw)
    sampler.set_epoch(epoch)
    return list(sampler), len(sampler)


def test_same_seed_and_epoch_same_order_other_epoch_other_order() -> None:
    a, _ = batches(20, 4, epoch=3)
    b, _ = batches(20, 4, epoch=3)
    c, _ = batches(20, 4, epoch=4)
    d, _ = batches(20, 4, epoch=3, seed=1)
    assert a == b and a != c and a != d
    assert sorted(i for batch in a for i in batch) == list(range(20))


@pytest.mark.parametrize("n, bs, replicas", [(10, 2, 2), (11, 3, 2), (7, 4, 3), (4, 1, 2)])
def test_processes_split_every_global_batch(n: int, bs: int, replicas: int) -> None:
    per_rank = [batches(n, bs, epoch=1, replicas=replicas, rank=r) for r in range(replicas)]
    lengths = [length for _, length in per_rank]
    # every process does the same number of steps, and len() says how many
    assert len(set(lengths)) == 1 and all(len(b) == lengths[0] for b, _ in per_rank)
    single, _ = batches(n, bs * replicas, epoch=1, replicas=1)  # the same order without padding
    reference = SeededBatchSampler(n, bs, seed=0, num_replicas=replicas, rank=0)
    reference.set_epoch(1)
    order = reference.global_order().tolist()
    assert order[:n] == [i for batch in single for i in batch]
    # global batch k = rank 0's batch k + rank 1's batch k + ...
    rebuilt = [i for k in range(len(per_rank[0][0])) for r in range(replicas) for i in per_rank[r][0][k]]
    assert rebuilt == order
    assert set(rebuilt) == set(range(n))


def test_drop_last_and_len() -> None:
    kept, length = batches(10, 4, epoch=0, drop_last=True)
    assert length == 2 and [len(b) for b in kept] == [4, 4]
    kept, length = batches(10, 4, epoch=0)
    assert length == 3 and [len(b) for b in kept] == [4, 4, 2]


class _Images:
    def __init__(self) -> None:
        from PIL import Image

        rng = np.random.default_rng(0)
        self.images = [Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)) for _ in range(3)]
        self.transform = TrainTransform(36, 32)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), i


def test_augmentation_depends_on_seed_epoch_and_index_only() -> None:
    data = SeededAugmentation(_Images(), seed=5)
    data.set_epoch(2)
    first = [data[i][0] for i in (0, 1, 2)]
    again = [data[i][0] for i in (2, 0, 1)]  # another order (other workers) gives the same crops
    np.testing.assert_array_equal(first[0], again[1])
    np.testing.assert_array_equal(first[2], again[0])
    crops = set()
    for epoch in range(8):
        data.set_epoch(epoch)
        crops.add(data[0][0].tobytes())
    assert len(crops) > 1  # the augmentation changes between epochs


def test_augmentation_needs_a_seedable_transform() -> None:
    class NoRng:
        transform = staticmethod(lambda image: image)

    with pytest.raises(TypeError, match="TrainTransform"):
        SeededAugmentation(NoRng())

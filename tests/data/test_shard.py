"""``iterate_batches(shard=(rank, world_size))``: the ranks of a data-parallel run split every global batch into
contiguous parts that together are exactly the single-process batch (issue 17)."""

from __future__ import annotations

import pytest
import torch

from sim.data import TensorImageDataset, iterate_batches
from sim.errors import DataError


def _ds(n: int = 23) -> TensorImageDataset:
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1).repeat(1, 1, 2, 2)
    return TensorImageDataset(x, torch.arange(n) % 3, classes=3)


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
@pytest.mark.parametrize("start_batch", [0, 2])
def test_the_shards_of_each_batch_concatenate_to_the_global_batch(world_size, start_batch):
    ds = _ds()
    whole = list(iterate_batches(ds, 6, seed=4, epoch=1, start_batch=start_batch))
    parts = [list(iterate_batches(ds, 6, seed=4, epoch=1, start_batch=start_batch, shard=(r, world_size)))
             for r in range(world_size)]
    assert all(len(p) == len(whole) for p in parts)
    seen = []
    for k, (x, y) in enumerate(whole):
        sizes = [len(p[k][1]) for p in parts]
        assert max(sizes) - min(sizes) <= 1
        torch.testing.assert_close(torch.cat([p[k][0] for p in parts]), x, rtol=0, atol=0)
        torch.testing.assert_close(torch.cat([p[k][1] for p in parts]), y, rtol=0, atol=0)
        seen += x[:, 0, 0, 0].long().tolist()
    if start_batch == 0:  # every sample once per epoch across the ranks
        assert sorted(seen) == list(range(len(ds)))


@pytest.mark.parametrize("shard", [(2, 2), (-1, 2), (0, 0)])
def test_a_bad_shard_is_a_clear_error(shard):
    with pytest.raises(DataError, match="rank|world_size"):
        list(iterate_batches(_ds(), 6, seed=0, epoch=0, shard=shard))

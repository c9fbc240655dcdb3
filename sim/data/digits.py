"""The embedded offline dataset (kind 'digits'): scikit-learn's ``load_digits``.

1,797 real handwritten digits, 8x8 grayscale with values 0..16, 10 classes; they ship inside scikit-learn, so runs
and tests need no download. Images come out ``[1, 8, 8]`` float32 in [0, 1] (values / 16).

The split is fixed, independent of any run seed, so every run is evaluated on the same images: a
``torch.Generator`` seeded with :data:`SPLIT_SEED` permutes the samples of each class, and the first
:data:`TEST_PER_CLASS` of each class go to test. That gives 360 test images (36 per class) and 1,437 train images,
stratified and disjoint. Within each split the samples keep scikit-learn's order.
"""

from __future__ import annotations

import numpy as np
import torch

from sim.data.dataset import TensorImageDataset, build_in_memory
from sim.data.spec import DataSpec

CLASSES = 10
SPLIT_SEED = 0
TEST_PER_CLASS = 36
_PEAK = 16.0  # the digits' full ink value


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Indices into the 1,797 digits of each split, ``{'train': [1437], 'test': [360]}``, sorted."""
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    test = []
    for label in range(CLASSES):
        members = np.flatnonzero(labels == label)
        picked = torch.randperm(len(members), generator=generator)[:TEST_PER_CLASS].numpy()
        test.append(members[picked])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return {"train": train_idx, "test": test_idx}


def load_digits_split(spec: DataSpec, split: str, seed: int = 0) -> TensorImageDataset:
    """The fixed ``split`` of the scikit-learn digits; ``seed`` does not change it."""
    from sklearn.datasets import load_digits  # imported here: scikit-learn is only needed for this kind

    bunch = load_digits()
    labels = np.asarray(bunch.target, dtype=np.int64)
    index = split_indices(labels)[split]
    raw = torch.from_numpy(bunch.images[index].astype(np.float32)).unsqueeze(1)  # [N, 8, 8] -> [N, 1, 8, 8]
    return build_in_memory(
        raw,
        torch.from_numpy(labels[index]),
        peak=_PEAK,
        spec=spec,
        source=f"scikit-learn digits ({split})",
        classes=CLASSES,
    )

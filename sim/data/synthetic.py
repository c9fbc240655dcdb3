"""Seeded noise images (kind 'random') for smoke runs and shape tests.

Pixels are uniform in [0, 1) with shape ``spec.input_shape`` ``(C, H, W)``, labels uniform in
``0 .. spec.classes-1``, ``spec.size`` samples per split (default :data:`DEFAULT_SIZE`). The generator seed mixes
the run seed with the split, so train and test differ and each is reproducible. There is nothing to learn: the
labels are independent of the pixels.
"""

from __future__ import annotations

import numpy as np
import torch

from sim.data.dataset import TensorImageDataset, build_in_memory
from sim.data.spec import SPLITS, DataSpec

DEFAULT_SIZE = 256


def load_random(spec: DataSpec, split: str, seed: int = 0) -> TensorImageDataset:
    """``size`` noise images ``[C, H, W]`` in [0, 1) and random labels, drawn from ``(seed, split)``."""
    size = spec.size or DEFAULT_SIZE
    # SeedSequence keeps (seed 0, test) and (seed 1, train) apart, unlike seed + offset.
    mixed = int(np.random.SeedSequence([seed, SPLITS.index(split)]).generate_state(1, dtype=np.uint64)[0]) >> 1
    generator = torch.Generator().manual_seed(mixed)
    raw = torch.rand((size, *spec.input_shape), generator=generator)
    y = torch.randint(spec.classes, (size,), generator=generator)
    return build_in_memory(
        raw, y, peak=1.0, spec=spec, source=f"random noise ({split}, seed {seed})", classes=spec.classes
    )

"""Pixel preprocessing for in-memory images: resize once, and map raw pixel values to float32 model inputs.

For raw pixels ``p`` (uint8 0..255, or 0..16 for the digits) the model sees, per channel ``c``::

    x = (p / peak - mean_c) / std_c

with ``peak = 255`` and ``mean = 0, std = 1`` for 'unit' (REFERENCE.md section 6: CIFAR-10 pixels / 255, nothing
else), and the ImageNet channel statistics for 'imagenet'. The operations run in the same order as torchvision's
``ToTensor`` + ``Normalize``, so in-memory and folder datasets give the same numbers for the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sim.data.spec import IMAGENET_MEAN, IMAGENET_STD
from sim.errors import DataError

# Images resized per chunk, so the float copy that interpolate needs stays small next to the data itself.
_RESIZE_CHUNK = 2048


@dataclass(frozen=True)
class PixelMap:
    """``x = (p / peak - mean) / std`` per channel; ``mean``/``std`` of ``None`` mean 0 and 1."""

    peak: float
    """The raw value of full brightness (255 for 8-bit images)."""
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def for_normalize(cls, normalize: str, *, peak: float, channels: int, source: str) -> PixelMap:
        """The map for a DataSpec ``normalize`` setting; 'imagenet' needs 3 (RGB) channels."""
        if normalize == "unit":
            return cls(peak=peak)
        if channels != 3:
            raise DataError(
                f"{source}: normalize='imagenet' needs RGB images, but these have {channels} channel(s); "
                f"use normalize='unit'"
            )
        return cls(peak=peak, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def apply(self, raw: Tensor, *, inplace: bool = False) -> Tensor:
        """Map raw pixels ``[N, C, H, W]`` (any dtype) to float32 of the same shape.

        Returns a new tensor, unless ``inplace`` and ``raw`` is already float32 (then ``raw`` is overwritten, which
        saves a copy of a freshly resized or generated dataset).
        """
        x = raw if inplace and raw.dtype == torch.float32 else raw.to(torch.float32, copy=True)
        x.div_(self.peak)
        if self.mean is not None:
            x.sub_(torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1))
            x.div_(torch.tensor(self.std, device=x.device).view(1, -1, 1, 1))
        return x


def resize_images(raw: Tensor, size: int) -> Tensor:
    """Resize ``[N, C, H, W]`` images to float32 ``[N, C, size, size]`` in raw pixel units.

    Bilinear with antialiasing (``align_corners=False``): when downsampling, the triangle filter widens with the
    scale factor, so every source pixel contributes instead of aliasing. Non-square images are stretched (the
    in-memory sources are square; folders use resize + center crop instead). Runs in chunks of images so the float
    intermediate stays bounded. Images already of that size come back as they are (converted to float32).
    """
    if raw.shape[-2:] == (size, size):
        return raw.to(torch.float32)
    out = torch.empty((raw.shape[0], raw.shape[1], size, size), dtype=torch.float32, device=raw.device)
    for start in range(0, raw.shape[0], _RESIZE_CHUNK):
        chunk = raw[start : start + _RESIZE_CHUNK].to(torch.float32)
        out[start : start + _RESIZE_CHUNK] = F.interpolate(
            chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return out

"""What to load: the :class:`DataSpec` that names a data source and its preprocessing.

The spec is a frozen dataclass so that ``dataclasses.asdict(spec)`` can go into run archives and two runs with equal
specs see identical data. It is validated on construction, so a misspelled kind or normalisation fails where the config
is read, not halfway through loading 50,000 images.

Preprocessing follows REFERENCE.md section 6: CIFAR-10 pixels / 255 and nothing else; ImageNet RGB, resized, / 255,
then normalised with the ImageNet channel mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.errors import DataError

# The data kinds :func:`sim.data.load_split` dispatches on; the config schema enumerates the same tuple.
KINDS: tuple[str, ...] = ("npz", "cifar10", "imagenet_folder", "imagenet_downsampled", "digits", "random")
NORMALIZATIONS: tuple[str, ...] = ("unit", "imagenet")
BAD_IMAGE_POLICIES: tuple[str, ...] = ("error", "skip")
SPLITS: tuple[str, ...] = ("train", "test")

# ImageNet channel statistics of pixels in [0, 1] (the torchvision convention, REFERENCE.md section 6).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Kinds that read from disk and therefore need ``path`` (the others, 'digits' and 'random', are built in).
NEEDS_PATH = frozenset({"npz", "cifar10", "imagenet_folder", "imagenet_downsampled"})


@dataclass(frozen=True)
class DataSpec:
    """A data source and how to preprocess it; every image comes out float32 ``[C, H, W]``."""

    kind: str
    """One of :data:`KINDS`: 'npz' (folder of ``train_*.npz``/``test_*.npz`` shards), 'cifar10' (torchvision),
    'imagenet_folder' (``root/{train,val}/<wnid>/*.JPEG``), 'imagenet_downsampled' (Chrabaszcz et al. 2017 batches),
    'digits' (scikit-learn's embedded 8x8 digits) or 'random' (seeded noise)."""

    path: str | None = None
    """The folder: npz shard folder, CIFAR-10 root, ImageNet root or downsampled-ImageNet folder. Unused for
    'digits' and 'random'."""

    image_size: int | None = None
    """Resize to this square size in pixels; ``None`` keeps the native size. Required for 'imagenet_folder'."""

    normalize: str = "unit"
    """'unit': pixels / 255 (digits: / 16). 'imagenet': / 255, then per channel (x - mean) / std with
    :data:`IMAGENET_MEAN` and :data:`IMAGENET_STD` (RGB images only)."""

    download: bool = False
    """'cifar10' only: let torchvision download the data when it is not under ``path``."""

    on_bad_image: str = "error"
    """'imagenet_folder' only: 'error' stops at the first undecodable file and names it; 'skip' leaves such files
    out of the batches and lists them in the dataset's ``skipped`` attribute."""

    classes: int | None = None
    """'random': the number of classes (required). Other kinds: a check that every label is below it; the dataset
    then reports this many classes even when the top ones have no samples."""

    input_shape: tuple[int, int, int] | None = None
    """'random': the image shape ``(C, H, W)`` (required). Other kinds: a check on the loaded shape."""

    size: int | None = None
    """'random': the number of samples per split (default 256). Other kinds: keep only the first ``size`` samples."""

    def __post_init__(self) -> None:
        self._check(require_path=True)

    def _check(self, *, require_path: bool) -> None:
        """Every check of the fields; the path only with ``require_path`` (a run config may leave it to be set)."""
        if self.kind not in KINDS:
            raise DataError(f"unknown data kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.normalize not in NORMALIZATIONS:
            raise DataError(f"unknown normalize {self.normalize!r}; choose one of {', '.join(NORMALIZATIONS)}")
        if self.on_bad_image not in BAD_IMAGE_POLICIES:
            raise DataError(
                f"unknown on_bad_image {self.on_bad_image!r}; choose one of {', '.join(BAD_IMAGE_POLICIES)}"
            )
        if require_path and self.kind in NEEDS_PATH and not self.path:
            raise DataError(f"data kind {self.kind!r} needs a path (the folder that holds the data)")
        for name in ("image_size", "classes", "size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise DataError(f"DataSpec.{name} must be a positive integer or None, got {value!r}")
        if self.input_shape is not None:
            shape = self.input_shape
            if (
                not isinstance(shape, (tuple, list))
                or len(shape) != 3
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
            ):
                raise DataError(f"DataSpec.input_shape must be three positive integers (C, H, W), got {shape!r}")
            # Configs read from JSON give lists; store a tuple so the spec stays hashable and compares equal.
            object.__setattr__(self, "input_shape", tuple(shape))
        if self.kind == "random" and (self.classes is None or self.input_shape is None):
            raise DataError("data kind 'random' needs classes and input_shape (C, H, W)")


def check_split(split: str) -> None:
    """Refuse a split name other than 'train' or 'test'."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose 'train' or 'test'")

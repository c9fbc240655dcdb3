"""ImageNet in the standard folder layout (kind 'imagenet_folder'), decoded on the fly.

Layout: ``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG``; the 'test' split reads ``val``. Files are
listed by ``torchvision.datasets.ImageFolder``, and labels are positions in the sorted list of class folders (the
usual torchvision/Keras ILSVRC index, 0 = n01440764 tench). The val split takes its class list from ``train`` when
that exists, so a val folder with some classes missing cannot shift the labels of the others.

Each image goes through RGB conversion, ``Resize(image_size)`` (short side) and ``CenterCrop(image_size)``,
``ToTensor`` (/ 255, HWC -> CHW) and, for normalize='imagenet', ``Normalize(mean, std)`` (REFERENCE.md section 6).
The last two are computed in numpy (:class:`_ToNormalized`), with the same float32 operations in the same order, so
the values are torchvision's bit for bit: torch would spread each of these per-image operations over its intra-op
threads, which with ``num_workers=0`` (decoding in the main process, whose torch threads are the step's) cost 40 ms
an image on the shared 2-core machine instead of 0.4 (docs/performance.md, "The input pipeline").

Undecodable files: with on_bad_image='error' the first one stops the run with a message that names it; with 'skip'
it is left out of its batch (together with its label, so no label shifts) and its path is added to ``skipped``.
Files are checked as they are decoded, not up front, so ``skipped`` grows during the first epoch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from sim.data.dataset import ImageDataset, LoaderParts
from sim.data.spec import IMAGENET_MEAN, IMAGENET_STD, DataSpec
from sim.errors import DataError

LAYOUT = (
    "expected the ImageNet folder layout <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG "
    "(one sub-folder per class, named by its wnid; the 'test' split reads val)"
)


def _image_folder_class():
    """``ImageFolder`` that can take its class list from outside (the train split's), built on first use."""
    from torchvision.datasets import ImageFolder  # imported here: torchvision is only needed for this kind

    class ClassListImageFolder(ImageFolder):
        def __init__(self, root: str, class_names: list[str] | None, **kwargs) -> None:
            self._class_names = class_names  # read by find_classes, which ImageFolder.__init__ calls
            super().__init__(root, allow_empty=class_names is not None, **kwargs)

        def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
            if self._class_names is None:
                return super().find_classes(directory)
            return self._class_names, {name: i for i, name in enumerate(self._class_names)}

    return ClassListImageFolder


def _subfolders(path: Path) -> list[str]:
    return sorted(entry.name for entry in path.iterdir() if entry.is_dir())


def _split_dir(root: Path, split: str) -> Path:
    """``root/train`` or ``root/val``, after checking that it exists and holds class folders."""
    if not root.is_dir():
        raise DataError(f"ImageNet folder {root} does not exist or is not a folder; {LAYOUT}")
    folder = root / ("train" if split == "train" else "val")
    if not folder.is_dir():
        raise DataError(
            f"{folder} is missing (found in {root}: {', '.join(_subfolders(root)) or 'no folders'}); {LAYOUT}"
        )
    if not _subfolders(folder):
        flat = any(entry.is_file() for entry in folder.iterdir())
        hint = (
            " It holds image files directly: sort them into one sub-folder per wnid (for the ILSVRC-2012 val "
            "set, e.g. with the widely used valprep.sh script)."
            if flat
            else ""
        )
        raise DataError(f"{folder} has no class sub-folders.{hint} {LAYOUT}")
    return folder


class _ToNormalized:
    """``ToTensor`` (then ``Normalize(IMAGENET_MEAN, IMAGENET_STD)`` for 'imagenet') of a PIL RGB image, in numpy:
    ``x = float32(pixel) / 255`` and ``(x - mean) / std`` in float32, channels first, as torchvision computes them,
    without torch's intra-op threads (see the module docstring). Returns float32 ``[3, H, W]``."""

    def __init__(self, normalize: str) -> None:
        self.mean = self.std = None
        if normalize == "imagenet":
            self.mean = np.array(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
            self.std = np.array(IMAGENET_STD, dtype=np.float32)[:, None, None]

    def __call__(self, image) -> Tensor:
        x = np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)).astype(np.float32) / 255
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return torch.from_numpy(x)


def _transform(image_size: int, normalize: str):
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size),
                               _ToNormalized(normalize)])


class _Decoded(Dataset):
    """Items of an :class:`ImageFolderDataset` as ``(x or None, label, path, failure or None)``, never raising.

    Worker processes return failures as data, so the main process can name the file in a plain DataError (an
    exception raised in a worker would arrive wrapped in the worker's traceback) and keep the ``skipped`` count.
    """

    def __init__(self, ds: ImageFolderDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> tuple[Tensor | None, int, str, str | None]:
        path, label = self.ds.samples[index]
        try:
            return self.ds.decode(path), label, path, None
        except Exception as exc:  # noqa: BLE001 -- any decoder failure means "this file is bad", reported by name
            return None, label, path, f"{type(exc).__name__}: {exc}"


def _collate(items: list) -> tuple[Tensor | None, Tensor, list[tuple[str, str]]]:
    """Stack the decoded items of a batch; return ``(x [B', 3, S, S] or None, y [B'], [(path, failure), ...])``."""
    good = [(x, label) for x, label, _, failure in items if failure is None]
    bad = [(path, failure) for _, _, path, failure in items if failure is not None]
    x = torch.stack([x for x, _ in good]) if good else None
    return x, torch.tensor([label for _, label in good], dtype=torch.int64), bad


class ImageFolderDataset(ImageDataset):
    """An ImageNet-style folder split, decoded per item: ``ds[i] -> (x float32 [3, S, S], y int)``."""

    def __init__(self, spec: DataSpec, split: str) -> None:
        if spec.image_size is None:
            raise DataError(
                "kind 'imagenet_folder' needs image_size (e.g. 224): images of different sizes are "
                "resized and center-cropped to one square size"
            )
        root = Path(spec.path).expanduser()
        folder = _split_dir(root, split)
        class_names = None
        train_dir = root / "train"
        if split != "train" and train_dir.is_dir() and _subfolders(train_dir):
            class_names = _subfolders(train_dir)
            unknown = sorted(set(_subfolders(folder)) - set(class_names))
            if unknown:
                raise DataError(
                    f"{folder} has class folders that {train_dir} lacks ({', '.join(unknown[:10])}); "
                    f"their labels would be undefined. Train and val must use the same wnids"
                )
        try:
            listing = _image_folder_class()(str(folder), class_names)
        except (FileNotFoundError, ValueError) as exc:  # e.g. "Found no valid file for the classes ..."
            raise DataError(f"{folder}: {exc} {LAYOUT}") from None
        if not listing.samples:
            raise DataError(f"{folder} holds class folders but no image files; {LAYOUT}")
        self.class_names: list[str] = list(listing.classes)
        """The class folder names (wnids); label i is ``class_names[i]``."""
        self.classes = len(self.class_names)
        if spec.classes is not None and spec.classes != self.classes:
            raise DataError(
                f"{folder}: found {self.classes} class folders but DataSpec.classes is {spec.classes}; "
                f"labels are positions among the class folders, so the two must agree"
            )
        self.samples: list[tuple[str, int]] = list(listing.samples[: spec.size])
        """``(path, label)`` of every image, in ImageFolder's order (by class, then by file name)."""
        self.input_shape = (3, spec.image_size, spec.image_size)
        self.on_bad_image = spec.on_bad_image
        self.skipped: list[str] = []
        """Paths of the undecodable files left out so far (on_bad_image='skip'), each listed once."""
        self.source = str(folder)
        self._loader = listing.loader  # PIL open + convert('RGB')
        self._transform = _transform(spec.image_size, spec.normalize)

    def __len__(self) -> int:
        return len(self.samples)

    def decode(self, path: str) -> Tensor:
        """Read one file and preprocess it to float32 ``[3, S, S]``; raises whatever the decoder raises."""
        return self._transform(self._loader(path))

    def _bad(self, path: str, failure: str) -> DataError | None:
        """Record an undecodable file; return the error to raise in 'error' mode, None in 'skip' mode."""
        if self.on_bad_image == "error":
            return DataError(
                f"cannot decode image {path} ({failure}); delete or replace the file, or set "
                f"on_bad_image='skip' to leave undecodable files out"
            )
        if path not in self.skipped:
            self.skipped.append(path)
        return None

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x, label, path, failure = _Decoded(self)[index]
        if failure is not None:
            error = self._bad(path, failure)
            raise error or DataError(
                f"image {path} is undecodable ({failure}); with on_bad_image='skip' it is left "
                f"out of iterate_batches, but single-item access has nothing to return"
            )
        return x, label

    def loader_parts(self) -> LoaderParts:
        """Workers decode :class:`_Decoded` items and stack the good ones (:func:`_collate`); the main process then
        raises for or skips the undecodable files (see module) and yields nothing for a batch of only bad files."""
        return LoaderParts(_Decoded(self), _collate, self._finish)

    def _finish(self, batch: tuple[Tensor | None, Tensor, list[tuple[str, str]]]) -> tuple[Tensor, Tensor] | None:
        x, y, bad = batch
        for path, failure in bad:
            error = self._bad(path, failure)
            if error is not None:
                raise error
        return None if x is None else (x, y)


def load_imagenet_folder(spec: DataSpec, split: str, seed: int = 0) -> ImageFolderDataset:
    """The ``split`` of the ImageNet folder ``spec.path`` ('test' reads ``val``), decoded on the fly."""
    return ImageFolderDataset(spec, split)

"""Datasets (ISIC 2018, BraTS 2021, a generic image/mask folder), synthetic data in the
real layouts, and batched augmentation."""
from __future__ import annotations

from .augment import Augment
from .brats import BraTS2021, labels_to_regions, regions_to_labels
from .folder import ImageMaskFolder
from .generate import make_brats2021, make_isic2018
from .isic import ISIC2018

DATASETS = ("isic2018", "brats2021", "folder")

__all__ = ["ISIC2018", "BraTS2021", "ImageMaskFolder", "Augment", "make_isic2018",
           "make_brats2021", "labels_to_regions", "regions_to_labels", "build_dataset", "DATASETS"]


def build_dataset(name: str, root, split: str, image_size=None, **kw):
    """Dataset by CLI name: ``isic2018``, ``brats2021`` or ``folder``."""
    if name == "isic2018":
        return ISIC2018(root, split, image_size=image_size, **kw)
    if name == "brats2021":
        return BraTS2021(root, split, image_size=image_size, **kw)
    if name == "folder":
        return ImageMaskFolder(root, split, image_size=image_size, **kw)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")

"""A generic folder of images and masks.

Either one pool that is split reproducibly by name::

    ROOT/images/<name>.png|jpg|...     ROOT/masks/<name>[ _mask | _segmentation ].png

or explicit splits::

    ROOT/train/images/...  ROOT/train/masks/...   (and val/, test/)

Masks are 8-bit, 0/255 (foreground > 127) or 0/1 (foreground 1; see
:func:`~raunet_fast.data.common.read_mask`), and must have the size of their image.
"""
from __future__ import annotations

from pathlib import Path

from .common import IMAGE_EXTENSIONS, split_names
from .isic import SegmentationFolder2D

MASK_SUFFIXES = ("", "_mask", "_segmentation", "_seg", "_label")


def images_by_stem(folder: Path) -> dict[str, Path]:
    """The image files of ``folder`` by stem (sorted; hidden files and other extensions
    skipped); two images with one stem are an error."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."):
            if p.stem in out:
                raise ValueError(f"two images named {p.stem!r} in {folder}: {out[p.stem].name} "
                                 f"and {p.name}")
            out[p.stem] = p
    return out


class ImageMaskFolder(SegmentationFolder2D):
    """Images and binary masks paired by file name (see the module docstring).

    ``split`` is ``train`` / ``val`` / ``test`` / ``all``; without ``ROOT/<split>/``
    folders the pool in ``ROOT/images`` is divided by ``fractions`` (val, test) with
    ``seed``. ``channels``: 1 (grayscale) or 3 (RGB); None detects it from the first
    image (``grayscale=True`` is ``channels=1``). Every image must have that many channels
    unless ``convert_channels``. The one output channel is named ``foreground`` (log column
    ``val_dice_foreground``).
    """

    region_names = ("foreground",)

    def __init__(self, root: str | Path, split: str = "train",
                 image_size: tuple[int, int] | None = None, require_masks: bool = True,
                 fractions: tuple[float, float] = (0.15, 0.15), seed: int = 0,
                 images_dir: str = "images", masks_dir: str = "masks", grayscale: bool = False,
                 cache: bool = False, patch: tuple[int, int] | None = None,
                 random_patches: bool = False, context: tuple[int, int] = (0, 0),
                 patches_per_image: int = 1, channels: int | None = None,
                 convert_channels: bool = False):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder root {root} is not a directory")
        base = root / split if split != "all" and (root / split / images_dir).is_dir() else root
        img_dir, mask_dir = base / images_dir, base / masks_dir
        if not img_dir.is_dir():
            raise FileNotFoundError(f"no {images_dir}/ folder in {base}; expected "
                                    f"{base}/{images_dir}/ and {base}/{masks_dir}/")
        images = images_by_stem(img_dir)
        if not images:
            raise ValueError(f"{img_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        names = list(images)
        if base is root:
            names = split_names(names, split, fractions, seed)
        masks = images_by_stem(mask_dir) if mask_dir.is_dir() else {}
        if require_masks and not mask_dir.is_dir():
            raise FileNotFoundError(f"no {masks_dir}/ folder in {base}")
        pairs = []
        for name in names:
            mask = None
            if mask_dir.is_dir():
                hits = [masks[name + s] for s in MASK_SUFFIXES if name + s in masks]
                if not hits and require_masks:
                    raise FileNotFoundError(
                        f"no mask for image {images[name]} in {mask_dir} (looked for "
                        f"{', '.join(name + s + '.<ext>' for s in MASK_SUFFIXES)})")
                mask = hits[0] if hits else None
            pairs.append((name, images[name], mask))
        self.root, self.split = root, split
        channels = 1 if grayscale else channels or detect_channels(pairs[0][1])
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        super().__init__(pairs, image_size, cache, mode="L" if channels == 1 else "RGB",
                         patch=patch, random_patches=random_patches, context=context,
                         patches_per_image=patches_per_image, convert_channels=convert_channels)


def detect_channels(path: Path) -> int:
    """1 for a grayscale image file, 3 for a colour one (from its header)."""
    from ..io.images import GRAY_MODES, open_image

    with open_image(path) as im:
        return 1 if im.mode in GRAY_MODES else 3

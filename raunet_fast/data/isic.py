"""ISIC 2018 task 1 (lesion boundary segmentation) in its official layout.

::

    ROOT/ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg   (+ LICENSE.txt etc., skipped)
    ROOT/ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png   (0 / 255)
    ...Validation... and ...Test... likewise

Each folder may also sit one or two levels deeper, or be nested in a copy of itself
(``X/X/*.jpg``), as some mirrors produce. Masks are read by
:func:`~raunet_fast.data.common.read_mask` (0/255: foreground > 127; 0/1 also accepted).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .common import check_same_size, find_dir, read_image, read_mask, resize_pair

SPLIT_NAMES = {"train": "Training", "val": "Validation", "test": "Test"}
IMAGE_RE = re.compile(r"^ISIC_(\d{7})\.jpg$", re.IGNORECASE)


def input_dir_name(split: str) -> str:
    return f"ISIC2018_Task1-2_{SPLIT_NAMES[split]}_Input"


def truth_dir_name(split: str) -> str:
    return f"ISIC2018_Task1_{SPLIT_NAMES[split]}_GroundTruth"


class SegmentationFolder2D(Dataset):
    """Base for 2-D datasets of (image file, mask file) pairs.

    Items are dicts: ``image`` ``C x h x w`` float32 in [0, 1], ``mask`` ``1 x h x w``
    float32 {0, 1} (absent when the split has no masks), ``case`` (int index). With
    ``image_size`` every item is resized to it; :meth:`load_case` gives the full-size
    arrays for evaluation at the original resolution. With ``patch`` (h, w) items are
    patches of the full-resolution image and mask instead (no resize; images smaller than a
    patch are zero-padded): at a random position (``random_patches``, training; positions
    from torch's RNG, seeded per DataLoader worker) or at the centre (validation).
    """

    channels = 3
    region_names = ("lesion",)

    def __init__(self, pairs: list[tuple[str, Path, Path | None]],
                 image_size: tuple[int, int] | None = None, cache: bool = False,
                 mode: str = "RGB", patch: tuple[int, int] | None = None,
                 random_patches: bool = False):
        if not pairs:
            raise ValueError(f"{type(self).__name__}: no cases found")
        self.names = [p[0] for p in pairs]
        self.image_paths = [p[1] for p in pairs]
        self.mask_paths = [p[2] for p in pairs]
        self.has_masks = all(m is not None for m in self.mask_paths)
        self.image_size = None if image_size is None else tuple(image_size)
        if patch is not None and image_size is not None:
            raise ValueError("patch and image_size exclude each other: patches are cut at "
                             "the image's own resolution")
        self.patch = None if patch is None else (int(patch[0]), int(patch[1]))
        self.random_patches = random_patches
        self.mode = mode
        self.channels = 1 if mode == "L" else 3
        self.cache = cache
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def __len__(self) -> int:
        return len(self.names)

    def load_case(self, i: int, draft_size: tuple[int, int] | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
        """Full-size ``H x W x C`` uint8 image and ``H x W`` bool mask (None without masks)."""
        image, hw = read_image(self.image_paths[i], self.mode, draft_size)
        mask = None
        if self.mask_paths[i] is not None:
            mask = read_mask(self.mask_paths[i])
            check_same_size(hw, mask.shape, self.image_paths[i], self.mask_paths[i])
            if image.shape[:2] != mask.shape:  # JPEG draft decoded a smaller image
                mask = resize_pair(mask[..., None].astype(np.uint8) * 255, None,
                                   image.shape[:2])[0][0].numpy() > 0.5
        return image, mask

    def fill_cache(self, progress: bool = False, desc: str = "caching images") -> None:
        """Decode and resize every item into the in-memory cache now (``cache=True``).

        Call it in the main process before building DataLoaders: items cached lazily inside
        DataLoader worker processes are lost when the workers exit (every epoch), while a
        cache filled here is inherited by every worker, once, for the whole run."""
        if not self.cache:
            return
        from tqdm import tqdm

        for i in tqdm(range(len(self)), desc=desc, unit="image", leave=False,
                      disable=not progress, dynamic_ncols=True):
            if i not in self._cache:
                self._cache[i] = resize_pair(*self.load_case(i, self.image_size), self.image_size)

    def _patch(self, image: torch.Tensor, mask: torch.Tensor | None):
        """The item's patch of ``image`` / ``mask`` (same position in both)."""
        ph, pw = self.patch
        h, w = image.shape[-2:]
        if h < ph or w < pw:  # zero-pad (bottom / right) up to a patch
            pad = (0, max(pw - w, 0), 0, max(ph - h, 0))
            image = torch.nn.functional.pad(image, pad)
            mask = None if mask is None else torch.nn.functional.pad(mask, pad)
            h, w = image.shape[-2:]
        if self.random_patches:
            y = int(torch.randint(0, h - ph + 1, ()).item())
            x = int(torch.randint(0, w - pw + 1, ()).item())
        else:
            y, x = (h - ph) // 2, (w - pw) // 2
        image = image[:, y:y + ph, x:x + pw].contiguous()
        mask = None if mask is None else mask[:, y:y + ph, x:x + pw].contiguous()
        return image, mask

    def __getitem__(self, i: int) -> dict:
        if i < 0 or i >= len(self):
            raise IndexError(i)
        if i in self._cache:
            image, mask = self._cache[i]
        else:
            image, mask = resize_pair(*self.load_case(i, self.image_size), self.image_size)
            if self.cache:
                self._cache[i] = (image, mask)
        if self.patch is not None:
            image, mask = self._patch(image, mask)
        item = {"image": image, "case": i}
        if mask is not None:
            item["mask"] = mask
        return item


class ISIC2018(SegmentationFolder2D):
    """ISIC 2018 task 1 split ``train`` / ``val`` / ``test`` under ``root``.

    ``require_masks=True`` (training, evaluation) raises a clear error when the split's
    ground-truth folder is missing (the original test release had none; the later
    published ground truth can be put next to the input folder).
    """

    def __init__(self, root: str | Path, split: str = "train",
                 image_size: tuple[int, int] | None = None, require_masks: bool = True,
                 cache: bool = False, patch: tuple[int, int] | None = None,
                 random_patches: bool = False):
        root = Path(root)
        if split not in SPLIT_NAMES:
            raise ValueError(f"ISIC 2018 split must be one of {sorted(SPLIT_NAMES)}, got {split!r}")
        if not root.is_dir():
            raise FileNotFoundError(f"ISIC 2018 data root {root} is not a directory")
        in_name, gt_name = input_dir_name(split), truth_dir_name(split)
        in_dir = find_dir(root, in_name)
        if in_dir is None:
            raise FileNotFoundError(f"no folder {in_name} under {root}; expected the official "
                                    f"ISIC 2018 task 1 layout ({in_name}/ISIC_<7 digits>.jpg "
                                    f"next to {gt_name}/)")
        gt_dir = find_dir(root, gt_name)
        if gt_dir is None and require_masks:
            extra = (" The original ISIC 2018 test release has no ground truth; download the "
                     "published ground truth and put it next to the input folder."
                     if split != "train" else "")
            raise FileNotFoundError(f"no ground-truth folder {gt_name} under {root} for split "
                                    f"{split!r}.{extra}")
        images = sorted(p for p in in_dir.iterdir() if IMAGE_RE.match(p.name))
        if not images:
            raise ValueError(f"{in_dir} holds no ISIC_<7 digits>.jpg images")
        pairs = []
        for p in images:
            case = p.stem
            mask = None
            if gt_dir is not None:
                mask = gt_dir / f"{case}_segmentation.png"
                if not mask.is_file():
                    raise FileNotFoundError(f"mask {mask} for image {p} does not exist")
            pairs.append((case, p, mask))
        self.root, self.split, self.input_dir, self.truth_dir = root, split, in_dir, gt_dir
        super().__init__(pairs, image_size, cache, patch=patch, random_patches=random_patches)

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
    patch are zero-padded): one per image at a random position (``random_patches``,
    training; positions from torch's RNG, seeded per DataLoader worker), or else tiles that
    cover every image (validation): :attr:`index` lists ``(case, y, x)`` per item, and each
    tile carries ``valid``, ``1 x h x w``: 1 on the real pixels it owns (each pixel of an
    image is owned by exactly one tile; padding by none), so that summing per case over
    ``valid`` pixels scores whole images. The cache (``cache=True``) then holds the decoded
    uint8 arrays, not float tensors. ``context`` (cy, cx), random patches only: each item is
    the patch with ``cy`` / ``cx`` more pixels of the image on every side (zeros beyond it),
    so that rotations and deformations see real surroundings; the trainer cuts the patch
    out of the middle after augmenting. ``patches_per_image`` K, random patches only: K
    items per image (item ``j`` is a patch of image ``j // K``, each at its own random
    position); consecutive items of one image decode it once (the last decoded image is
    kept), so a sampler that keeps an image's K items together (:class:`GroupedSampler`)
    decodes each image once for K patches. ``mode`` (``"RGB"`` or ``"L"``) is what the
    model takes; an image with the other number of channels is an error unless
    ``convert_channels`` (the rules of :mod:`raunet_fast.io.images`).
    """

    channels = 3
    region_names = ("lesion",)

    def __init__(self, pairs: list[tuple[str, Path, Path | None]],
                 image_size: tuple[int, int] | None = None, cache: bool = False,
                 mode: str = "RGB", patch: tuple[int, int] | None = None,
                 random_patches: bool = False, context: tuple[int, int] = (0, 0),
                 patches_per_image: int = 1, convert_channels: bool = False):
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
        if patch is not None:
            patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
            if len(patch) != 2 or min(int(v) for v in patch) < 1:
                raise ValueError(f"patch must be two sizes >= 1 (H, W), got {patch}")
        self.patch = None if patch is None else (int(patch[0]), int(patch[1]))
        self.random_patches = random_patches
        self.context = (int(context[0]), int(context[1])) if random_patches else (0, 0)
        if min(self.context) < 0:
            raise ValueError(f"context must be >= 0, got {context}")
        if isinstance(patches_per_image, bool) or not isinstance(patches_per_image, int) \
                or patches_per_image < 1:
            raise ValueError(f"patches_per_image must be an integer >= 1, got "
                             f"{patches_per_image!r}")
        if patches_per_image != 1 and (self.patch is None or not random_patches):
            raise ValueError("patches_per_image is for random training patches (patch and "
                             "random_patches=True)")
        self.patches_per_image = int(patches_per_image)
        self._last: tuple[int, tuple] | None = None  # the last decoded image (tiles in a row)
        self.index: list[tuple[int, int, int]] | None = None
        if self.patch is not None and not random_patches:
            self.index = self._tile_index()
        self.mode = mode
        self.channels = 1 if mode == "L" else 3
        self.convert_channels = convert_channels
        self.cache = cache
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def __len__(self) -> int:
        if self.index is not None:
            return len(self.index)
        return len(self.names) * self.patches_per_image

    def _tile_index(self) -> list[tuple[int, int, int]]:
        from ..io.images import open_image
        from ..sliding_window import window_starts

        ph, pw = self.patch
        index = []
        for i, path in enumerate(self.image_paths):
            with open_image(path) as im:  # the header only
                w, h = im.size
            index += [(i, y, x) for y in window_starts(max(h, ph), ph, 0.0)
                      for x in window_starts(max(w, pw), pw, 0.0)]
        return index

    def load_case(self, i: int, draft_size: tuple[int, int] | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
        """Full-size ``H x W x C`` uint8 image and ``H x W`` bool mask (None without masks)."""
        image, hw = read_image(self.image_paths[i], self.mode, draft_size,
                               convert=self.convert_channels)
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

        for i in tqdm(range(len(self.names)), desc=desc, unit="image", leave=False,
                      disable=not progress, dynamic_ncols=True):
            if i not in self._cache:
                self._cache[i] = self._decoded(i)

    def _decoded(self, i: int):
        """What the cache holds for case ``i``: resized float tensors, or with ``patch`` the
        full-resolution uint8 image and bool mask (a quarter of the memory; patches are
        converted after cutting)."""
        if self.patch is not None:
            return self.load_case(i)
        return resize_pair(*self.load_case(i, self.image_size), self.image_size)

    def _raw(self, i: int):
        if i in self._cache:
            return self._cache[i]
        if self._last is not None and self._last[0] == i:
            return self._last[1]
        value = self._decoded(i)
        if self.cache:
            self._cache[i] = value
        elif self.patch is not None:
            self._last = (i, value)
        return value

    def _patch_item(self, j: int) -> dict:
        """Item ``j`` in patch mode: the patch (uint8 cut, then converted), and for tiles the
        ``valid`` ownership mask."""
        ph, pw = self.patch
        if self.index is not None:
            i, y, x = self.index[j]
        else:
            i = j // self.patches_per_image
        image, mask = self._raw(i)
        h, w = image.shape[:2]
        hp, wp = max(h, ph), max(w, pw)
        if self.index is None:  # a random position in the (padded) image
            y = int(torch.randint(0, hp - ph + 1, ()).item())
            x = int(torch.randint(0, wp - pw + 1, ()).item())
        # cut the uint8 arrays (with the context margin), zeros beyond the image
        cy, cx = self.context
        y0, x0, hh, ww = y - cy, x - cx, ph + 2 * cy, pw + 2 * cx
        sy, sx = max(y0, 0), max(x0, 0)
        ey, ex = min(y0 + hh, h), min(x0 + ww, w)
        img = np.zeros((hh, ww) + image.shape[2:], dtype=image.dtype)
        m = None if mask is None else np.zeros((hh, ww), dtype=bool)
        if ey > sy and ex > sx:
            img[sy - y0:ey - y0, sx - x0:ex - x0] = image[sy:ey, sx:ex]
            if m is not None:
                m[sy - y0:ey - y0, sx - x0:ex - x0] = mask[sy:ey, sx:ex]
        image_t, mask_t = resize_pair(img, m, None)
        item = {"image": image_t, "case": i}
        if mask_t is not None:
            item["mask"] = mask_t
        if self.index is not None:
            item["valid"] = self._owned(y, x, h, w, hp, wp)
        return item

    def _owned(self, y: int, x: int, h: int, w: int, hp: int, wp: int) -> torch.Tensor:
        """``1 x ph x pw``: the real pixels (inside ``h x w``) of the tile at (y, x) that no
        earlier tile of the grid covers."""
        from ..sliding_window import window_starts

        ph, pw = self.patch

        def axis(start: int, size: int, padded: int, n: int) -> torch.Tensor:
            starts = window_starts(padded, n, 0.0)
            k = starts.index(start)
            first = start if k == 0 else starts[k - 1] + n  # pixels before belong to k-1
            pos = torch.arange(start, start + n)
            return ((pos >= first) & (pos < size)).float()

        return (axis(y, h, hp, ph)[:, None] * axis(x, w, wp, pw)[None, :])[None]

    def __getitem__(self, i: int) -> dict:
        if i < 0 or i >= len(self):
            raise IndexError(i)
        if self.patch is not None:
            return self._patch_item(i)
        image, mask = self._raw(i)
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
                 random_patches: bool = False, context: tuple[int, int] = (0, 0),
                 patches_per_image: int = 1, convert_channels: bool = False):
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
        super().__init__(pairs, image_size, cache, patch=patch, random_patches=random_patches,
                         context=context, patches_per_image=patches_per_image,
                         convert_channels=convert_channels)


class GroupedSampler(torch.utils.data.Sampler):
    """Random order of groups of ``group`` consecutive indices: ``[g*group, ...,
    g*group + group - 1]`` for the groups ``g`` in a random permutation (torch
    ``generator``). For a dataset with ``patches_per_image = group``, an image's patches
    come one after another, so a DataLoader worker decodes the image once for all of them
    (when ``batch_size`` is a multiple of ``group`` each batch holds whole groups; otherwise
    a group split across batches may be decoded twice). ``len(dataset)`` must be a multiple
    of ``group``."""

    def __init__(self, n: int, group: int, generator: torch.Generator | None = None):
        if group < 1 or n % group:
            raise ValueError(f"GroupedSampler: {n} items are not whole groups of {group}")
        self.n, self.group, self.generator = n, group, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for g in torch.randperm(self.n // self.group, generator=self.generator).tolist():
            yield from range(g * self.group, (g + 1) * self.group)

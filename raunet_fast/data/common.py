"""Shared pieces of the datasets: mask reading (images: :func:`raunet_fast.io.images.read_image`),
resizing for the network, and a reproducible split of case names."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..io.images import read_image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_mask(path: str | Path) -> np.ndarray:
    """Read an 8-bit binary mask as ``H x W`` bool.

    Two encodings are accepted: 0/1 masks (maximum value 1: foreground is 1) and 0/255
    masks (maximum above 127: foreground is ``value > 127``, which also covers masks that
    were resampled and hold values in between). A mask whose maximum is 2..127 is
    ambiguous (a label map, or a scaled mask?) and raises a ValueError naming the file and
    its values; an all-zero mask is empty.
    """
    arr, _ = read_image(path, mode="L")
    top = int(arr.max()) if arr.size else 0
    if top <= 1:
        return arr == 1
    if top > 127:
        return arr > 127
    values = np.unique(arr)
    shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
    raise ValueError(f"mask {path} holds values {{{shown}}} (maximum {top}); a binary mask is "
                     f"0/1 (foreground 1) or 0/255 (foreground > 127)")


def check_same_size(image_hw: tuple[int, int], mask_hw: tuple[int, int], image_path: Path,
                    mask_path: Path) -> None:
    """Masks are never resized silently to match their image: a mismatch is an error."""
    if tuple(image_hw) != tuple(mask_hw):
        raise ValueError(f"mask {mask_path} is {mask_hw[0]}x{mask_hw[1]} (HxW) but its image "
                         f"{image_path} is {image_hw[0]}x{image_hw[1]}; masks must have the size "
                         f"of their image")


def resize_pair(image: np.ndarray, mask: np.ndarray | None,
                size: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``H x W x C`` uint8 image and ``H x W`` bool mask -> ``C x h x w`` float32 in [0, 1]
    and ``1 x h x w`` float32 {0, 1}, resized to ``size`` (antialiased bilinear; the mask is
    resized as a fraction and thresholded at 0.5 so it stays binary)."""
    img = torch.from_numpy(image)
    img = img[None] if img.dim() == 2 else img.permute(2, 0, 1)
    img = img.float().div_(255.0)
    m = None if mask is None else torch.from_numpy(mask.astype(np.float32))[None]
    if size is not None and tuple(img.shape[-2:]) != tuple(size):
        img = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False,
                            antialias=True)[0].clamp_(0, 1)
        if m is not None:
            m = (F.interpolate(m[None], size=size, mode="bilinear", align_corners=False,
                               antialias=True)[0] > 0.5).float()
    return img.contiguous(), m


def split_names(names: Sequence[str], split: str, fractions: tuple[float, float] = (0.15, 0.15),
                seed: int = 0) -> list[str]:
    """Divide case names reproducibly into ``train`` / ``val`` / ``test`` (or ``all``).

    The order is a hash of ``seed`` and each name, so it does not depend on the order the
    files were listed in; ``fractions`` are (val, test), each split gets at least one case
    when there are three or more.
    """
    names = sorted(set(names))
    if split == "all":
        return names
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val, test or all, got {split!r}")
    n = len(names)
    if n < 3:
        raise ValueError(f"need at least 3 cases to split into train/val/test, found {n}")
    order = sorted(names, key=lambda s: hashlib.sha1(f"{seed}:{s}".encode()).hexdigest())
    n_val = max(1, round(fractions[0] * n))
    n_test = max(1, round(fractions[1] * n))
    if n_val + n_test >= n:
        n_val, n_test = 1, 1
    parts = {"val": order[:n_val], "test": order[n_val:n_val + n_test],
             "train": order[n_val + n_test:]}
    return sorted(parts[split])


def find_dir(root: Path, name: str, max_depth: int = 3) -> Path | None:
    """Find folder ``name`` at or below ``root`` (shallowest first), stepping into the
    nested copies some mirrors produce (``X/X/files``)."""
    root = Path(root)
    found = None
    if root.name == name and root.is_dir():
        found = root
    else:
        level = [root]
        for _ in range(max_depth + 1):
            hits = [d / name for d in level if (d / name).is_dir()]
            if hits:
                found = sorted(hits)[0]
                break
            level = [c for d in level for c in sorted(d.iterdir()) if c.is_dir()
                     and not c.name.startswith(".")] if level else []
            if not level:
                break
    while found is not None and (found / name).is_dir():
        found = found / name
    return found

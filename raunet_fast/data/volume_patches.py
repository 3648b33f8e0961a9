"""3-D training patches and validation tiles cut from whole volumes
(:mod:`raunet_fast.data.volumes`), for ``raunet-fast train --spatial-dims 3``.

:class:`VolumePatches` (training): ``patches_per_volume`` random patches per volume and
epoch. As nnU-Net does, a fraction ``foreground_ratio`` of them is centred on a random
foreground voxel (of a region, or label, drawn uniformly among those present in the case,
then a voxel drawn uniformly in it); the others lie uniformly anywhere. Volumes smaller
than the patch are padded (image 0, mask 0); a centred patch is shifted to stay inside the
padded volume, and its foreground voxel always stays inside it. Every draw comes from a
generator seeded by (seed, epoch, item), so a run is reproducible whatever the DataLoader
workers, and a resumed run draws what the uninterrupted one would have.

:class:`VolumeTiles` (validation): every volume cut into non-overlapping tiles of the patch
size (the last one of an axis padded), each with ``valid``, 1 on the voxels of the volume it
covers, so that summing over ``valid`` voxels per case scores whole volumes.
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset


def cut_window(x: torch.Tensor, starts, sizes) -> torch.Tensor:
    """``x[..., s0:s0+n0, s1:s1+n1, ...]`` over the last ``len(starts)`` axes, zeros where
    the window leaves ``x`` (starts may be negative)."""
    nd = len(starts)
    out = x.new_zeros((*x.shape[:-nd], *sizes))
    src, dst = [], []
    for s, n, full in zip(starts, sizes, x.shape[-nd:]):
        lo, hi = max(s, 0), min(s + n, full)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[(..., *dst)] = x[(..., *src)]
    return out


def item_generator(seed: int, epoch: int, item: int) -> torch.Generator:
    """The generator of one training item: a function of (seed, epoch, item) only."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 2_000_029 + item)
                                         % (2 ** 63))


def patch_start(shape, patch, centre, generator: torch.Generator) -> tuple[int, ...]:
    """Start of a patch in a volume of ``shape`` padded up to ``patch``: centred on the
    voxel ``centre`` and shifted to stay inside, or (``centre`` None) uniform."""
    starts = []
    for n, p, c in zip(shape, patch, centre if centre is not None else (None,) * len(patch)):
        top = max(n, p) - p
        if c is None:
            starts.append(int(torch.randint(0, top + 1, (), generator=generator)))
        else:
            starts.append(min(max(int(c) - p // 2, 0), top))
    return tuple(starts)


class VolumePatches(Dataset):
    """Random training patches (see the module docstring). ``volumes``: a
    :func:`~raunet_fast.data.volumes.build_volumes` data set with masks; ``patch`` (D, H, W);
    ``context`` (per axis): voxels of surroundings cut on each side of the patch, for
    augmentation (the trainer cuts the patch from the middle afterwards). Item ``j`` is a
    patch of volume ``j // patches_per_volume``; the last volume read is kept with its
    foreground voxels, so consecutive items of one volume read it once. Set the epoch with
    :meth:`set_epoch` before each epoch's DataLoader is made."""

    def __init__(self, volumes, patch, foreground_ratio: float = 0.33, seed: int = 0,
                 patches_per_volume: int = 1, context=(0, 0, 0)):
        if not 0.0 <= foreground_ratio <= 1.0:
            raise ValueError(f"foreground_ratio must be in [0, 1], got {foreground_ratio}")
        if len(patch) != 3 or len(context) != 3:
            raise ValueError(f"patch and context must be (D, H, W), got {patch}, {context}")
        self.volumes, self.patch, self.context = volumes, tuple(patch), tuple(context)
        self.foreground_ratio, self.seed = float(foreground_ratio), int(seed)
        self.patches_per_volume, self.epoch = int(patches_per_volume), 0
        self.names, self.channels = volumes.names, volumes.channels
        self.region_names, self.has_masks = volumes.region_names, volumes.has_masks
        self._last: tuple[int, object, list[torch.Tensor]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.names) * self.patches_per_volume

    def _volume(self, i: int):
        """Volume ``i`` and the coordinates of its foreground voxels per region present."""
        if self._last is None or self._last[0] != i:
            vol = self.volumes.volume(i)
            fg = [idx for idx in (r.nonzero() for r in vol.regions) if len(idx)]
            self._last = (i, vol, fg)
        return self._last[1], self._last[2]

    def draw(self, j: int) -> tuple[int, tuple[int, ...]]:
        """(volume, patch start) of item ``j`` in the current epoch."""
        i = j // self.patches_per_volume
        vol, fg = self._volume(i)
        g = item_generator(self.seed, self.epoch, j)
        centre = None
        if float(torch.rand((), generator=g, dtype=torch.float64)) < self.foreground_ratio \
                and fg:
            voxels = fg[int(torch.randint(0, len(fg), (), generator=g))]
            centre = voxels[int(torch.randint(0, len(voxels), (), generator=g))].tolist()
        return i, patch_start(vol.image.shape[1:], self.patch, centre, g)

    def __getitem__(self, j: int) -> dict:
        if j < 0 or j >= len(self):
            raise IndexError(j)
        i, start = self.draw(j)
        vol, _ = self._volume(i)
        starts = [s - c for s, c in zip(start, self.context)]
        sizes = [p + 2 * c for p, c in zip(self.patch, self.context)]
        return {"image": cut_window(vol.image, starts, sizes),
                "mask": cut_window(vol.regions, starts, sizes).float(), "case": i}


def tile_starts(size: int, tile: int) -> list[int]:
    """Starts of non-overlapping tiles covering ``size`` voxels (the last one padded)."""
    return list(range(0, max(size, 1), tile))


class VolumeTiles(Dataset):
    """Validation tiles (see the module docstring): :attr:`index` lists ``(case, z, y, x)``
    per item, in case order. ``shapes``: (D, H, W) per volume (default: read from each
    volume)."""

    def __init__(self, volumes, patch, shapes=None):
        self.volumes, self.patch = volumes, tuple(patch)
        self.names, self.channels = volumes.names, volumes.channels
        self.region_names, self.has_masks = volumes.region_names, volumes.has_masks
        if shapes is None:
            shapes = [tuple(volumes.volume(i).image.shape[1:]) for i in range(len(self.names))]
        self.shapes = [tuple(int(v) for v in s) for s in shapes]
        self.index = [(i, z, y, x) for i, (d, h, w) in enumerate(self.shapes)
                      for z in tile_starts(d, self.patch[0])
                      for y in tile_starts(h, self.patch[1])
                      for x in tile_starts(w, self.patch[2])]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> dict:
        i, *start = self.index[k]
        vol = self.volumes.volume(i)
        if tuple(vol.image.shape[1:]) != self.shapes[i]:
            raise ValueError(f"volume {self.names[i]} is {tuple(vol.image.shape[1:])}, its "
                             f"header said {self.shapes[i]}")
        valid = cut_window(torch.ones((1, *self.shapes[i])), start, self.patch)
        item = {"image": cut_window(vol.image, start, self.patch), "valid": valid, "case": i}
        if vol.regions is not None:
            item["mask"] = cut_window(vol.regions, start, self.patch).float()
        return item


def header_shapes(volumes) -> list[tuple[int, int, int]]:
    """(D, H, W) of every volume of a BraTS or NIfTI-folder data set from the NIfTI headers
    (no voxel is read)."""
    import nibabel as nib

    from .brats import case_files

    if hasattr(volumes, "image_files"):
        paths = [files[0] for files in volumes.image_files]
    else:
        paths = [case_files(folder)["flair"] for folder in volumes.slices.folders]
    shapes = []
    for p in paths:
        x, y, z = nib.load(str(p)).shape[:3]
        shapes.append((z, x, y))
    return shapes

"""NIfTI files: reading a volume with its voxel spacing, and writing label volumes with the
affine and header of the case they belong to."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

def read_nifti(path: Path, dims: tuple[int, ...] = (3,)) -> tuple[np.ndarray, tuple[float, ...]]:
    """The array of a NIfTI file (as stored, ``dims`` dimensions allowed) and its voxel
    spacing along the first three axes; an unreadable file, or one with another number of
    dimensions, is one error naming the file."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except Exception as e:  # nibabel / gzip / zlib raise many types
        raise ValueError(f"cannot read NIfTI file {path}: {e}") from e
    if data.ndim not in dims:
        raise ValueError(f"{path} holds a {data.ndim}-D array of shape {data.shape}; expected "
                         f"{' or '.join(f'{d}-D' for d in dims)}")
    return data, zooms


#: label map dtypes written as they are (anything else must fit uint8)
LABEL_DTYPES = (np.uint8, np.int16, np.int32)


def write_labels(labels: np.ndarray, reference: Path, path: Path) -> None:
    """Write a ``D x H x W`` label map (the package's axis order, i.e. ``Z x X x Y``) as a
    NIfTI volume ``X x Y x Z`` with the affine and header of ``reference`` (e.g. the case's
    flair), atomically. uint8 / int16 / int32 maps keep their dtype; other integer maps
    must fit uint8."""
    import nibabel as nib

    labels = np.asarray(labels)
    dtype = labels.dtype.type if labels.dtype.type in LABEL_DTYPES else np.uint8
    if dtype is np.uint8 and labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"a {labels.dtype} label map with values {labels.min()}..{labels.max()} "
                         f"does not fit uint8; pass it as int32")
    ref = nib.load(str(reference))
    header = ref.header.copy()
    header.set_data_dtype(dtype)
    header.set_slope_inter(1, 0)
    # D x H x W -> X x Y x Z (raunet_fast.data.volumes.to_nifti_axes for one channel)
    img = nib.Nifti1Image(np.ascontiguousarray(np.moveaxis(labels, 0, 2), dtype=dtype),
                          ref.affine, header)
    path = Path(path)
    tmp = path.with_name(f".{path.name[:-len('.nii.gz')]}.tmp{os.getpid()}.nii.gz")
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()

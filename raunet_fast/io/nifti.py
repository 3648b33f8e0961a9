"""NIfTI output: label volumes with the affine and header of the case they belong to."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def write_labels(labels: np.ndarray, reference: Path, path: Path) -> None:
    """Write a ``Z x X x Y`` label map as a uint8 NIfTI volume ``X x Y x Z`` with the affine
    and header of ``reference`` (e.g. the case's flair), atomically."""
    import nibabel as nib

    ref = nib.load(str(reference))
    header = ref.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1, 0)
    img = nib.Nifti1Image(np.ascontiguousarray(np.moveaxis(labels, 0, 2), dtype=np.uint8),
                          ref.affine, header)
    path = Path(path)
    tmp = path.with_name(f".{path.name[:-len('.nii.gz')]}.tmp{os.getpid()}.nii.gz")
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()

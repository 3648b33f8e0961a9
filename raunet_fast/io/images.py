"""Image files for inference: which files a path stands for, their channels, PNG output."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

#: suffixes of the files ``predict`` writes (``<stem>_mask.png``, ``<stem>_prob.png``)
MASK_SUFFIX = "_mask"
PROB_SUFFIX = "_prob"

#: PIL modes with one colour channel (an alpha channel does not count)
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def is_output_of(stem: str, stems: set[str]) -> bool:
    """Whether ``stem`` is a mask / probability file this command wrote for another image of
    the same folder (``--out`` equal to ``--input``): ``x_mask`` next to ``x``."""
    for suffix in (MASK_SUFFIX, PROB_SUFFIX):
        base, sep, rest = stem.rpartition(suffix)
        if sep and base in stems and (rest == "" or rest.startswith("_")):
            return True
    return False


def list_images(input: Path) -> list[Path]:
    """The images ``input`` stands for: the file itself, or the image files in the folder
    (sorted, hidden files and other extensions skipped, as the folder loader does)."""
    from ..data.common import IMAGE_EXTENSIONS
    from ..data.folder import images_by_stem

    if input.is_file():
        return [input]
    images = images_by_stem(input)  # stem -> path; two images with one stem are an error
    stems = set(images)
    paths = [p for stem, p in images.items() if not is_output_of(stem, stems)]
    if not paths:
        hint = ""
        subdirs = sorted(p.name for p in input.iterdir() if p.is_dir() and not p.name.startswith("."))
        if subdirs:
            shown = ", ".join(subdirs[:3]) + (", ..." if len(subdirs) > 3 else "")
            hint = f"; it has sub-folders ({shown}): pass the folder that holds the images"
        raise ValueError(f"--input {input} holds no images ({', '.join(IMAGE_EXTENSIONS)}){hint}")
    return paths


def check_image(path: Path, in_channels: int) -> str:
    """Open the header of ``path`` (cheap: no decoding) and check that its channels suit a
    checkpoint with ``in_channels`` inputs. Returns the PIL mode to decode it in."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode = im.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    gray = mode in GRAY_MODES
    if in_channels == 3 and gray:
        raise ValueError(f"image {path} has 1 channel (grayscale, PIL mode {mode}) but the "
                         f"checkpoint takes 3-channel RGB images; convert it to RGB first")
    if in_channels == 1 and not gray:
        raise ValueError(f"image {path} has colour channels (PIL mode {mode}) but the checkpoint "
                         f"takes 1-channel grayscale images; convert it to grayscale first")
    if in_channels not in (1, 3):
        raise ValueError(f"the checkpoint takes {in_channels}-channel input; images give 1 "
                         f"(grayscale) or 3 (RGB) channels, so {path} cannot be fed to it")
    return "RGB" if in_channels == 3 else "L"


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()

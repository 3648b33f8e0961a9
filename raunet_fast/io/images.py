"""Image files: which files a path stands for, one reader for every command, PNG output.

Every command (``train``, ``evaluate``, ``predict``, the data sets) decodes images through
:func:`read_image` and checks them through :func:`check_image`, so they accept and refuse
the same files with the same messages:

* channels: a model takes 1 (grayscale) or 3 (RGB) channels; an image with the other
  number is an error unless conversion was asked for (``convert=True``, the CLI's
  ``--convert-channels``);
* 16-bit grayscale (PIL modes ``I;16*``, and ``I`` holding values in 0..65535) is scaled to
  8 bits (``v * 255 / 65535``), never clipped; floating-point images (mode ``F``) and
  negative integers are refused;
* images over :func:`max_image_pixels` pixels are refused before they are decoded (a guard
  against decompression bombs); ``--max-image-pixels`` / ``RAUNET_MAX_IMAGE_PIXELS`` raise it.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

#: suffixes of the files ``predict`` writes (``<stem>_mask.png``, ``<stem>_prob.png``)
MASK_SUFFIX = "_mask"
PROB_SUFFIX = "_prob"

#: PIL modes with one colour channel (an alpha channel does not count)
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
#: PIL modes read as 16-bit data and scaled to 8 bits
WIDE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})

#: the environment variable holding the pixel limit (inherited by DataLoader workers)
MAX_PIXELS_ENV = "RAUNET_MAX_IMAGE_PIXELS"
#: default limit: PIL's own decompression-bomb error threshold (about 13,400 x 13,400)
DEFAULT_MAX_PIXELS = 178_956_970


def max_image_pixels() -> int:
    """The largest image (in pixels) the readers decode."""
    raw = os.environ.get(MAX_PIXELS_ENV)
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_PIXELS_ENV} must be a positive integer, got {raw!r}")
    return value


def set_max_image_pixels(pixels: int) -> None:
    """Raise (or lower) the pixel limit for this process and the processes it starts."""
    if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 1:
        raise ValueError(f"the image pixel limit must be a positive integer, got {pixels!r}")
    os.environ[MAX_PIXELS_ENV] = str(pixels)


def _too_large(path: Path, pixels: int | None, limit: int) -> ValueError:
    size = f"{pixels:,} pixels" if pixels else "more pixels than allowed"
    need = pixels or 2 * limit
    return ValueError(f"image {path} has {size}, over the limit of {limit:,} that guards "
                      f"against decompression bombs; pass --max-image-pixels {need} (or set "
                      f"{MAX_PIXELS_ENV}) to read it")


@contextmanager
def open_image(path: str | Path):
    """The opened (not yet decoded) PIL image of ``path``, its size checked against
    :func:`max_image_pixels`; every failure is a ValueError naming the file."""
    from PIL import Image, UnidentifiedImageError

    path, limit = Path(path), max_image_pixels()
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    if limit > DEFAULT_MAX_PIXELS:  # PIL's own guard would refuse what the user allowed
        Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise _too_large(path, int(found.group(1)) if found else None, limit) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    with im:
        if im.width * im.height > limit:
            raise _too_large(path, im.width * im.height, limit)
        yield im


def check_image(path: str | Path, in_channels: int, convert: bool = False) -> str:
    """Open the header of ``path`` (cheap: no decoding) and check that it can be fed to a
    model with ``in_channels`` inputs. Returns the PIL mode of the file."""
    with open_image(path) as im:
        mode = im.mode
    _check_mode(Path(path), mode, in_channels, convert)
    return mode


def _check_mode(path: Path, mode: str, in_channels: int, convert: bool) -> None:
    if in_channels not in (1, 3):
        raise ValueError(f"the model takes {in_channels}-channel input; images give 1 "
                         f"(grayscale) or 3 (RGB) channels, so {path} cannot be fed to it")
    if mode == "F":
        raise ValueError(f"image {path} holds floating-point pixels (PIL mode F); save it as "
                         f"8- or 16-bit integers")
    gray = mode in GRAY_MODES
    if convert or gray == (in_channels == 1):
        return
    if gray:
        raise ValueError(f"image {path} has 1 channel (grayscale, PIL mode {mode}) but the "
                         f"model takes 3-channel RGB images; convert it, or pass "
                         f"--convert-channels")
    raise ValueError(f"image {path} has colour channels (PIL mode {mode}) but the model takes "
                     f"1-channel grayscale images; convert it, or pass --convert-channels")


def read_image(path: str | Path, mode: str = "RGB", draft_size: tuple[int, int] | None = None,
               convert: bool = True) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an image as ``H x W x 3`` (``mode="RGB"``) or ``H x W`` (``mode="L"``) uint8.

    Returns ``(array, (H, W) of the file)``. ``convert=False`` refuses an image with the
    other number of channels (:func:`check_image`'s rule). 16-bit grayscale is scaled to 8
    bits. ``draft_size`` (H, W) lets JPEG decoding skip resolution that a later resize to
    that size would throw away (PIL ``draft``); the array is then smaller than the file,
    never smaller than ``draft_size``.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    path = Path(path)
    with open_image(path) as im:
        _check_mode(path, im.mode, 3 if mode == "RGB" else 1, convert)
        full = (im.height, im.width)
        try:
            if draft_size is not None and im.format == "JPEG":
                im.draft(mode, (draft_size[1], draft_size[0]))
            arr = _decoded(path, im, mode)
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"cannot read image {path}: {e}") from e
    return arr, full


def _decoded(path: Path, im, mode: str) -> np.ndarray:
    if im.mode not in WIDE_MODES:
        return np.asarray(im.convert(mode), dtype=np.uint8).copy()
    wide = np.asarray(im).astype(np.int64)
    if wide.size and (wide.min() < 0 or wide.max() > 65535):
        raise ValueError(f"integer pixels in {int(wide.min())}..{int(wide.max())}, outside "
                         f"the 16-bit range 0..65535")
    gray = ((wide * 255 + 32767) // 65535).astype(np.uint8)
    return gray if mode == "L" else np.repeat(gray[..., None], 3, axis=2)


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


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()

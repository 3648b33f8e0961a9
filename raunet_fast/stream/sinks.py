"""Outputs of ``raunet-fast stream``: the overlay video and the per-frame mask files.

The video is written to a hidden temporary file next to its final name and renamed when
it is complete: an interrupted or failed run leaves no half-written video. Mask files are
written atomically one by one.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from .sources import import_av

#: mask colours (RGB) of the overlay, one per foreground class / output channel in turn
PALETTE = ((255, 48, 48), (48, 220, 48), (64, 96, 255), (255, 220, 0), (230, 64, 230),
           (0, 220, 220))

#: codecs tried in turn per container, and their options (fast settings for real time)
CODECS = {"mp4": ("libx264", "mpeg4"), "avi": ("mpeg4",), "webm": ("libvpx-vp9", "libvpx")}
CODEC_OPTIONS = {"libx264": {"preset": "veryfast", "crf": "20"},
                 "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "30", "b": "0"},
                 "libvpx": {"deadline": "realtime", "cpu-used": "8", "crf": "10", "b": "2M"},
                 "mpeg4": {"qmin": "2", "qmax": "5"}}


def mask_layers(masks: list[np.ndarray], head: str) -> list[np.ndarray]:
    """Boolean ``H x W`` layers to colour: each foreground class of a softmax label map,
    else each mask (0/255) that is set."""
    if head == "softmax":
        labels = masks[0]
        return [labels == k for k in range(1, int(labels.max()) + 1)]
    return [m > 0 for m in masks]


def overlay(rgb: np.ndarray, layers: list[np.ndarray], alpha: float) -> np.ndarray:
    """``rgb`` with each layer's pixels blended towards its :data:`PALETTE` colour by
    ``alpha`` (later layers over earlier ones)."""
    out = rgb.copy()
    a = int(round(alpha * 256))
    for k, layer in enumerate(layers):
        if not layer.any():
            continue
        colour = np.asarray(PALETTE[k % len(PALETTE)], dtype=np.uint16)
        px = out[layer].astype(np.uint16)
        out[layer] = ((px * (256 - a) + colour * a + 128) >> 8).astype(np.uint8)
    return out


def even_size(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` padded by one edge row / column where its height / width is odd (4:2:0
    video needs even sizes)."""
    h, w = rgb.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return rgb
    return np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def pick_codec(fmt: str) -> str:
    av = import_av("writing video")
    for name in CODECS[fmt]:
        if name in av.codecs_available:
            return name
    raise ValueError(f"this PyAV build has no {fmt} encoder ({', '.join(CODECS[fmt])}); "
                     f"choose another --video-format")


class VideoSink:
    """An H.264 / MPEG-4 / VP9 video (by ``fmt``) at ``fps`` written frame by frame;
    opened on the first frame (its size is the video's), moved into place by
    ``close(ok=True)``, deleted by ``close(ok=False)``. A frame's ``index`` is its time
    stamp in frames, so skipped frames leave the previous one on screen."""

    def __init__(self, path: Path, fps: Fraction, fmt: str):
        self.path, self.fps, self.fmt = Path(path), fps, fmt
        self.codec = pick_codec(fmt)
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.container = self.stream = self.size = None
        self.frames = 0

    def _open(self, h: int, w: int) -> None:
        av = import_av("writing video")
        self.container = av.open(str(self.tmp), "w")
        self.stream = self.container.add_stream(self.codec, rate=self.fps,
                                                options=CODEC_OPTIONS.get(self.codec, {}))
        self.stream.height, self.stream.width = h, w
        self.stream.pix_fmt = "yuv420p"
        self.size = (h, w)

    def write(self, rgb: np.ndarray, index: int) -> None:
        av = import_av("writing video")
        rgb = even_size(rgb)
        if self.container is None:
            self._open(*rgb.shape[:2])
        if rgb.shape[:2] != self.size:
            raise ValueError(f"frame {index} is {rgb.shape[1]}x{rgb.shape[0]}, the video's "
                             f"frames are {self.size[1]}x{self.size[0]}: frames of one video "
                             f"must share a size (write --masks with --no-video instead)")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = index
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def close(self, ok: bool) -> Path | None:
        """Flush and close; returns the video's path (None when not kept or empty)."""
        if self.container is None:
            return None
        keep = ok and self.frames > 0
        try:
            if keep:
                self.container.mux(self.stream.encode(None))
        except BaseException:
            keep = False
            raise
        finally:
            self.container.close()
            self.container = None
            if not keep:
                self.tmp.unlink(missing_ok=True)
        if not keep:
            return None
        os.replace(self.tmp, self.path)
        return self.path


def mask_files(folder: Path, names: list[str], masks: list[np.ndarray]) -> dict[Path, bytes]:
    """PNG bytes of each mask under its file name in ``folder``."""
    from ..io.images import png_bytes

    return {folder / n: png_bytes(m) for n, m in zip(names, masks)}


def write_files(files: dict[Path, bytes]) -> None:
    from ..hub import atomic_write_bytes

    for path, data in files.items():
        atomic_write_bytes(path, data)

"""Frame sources of ``raunet-fast stream``: a video file, a folder of frames, a camera.

Each source is opened (and its first frame's size known) before anything is computed, so
a missing or unreadable input is reported at once. Video files and cameras are read with
PyAV (the ``video`` extra); every PyAV failure becomes a ValueError naming the input.
Frames are ``H x W x 3`` uint8 RGB arrays.
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import require

#: the extra that brings PyAV
VIDEO_EXTRA = "video"
#: frame rate of a folder of frames or a camera when none is given
DEFAULT_FPS = 25
CAMERA_PREFIX = "camera:"


def import_av(what: str):
    """PyAV, or :class:`~raunet_fast.errors.MissingExtra` naming the ``video`` extra."""
    return require("av", VIDEO_EXTRA, what)


def as_fraction(fps: float | Fraction) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


@dataclass
class Frame:
    """One frame on its way through the pipeline (the stages fill in the later fields)."""

    index: int          # position in the source, dropped frames counted
    name: str           # stem of its mask files
    rgb: np.ndarray     # H x W x 3 uint8
    t_ready: float      # time.perf_counter() when it was available: the latency's origin
    net_input: Any = None
    masks: list = field(default_factory=list)
    inference_s: float = 0.0
    outputs: dict = field(default_factory=dict)


class Source:
    """A sequence of named RGB frames: ``name`` (stem of the outputs), ``fps``, ``size``
    (H, W of the first frame), ``total`` (frame count, None when unknown), ``live``
    (a camera: frames come at their own pace)."""

    name: str
    fps: Fraction
    size: tuple[int, int]
    total: int | None = None
    live: bool = False

    def read(self) -> Iterator[tuple[str, np.ndarray]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def frames(self, prepare: Callable[[np.ndarray], Any], max_frames: int | None = None,
               paced: bool = False) -> Iterator[Frame]:
        """:class:`Frame` objects with ``net_input = prepare(rgb)``, at most ``max_frames``.
        ``paced``: frame ``i`` is not handed out before ``i / fps`` seconds after the first
        (a file played at its frame rate); its latency counts from then."""
        t0 = time.perf_counter()
        frames = self.read()
        for i in range(max_frames if max_frames is not None else sys.maxsize):
            due = t0 + i / float(self.fps)
            if paced and due > time.perf_counter():
                time.sleep(due - time.perf_counter())
            start = due if paced else time.perf_counter()
            item = next(frames, None)
            if item is None:
                return
            if self.live:  # a camera's frame exists once it is read
                start = time.perf_counter()
            frame = Frame(i, item[0], item[1], start)
            frame.net_input = prepare(frame.rgb)
            yield frame


def open_source(spec: str, fps: float | None = None) -> Source:
    """The source ``spec`` names: ``camera:N`` (or ``camera:/dev/videoN``), a folder of
    frames, or a video file."""
    if spec.startswith(CAMERA_PREFIX):
        return VideoSource.camera(spec[len(CAMERA_PREFIX):], fps)
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path, fps)
    if not path.exists():
        raise FileNotFoundError(f"--input {path} does not exist (a video file, a folder of "
                                f"frames or camera:N)")
    return VideoSource(path, fps)


def natural_key(name: str) -> list:
    """``frame_2`` before ``frame_10``: digit runs compare as numbers."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t)
            for t in re.split(r"(\d+)", name) if t]


class FolderSource(Source):
    """The images of a folder (:func:`~raunet_fast.io.images.list_images`), in natural name
    order; each frame is named after its file."""

    def __init__(self, folder: Path, fps: float | None = None):
        from ..io.images import list_images, open_image

        self.paths = sorted(list_images(folder), key=lambda p: natural_key(p.name))
        self.name, self.total = folder.name or "frames", len(self.paths)
        self.fps = as_fraction(fps or DEFAULT_FPS)
        with open_image(self.paths[0]) as im:
            self.size = (im.height, im.width)

    def read(self) -> Iterator[tuple[str, np.ndarray]]:
        from ..io.images import read_image

        for path in self.paths:
            yield path.stem, read_image(path, "RGB", convert=True)[0]


class VideoSource(Source):
    """The frames of the first video stream of a file or a camera device (PyAV)."""

    def __init__(self, path: Path | str, fps: float | None = None, fmt: str | None = None,
                 name: str | None = None):
        av = import_av("reading video")
        self.what = f"camera {path}" if fmt else f"video {path}"
        self.name, self.live = name or Path(path).stem, fmt is not None
        try:
            options = {"framerate": str(fps)} if fmt and fps else {}
            self.container = av.open(str(path), format=fmt, options=options)
        except (av.error.FFmpegError, OSError) as e:
            raise self._error(e) from None
        if not self.container.streams.video:
            self.container.close()
            raise ValueError(f"cannot read {self.what}: it holds no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"  # frame- and slice-threaded decoding
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = as_fraction(fps or rate or DEFAULT_FPS)
        self.total = self.stream.frames or None
        self.size = (self.stream.codec_context.height, self.stream.codec_context.width)

    @classmethod
    def camera(cls, device: str, fps: float | None = None) -> "VideoSource":
        """``N`` or a device path: the platform's capture device (Linux v4l2 /dev/videoN,
        macOS AVFoundation N, Windows DirectShow ``video=N``)."""
        if sys.platform.startswith("linux"):
            path, fmt = (f"/dev/video{device}" if device.isdigit() else device), "v4l2"
        elif sys.platform == "darwin":
            path, fmt = device, "avfoundation"
        else:
            path, fmt = f"video={device}", "dshow"
        name = f"camera{device}" if device.isdigit() else Path(device).name
        return cls(path, fps, fmt, name)

    def _error(self, e: BaseException) -> ValueError:
        reason = getattr(e, "strerror", None) or str(e)
        return ValueError(f"cannot read {self.what}: {' '.join(str(reason).split())}")

    def read(self) -> Iterator[tuple[str, np.ndarray]]:
        import av

        n = 0
        try:
            for frame in self.container.decode(self.stream):
                yield f"frame_{n:06d}", frame.to_ndarray(format="rgb24")
                n += 1
        except av.error.FFmpegError as e:
            raise self._error(e) from None
        if n == 0:
            raise ValueError(f"cannot read {self.what}: it holds no decodable frames")

    def close(self) -> None:
        self.container.close()

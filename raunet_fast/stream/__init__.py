"""Real-time segmentation of videos, folders of frames and cameras (``raunet-fast stream``).

* :mod:`.sources`: video files and cameras (PyAV, the ``video`` extra), folders of frames;
* :mod:`.pipeline`: the staged, bounded-queue pipeline (threads, clean shutdown);
* :mod:`.segment`: frames -> masks, as ``predict`` computes them;
* :mod:`.sinks`: the overlay video and the mask files;
* :mod:`.stats`: frames per second, latency percentiles, peak memory;
* :mod:`.run`: :class:`StreamRun`, the command, and :func:`stream`, its Python API.
"""
from .run import StreamRun, stream

__all__ = ["StreamRun", "stream"]

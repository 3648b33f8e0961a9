"""``raunet-fast stream``: a video, a folder of frames or a camera, segmented frame by
frame into an overlay video and / or per-frame masks, with decoding, inference, overlay
and writing overlapped in threads (:mod:`raunet_fast.stream.pipeline`).

The model is the checkpoint's fused inference form by default
(:func:`~raunet_fast.inference.build_inference_model`, ``dtype="auto"``), captured as
CUDA graphs on a GPU (:class:`~raunet_fast.inference.CUDAGraphRunner`); the reference
model where the fused one does not apply (norm other than batch, int8 checkpoints) or
with ``--no-fused``. It is warmed up on a black frame of the input's size before the
timed run. Masks are those ``predict`` writes for the same frames saved as images and
the same options (``--window`` = the training size unless ``--image-size`` is given).
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch

from ..config import StreamConfig, expand_extent, fit_size, write_config
from ..engine.device import resolve_device, set_threads
from ..engine.prediction import output_head, output_names, region_names
from ..engine.predictor import (build_forward, load_ensemble, load_model, missing_size_error)
from ..io.checkpoints import read_preprocessing
from ..io.outputs import check_out
from .segment import FrameSegmenter
from .sinks import VideoSink, mask_files, mask_layers, overlay, write_files
from .sources import Frame, open_source
from .stats import StreamStats

#: files written next to the outputs: the resolved configuration and the numbers
CONFIG_FILE, STATS_FILE = "stream_config.json", "stream_stats.json"
MASKS_DIR = "masks"


def stream_forward(model, device: torch.device, cfg: StreamConfig, extra=()):
    """The forward module and its name: the fused model when asked and possible (CUDA
    graphs on CUDA), else the reference model with a warning."""
    from ..inference import CUDAGraphRunner

    try:
        forward, name = build_forward(model, device, cfg.fused, cfg.dtype, cfg.tta, extra)
    except ValueError as e:
        if not cfg.fused:
            raise
        warnings.warn(f"the fused model does not apply ({e}); running the reference "
                      f"model", stacklevel=2)
        forward, name = build_forward(model, device, False, None, cfg.tta, extra)
        return forward, name
    if cfg.fused and device.type == "cuda":
        forward, name = CUDAGraphRunner(forward).eval(), f"{name} + CUDA graphs"
    return forward, name


def fit_frames(cfg: StreamConfig, prep: dict, model, checkpoint: Path):
    """(window, size): windows of ``--window``, else of the training patch or size; or
    with ``--image-size`` a resize to it."""
    multiple = model.size_multiple
    if cfg.image_size is not None:
        return None, fit_size("--image-size", cfg.image_size, multiple)
    if cfg.window is not None:
        window = expand_extent("--window", cfg.window, getattr(model, "spatial_dims", 2))
        return fit_size("--window", window, multiple), None
    trained = prep.get("patch") or prep.get("image_size")
    if not trained:
        raise missing_size_error(checkpoint)
    return tuple(trained), None


class StreamRun:
    """One ``stream`` run (see the module docstring): :meth:`run` returns a summary."""

    def __init__(self, cfg: StreamConfig):
        self.cfg = cfg.validate()
        self.checkpoint, self.out = Path(cfg.checkpoint), Path(cfg.out)
        self.video = self.stats = self.source = None

    def setup(self) -> None:
        cfg = self.cfg
        cfg.apply_reading_options()
        set_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.source = open_source(cfg.input, cfg.fps)  # a bad input fails before the model
        self.prep = read_preprocessing(self.checkpoint)
        self.model = load_model(self.checkpoint, self.device)
        if getattr(self.model, "spatial_dims", 2) == 3:
            raise ValueError(f"stream segments 2-D frames; {self.checkpoint} is a 3-D (volume) "
                             f"model: use predict")
        if self.model.in_channels not in (1, 3):
            raise ValueError(f"the model in {self.checkpoint} takes {self.model.in_channels} "
                             f"channels; stream feeds it RGB frames (or their luma)")
        self.head = output_head(self.prep, self.model.out_channels, cfg.threshold is not None)
        threshold = float(self.prep.get("threshold", 0.5) if cfg.threshold is None
                          else cfg.threshold)
        window, size = fit_frames(cfg, self.prep, self.model, self.checkpoint)
        extra = load_ensemble(self.checkpoint, cfg.ensemble, self.prep, self.model, self.device)
        forward, self.model_name = stream_forward(self.model, self.device, cfg, extra)
        self.segmenter = FrameSegmenter(
            forward, self.device, self.model.in_channels, self.head, threshold, window,
            0.25 if cfg.overlap is None else cfg.overlap, size, cfg.batch_size)
        self._check_outputs()

    def _check_outputs(self) -> None:
        """Nothing already in ``--out`` is replaced unless ``--overwrite``."""
        cfg = self.cfg
        self.video_path = self.out / f"{self.source.name}_overlay.{cfg.video_format}"
        check_out(self.out, [self.video_path.name] if cfg.video else [], cfg.overwrite)
        self.video = (VideoSink(self.video_path, self.source.fps, cfg.video_format)
                      if cfg.video else None)  # PyAV and an encoder are there before the model
        masks = self.out / MASKS_DIR
        if cfg.masks and not cfg.overwrite and masks.is_dir() and any(masks.iterdir()):
            raise ValueError(f"--out {self.out} already holds masks in {masks}; pass "
                             f"--overwrite to replace them, or choose another --out")
        self.regions = region_names(self.prep, self.model.out_channels)

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            self.setup()
            self.out.mkdir(parents=True, exist_ok=True)
            if self.cfg.masks:
                (self.out / MASKS_DIR).mkdir(exist_ok=True)
            self.segmenter.warmup(self.source.size)
            setup_s = time.perf_counter() - t0
            summary = self._stream()
        finally:
            if self.source is not None:
                self.source.close()
        summary.update(setup_s=setup_s, model=self.model_name, input=str(self.cfg.input),
                       video=str(self.video_path) if self.video_written else None,
                       masks=str(self.out / MASKS_DIR) if self.cfg.masks else None,
                       device=str(self.device))
        from ..hub import atomic_write_json

        write_config(self.cfg, self.out, CONFIG_FILE)
        atomic_write_json(self.out / STATS_FILE, summary)
        return summary

    def _stream(self) -> dict[str, Any]:
        from tqdm import tqdm

        from .pipeline import Pipeline

        cfg, src = self.cfg, self.source
        self.stats = StreamStats(self.device)
        total = min(filter(None, (src.total, cfg.max_frames)), default=None)
        self.bar = tqdm(total=total, desc="stream", unit="frame", disable=not cfg.progress)
        frames = src.frames(self.segmenter.net_input, cfg.max_frames,
                            paced=cfg.realtime and not src.live)
        pipe = Pipeline(frames, [self._infer, self._compose, self._write], cfg.queue_size,
                        drop_stale=cfg.realtime)
        ok = False
        try:
            self.stats.start()
            pipe.run()
            ok = True
        finally:
            self.stats.stop()
            self.bar.close()
            self.video_written = self.video is not None and \
                self.video.close(ok) is not None
        return dict(self.stats.summary(pipe.dropped), interrupted=pipe.interrupted)

    # ------------------------------------------------------------------ stages
    def _infer(self, frame: Frame) -> Frame:
        t = time.perf_counter()
        frame.masks = self.segmenter.masks(frame.net_input, frame.rgb.shape[:2])
        frame.inference_s = time.perf_counter() - t
        frame.net_input = None
        return frame

    def _compose(self, frame: Frame) -> Frame:
        """The overlay and the mask files' bytes (CPU work next to the model's)."""
        if self.video is not None:
            frame.outputs["overlay"] = overlay(frame.rgb, mask_layers(frame.masks, self.head),
                                               self.cfg.alpha)
        if self.cfg.masks:
            names = output_names(frame.name, self.head, self.regions, False)
            frame.outputs["files"] = mask_files(self.out / MASKS_DIR, names, frame.masks)
        return frame

    def _write(self, frame: Frame) -> None:
        if self.video is not None:
            self.video.write(frame.outputs["overlay"], frame.index)
        write_files(frame.outputs.get("files", {}))
        self.stats.record(time.perf_counter() - frame.t_ready, frame.inference_s)
        self.bar.update(1)


def stream(checkpoint, input, out, **options) -> dict[str, Any]:
    """Segment ``input`` (a video file, a folder of frames, ``camera:N``) with
    ``checkpoint`` into ``out`` (Python API of ``raunet-fast stream``; ``options``: the
    fields of :class:`~raunet_fast.config.StreamConfig`). Returns the summary (frames,
    dropped, fps, latency_ms, inference_ms, peak memory, ...)."""
    cfg = StreamConfig.from_dict(dict(options, checkpoint=checkpoint, input=input, out=out),
                                 where="stream()")
    return StreamRun(cfg).run()

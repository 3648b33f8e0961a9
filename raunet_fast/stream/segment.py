"""Frames -> masks, exactly as ``raunet-fast predict`` turns an image file into masks.

Two ways to fit a frame to the network, as in ``predict``:

* windows (the default for ``stream``): the frame at its own resolution, in overlapping
  windows of the training size (:func:`~raunet_fast.sliding_window.sliding_window_inference`,
  blended); a frame no larger than a window is one window;
* resize (``--image-size``): the frame resized to the network size as in training, the
  logits resized back.

Frames are RGB; a 1-channel model gets their luma (PIL's ``convert("L")``, ITU-R 601).
"""
from __future__ import annotations

import numpy as np
import torch

from ..engine.prediction import mask_tensors
from ..engine.predictor import resize_logits


class FrameSegmenter:
    """``net_input(rgb)`` (CPU work, in the decoding thread) then ``masks(x, size)`` (the
    model, in the inference thread): uint8 masks as ``predict`` writes them."""

    def __init__(self, forward, device: torch.device, in_channels: int, head: str,
                 threshold: float, window=None, overlap: float = 0.25, size=None,
                 batch_size: int = 8):
        if (window is None) == (size is None):
            raise ValueError("give a window (sliding windows) or a size (resize), one of two")
        self.forward, self.device, self.in_channels = forward, device, in_channels
        self.head, self.threshold = head, threshold
        self.window, self.overlap, self.size = window, overlap, size
        self.batch_size = batch_size

    def net_input(self, rgb: np.ndarray) -> torch.Tensor:
        """``C x H x W`` uint8 at the frame's size (windows), or float32 in [0, 1] at the
        network size (resize)."""
        from ..data.common import resize_pair

        image = rgb
        if self.in_channels == 1:
            from PIL import Image

            image = np.array(Image.fromarray(rgb).convert("L"))  # writable, for torch
        if self.size is not None:
            return resize_pair(image, None, self.size)[0]
        x = torch.from_numpy(np.ascontiguousarray(image))
        return x[None] if x.dim() == 2 else x.permute(2, 0, 1)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, size) -> torch.Tensor:
        """``K x H x W`` float32 logits at ``size`` (the frame's), on the device."""
        from ..sliding_window import sliding_window_inference

        x = x.to(self.device, non_blocking=True)
        if self.window is not None:
            out = sliding_window_inference(self.forward, x[None], self.window,
                                           overlap=self.overlap, batch_size=self.batch_size,
                                           device=self.device)
        else:
            out = self.forward(x[None]).float()
        return resize_logits(out, size)[0]

    def masks(self, x: torch.Tensor, size) -> list[np.ndarray]:
        masks, _ = mask_tensors(self.logits(x, size), self.head, self.threshold)
        return [m.cpu().numpy() for m in masks]

    def warmup(self, size, calls: int = 3) -> None:
        """Run a black frame of ``size`` a few times: autotuning, CUDA graph capture and
        allocator growth happen before the timed frames."""
        x = self.net_input(np.zeros((*size, 3), dtype=np.uint8))
        for _ in range(calls):
            self.masks(x, size)

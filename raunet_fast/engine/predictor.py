"""The Predictor: a checkpoint (plus ensemble members, TTA, the fused model, a precision,
sliding windows) ready to turn images and volumes into logits and label maps. ``predict``
and ``evaluate`` both build one; neither reaches into the other."""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..io.checkpoints import (PREPROCESSING_NAME, check_checkpoint_folder,
                              read_preprocessing)
from .device import autocast

#: preprocessing.json keys that members of an ensemble must share with the first checkpoint
ENSEMBLE_KEYS = ("dataset", "image_size", "patch", "crop", "output", "regions")


def load_ensemble(checkpoint: Path, extra, prep: dict[str, Any], model, device,
                  same_split: bool = False) -> list:
    """The models of the ``extra`` checkpoints (an ensemble with ``model``, the one of
    ``checkpoint``): each must be a checkpoint folder whose preprocessing (:data:`ENSEMBLE_KEYS`)
    and input / output channels match the first's. ``same_split`` (scoring data sets split by
    ``split_seed``): the members must share the split too, or one member's training cases
    would be among the cases scored."""
    from ..hub import from_pretrained

    models = []
    for ck in extra or ():
        ck = Path(ck)
        check_checkpoint_folder(ck)
        p = read_preprocessing(ck)
        for key in ENSEMBLE_KEYS + (("split_seed",) if same_split else ()):
            if p.get(key) != prep.get(key):
                raise ValueError(f"--ensemble {ck}: its preprocessing {key!r} is {p.get(key)!r}, "
                                 f"{checkpoint}'s is {prep.get(key)!r}; ensemble members must "
                                 f"be trained alike")
        m = from_pretrained(ck, map_location=device).eval()
        if (m.in_channels, m.out_channels) != (model.in_channels, model.out_channels):
            raise ValueError(f"--ensemble {ck}: {m.in_channels} -> {m.out_channels} channels, "
                             f"{checkpoint}: {model.in_channels} -> {model.out_channels}")
        models.append(m)
    return models


def load_model(checkpoint: Path, device: torch.device):
    """The model of a checkpoint folder: an fp32 one (``from_pretrained``, eval mode), or
    an int8 one written by ``raunet-fast quantize`` (:class:`~raunet_fast.quantize.Int8Model`,
    CPU only)."""
    from ..hub import from_pretrained
    from ..quantize import Int8Model, is_quantized

    if is_quantized(checkpoint):
        if device.type != "cpu":
            raise ValueError(f"{checkpoint} is an int8 model for the CPU; pass --device cpu")
        return Int8Model(checkpoint)
    check_checkpoint_folder(checkpoint)
    return from_pretrained(checkpoint, map_location=device).eval()


def build_forward(model, device: torch.device, fused: bool, dtype: str | None,
                  tta: bool = False, ensemble=()):
    """``model`` itself, or with ``fused`` its folded, fused inference form
    (:func:`~raunet_fast.inference.build_inference_model`, backend ``auto``) in ``dtype``
    (``fp32`` / ``bf16`` / ``fp16``; None: fp32 on CPU, bf16 on CUDA); with ``tta`` wrapped
    in :class:`~raunet_fast.tta.FlipTTA` (mean over 4 flips, volumes 8); with ``ensemble``
    (more models) the mean of all of them (:class:`~raunet_fast.tta.Ensemble`, each fused as asked). Returns
    the module and a short description ("reference", "fused bf16", "... + flip TTA")."""
    from ..tta import Ensemble, FlipTTA

    if ensemble:
        members = [build_forward(m, device, fused, dtype)[0] for m in (model, *ensemble)]
        name = f"{build_forward(model, device, fused, dtype)[1]} ensemble of {len(members)}"
        fwd = Ensemble(members)
        return (FlipTTA(fwd), f"{name} + flip TTA") if tta else (fwd, name)
    if tta:
        fwd, name = build_forward(model, device, fused, dtype)
        return FlipTTA(fwd), f"{name} + flip TTA"
    if not fused:
        return model, "int8" if type(model).__name__ == "Int8Model" else "reference"
    if not isinstance(model, torch.nn.Module):
        raise ValueError("--fused builds the fused form of an fp32 checkpoint; this model "
                         "is already compiled for deployment (int8 / ONNX): drop --fused")
    from ..inference import DTYPE_NAMES, build_inference_model, inference_dtype

    dt = inference_dtype(dtype, device)
    try:
        fast = build_inference_model(model.eval(), dtype=dt)
    except ValueError as e:
        raise ValueError(f"--fused: {e}") from e
    return fast, "fused " + {v: k for k, v in DTYPE_NAMES.items()}[dt]


def default_window(window, overlap, image_size, patch):
    """The sliding window and overlap to predict with: ``window`` as given, else the
    checkpoint's training ``patch`` when no image size is given either (None: resize, no
    windows; an ``overlap`` without a window is then an error)."""
    if window is None and image_size is None and patch:
        window = patch
    if window is None and overlap is not None:
        raise ValueError("--overlap applies to --window (sliding-window prediction)")
    return (None if window is None else tuple(window)), (0.25 if overlap is None else overlap)


def resolve_image_size(checkpoint: Path, prep: dict[str, Any], image_size, window,
                       action: str = "scored on"):
    """The network input size: ``image_size``, else the checkpoint's; an error when neither
    a size nor a window is known, a warning when a patch-trained model is resized."""
    if image_size is None and prep.get("image_size") and window is None:
        image_size = tuple(prep["image_size"])
    if image_size is not None and prep.get("patch"):
        warnings.warn(f"{checkpoint} was trained on {prep['patch']} patches at native "
                      f"resolution; --image-size resizes the images it is {action}")
    return image_size


def missing_size_error(checkpoint: Path) -> ValueError:
    has = (Path(checkpoint) / PREPROCESSING_NAME).is_file()
    return ValueError(f"{checkpoint} has no "
                      f"{'image_size in its ' if has else ''}{PREPROCESSING_NAME} (the size it "
                      f"was trained at); pass --image-size, or --window for a model trained "
                      f"on patches")


def check_channels(model, in_ch: int, out_ch: int, checkpoint: Path) -> None:
    if model.in_channels != in_ch or model.out_channels != out_ch:
        raise ValueError(f"the model in {checkpoint} has {model.in_channels} input / "
                         f"{model.out_channels} output channels; this data set needs "
                         f"{in_ch} / {out_ch}")


class Predictor:
    """Logits and label maps from a forward module (a model, fused, TTA, an ensemble).

    ``batch_size`` images (BraTS: slices; windows) per call, under autocast in
    ``amp_dtype`` when given; outputs are float32 on the CPU. ``progress``: windowed
    prediction shows a bar per image (windows, megapixels / s)."""

    def __init__(self, forward, device: torch.device, amp_dtype: torch.dtype | None = None,
                 batch_size: int = 8, name: str = "reference", progress: bool = False):
        self.forward, self.device, self.amp_dtype = forward, device, amp_dtype
        self.batch_size, self.name, self.progress = batch_size, name, progress

    @classmethod
    def from_model(cls, model, device: torch.device, *, fused: bool = False,
                   dtype: str | None = None, tta: bool = False, ensemble=(),
                   amp_dtype: torch.dtype | None = None, batch_size: int = 8) -> "Predictor":
        forward, name = build_forward(model, device, fused, dtype, tta, ensemble)
        return cls(forward, device, amp_dtype, batch_size, name)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.amp_dtype):
            return self.forward(x)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``N x C x H x W`` -> ``N x K x H x W`` logits, ``batch_size`` at a time."""
        outs = [self._run(x[i:i + self.batch_size].to(self.device)).float().cpu()
                for i in range(0, x.shape[0], self.batch_size)]
        return torch.cat(outs)

    @torch.no_grad()
    def logits_windowed(self, x: torch.Tensor, window, overlap: float) -> torch.Tensor:
        """``C x H x W`` image (float, or uint8 scaled by 1/255 a batch of windows at a
        time) or ``C x D x H x W`` volume -> ``K x H x W`` (``K x D x H x W``) float32 logits
        at its own resolution, from overlapping windows (``batch_size`` windows per call)."""
        from ..sliding_window import sliding_window_inference

        return sliding_window_inference(self._run, x[None], window, overlap=overlap,
                                        batch_size=self.batch_size, device=self.device,
                                        progress=self.progress)[0].cpu()

    def predict_image(self, x: torch.Tensor, full_size, window=None,
                      overlap: float = 0.25) -> torch.Tensor:
        """``C x h x w`` network input -> ``K x H x W`` logits at ``full_size`` (H, W)."""
        if window is not None:
            logits = self.logits_windowed(x, window, overlap)[None]
        else:
            logits = self.logits(x[None])
        return resize_logits(logits, full_size)[0]

    def predict_volume(self, vol: torch.Tensor, crop, image_size, threshold: float) -> np.ndarray:
        """BraTS: one case's preprocessed volume ``Z x 4 x X x Y`` -> its ``Z x X x Y`` uint8
        label map 0/1/2/4: the axial slices cropped / resized as in training, predicted,
        pasted back into the full slice grid, each region (WT, TC, ET) thresholded and the
        regions re-stacked into labels (ET over TC over WT, so they are nested)."""
        from ..data.brats import prepare_slices, regions_to_labels, restore_slices

        logits = self.logits(prepare_slices(vol, crop, image_size))
        logits = restore_slices(logits, vol.shape[-2:], crop)
        cut = math.log(threshold / (1 - threshold))
        return regions_to_labels((logits > cut).permute(1, 0, 2, 3).numpy())


def resize_logits(logits: torch.Tensor, size) -> torch.Tensor:
    """``N x K x h x w`` -> ``N x K x H x W`` (bilinear) when the sizes differ."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)

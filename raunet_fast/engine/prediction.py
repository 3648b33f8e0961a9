"""``predict``: masks for new data (no ground truth) from a trained checkpoint.

2-D checkpoints (ISIC 2018, image folders): the input is an image file or a folder of
images. Each image is decoded and resized exactly as in training and evaluation (the
checkpoint's ``preprocessing.json``), the logits are resized back to the image's own size
and written to the output folder as

* ``<stem>_mask.png``: 0/255 mask (sigmoid probability > threshold), or for a multi-class
  checkpoint (``"output": "softmax"`` in ``preprocessing.json``) the label map, one class
  index per pixel; a multi-label sigmoid checkpoint (several output channels) writes one
  ``<stem>_mask_<region>.png`` per channel;
* with ``probabilities``: ``<stem>_prob.png``, the foreground probability as 8-bit
  (0..255; softmax: 1 - P(class 0)), ``<stem>_prob_<region>.png`` per channel likewise.

With a window each 2-D image is not resized: the network runs at the image's own
resolution on overlapping windows, blended.

BraTS checkpoints: the input is a case folder (flair, t1, t1ce and t2 NIfTI files) or a
folder of case folders; each case goes through the slice-wise inference and label
re-stacking of evaluation and is written as ``<case>_pred_seg.nii.gz`` (uint8 labels
0/1/2/4, the flair's affine and header).

3-D checkpoints (``spatial_dims=3``): BraTS as above, or for a NIfTI-folder checkpoint a
``.nii.gz`` / ``.nii`` file, a folder of them (``<case>_0000`` ... per channel allowed) or a
NIfTI folder with ``images/``; each volume is predicted whole in 3-D windows
(:mod:`raunet_fast.engine.volume_inference`, as evaluation does) and written as
``<case>_pred_seg.nii.gz`` (BraTS) or ``<case>.nii.gz`` (the checkpoint's label values,
uint8 where they fit), with the input's affine and header.

Existing output files are never replaced unless ``overwrite``; that is checked for every
output before anything is computed.
"""
from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..config import PredictConfig, check_threshold, expand_extent, fit_size, write_config
from ..io.checkpoints import read_preprocessing
from ..io.images import MASK_SUFFIX, PROB_SUFFIX, check_image, list_images, png_bytes
from ..io.outputs import check_out
from . import distributed as dist
from .device import resolve_device, set_threads
from . import volume_inference as v3d
from .predictor import (Predictor, check_channels, default_window, load_ensemble, load_model,
                        missing_size_error, resize_logits, resolve_image_size)

BRATS_SUFFIX = "_pred_seg.nii.gz"
#: the resolved configuration of the latest run, next to the masks
CONFIG_FILE = "predict_config.json"


def brats_cases(input: Path, strict: bool = True) -> list[Path]:
    """The case folders ``input`` stands for: itself when it holds ``<name>_flair.nii.gz``,
    else the ``BraTS2021_<5 digits>`` folders at or below it."""
    from ..data.brats import case_files, find_cases

    if not input.is_dir():
        if strict:
            raise ValueError(f"--input {input} is a file; this checkpoint was trained on BraTS: "
                             f"pass a case folder (BraTS2021_xxxxx/ with the flair, t1, t1ce "
                             f"and t2 NIfTI files) or a folder of case folders")
        return []
    if case_files(input)["flair"].is_file():
        return [input]
    cases = [folder for _, folder in sorted(find_cases(input).items())]
    if not cases and strict:
        raise ValueError(f"--input {input} holds no BraTS case folders (BraTS2021_<5 digits>/ "
                         f"with BraTS2021_<id>_flair.nii.gz, _t1, _t1ce, _t2); this checkpoint "
                         f"was trained on BraTS")
    return cases


def brats_files_exist(cases: list[Path]) -> None:
    """Every image file of the BraTS case folders is there (before anything is computed)."""
    from ..data.brats import case_files

    for folder in cases:
        for mod, f in case_files(folder).items():
            if mod != "seg" and not f.is_file():
                raise FileNotFoundError(f"BraTS file {f} does not exist")


def check_case_channels(path: Path, files: list[Path], name: str, channels: int,
                        checkpoint: Path) -> int:
    """A NIfTI case's channel count (from its headers), or an error when the model in
    ``checkpoint`` takes another (``path``: the file named in messages)."""
    got = v3d.case_channels(files)
    if got != channels:
        raise ValueError(f"case {name} ({path}) has {got} channel{'s' * (got != 1)}; the model "
                         f"in {checkpoint} takes {channels}")
    return got


def input_kind(prep: dict[str, Any], model, input: Path) -> str:
    """``"brats"`` or ``"2d"``: from the data set the checkpoint was trained on, else from
    the input (BraTS case folders) and the model (4 input channels)."""
    dataset = prep.get("dataset")
    if dataset in ("brats2021", "isic2018", "folder"):
        return "brats" if dataset == "brats2021" else "2d"
    if model.in_channels == 4 and input.is_dir() and brats_cases(input, strict=False):
        return "brats"
    return "2d"


def region_names(prep: dict[str, Any], n: int) -> list[str]:
    names = prep.get("regions")
    if isinstance(names, list) and len(names) == n and all(isinstance(r, str) for r in names):
        return names
    return [f"c{i}" for i in range(n)]


def output_names(stem: str, head: str, regions: list[str], probabilities: bool) -> list[str]:
    parts = [""] if head in ("binary", "softmax") else [f"_{r}" for r in regions]
    names = [f"{stem}{MASK_SUFFIX}{p}.png" for p in parts]
    if probabilities:
        names += [f"{stem}{PROB_SUFFIX}{p}.png" for p in parts]
    return names


def output_head(prep: dict[str, Any], out_channels: int, threshold_given: bool) -> str:
    """How logits become masks: ``binary``, ``multilabel`` (sigmoid) or ``softmax`` (from
    the checkpoint's ``"output"``); ``threshold_given``: --threshold was passed (refused
    for softmax)."""
    if not str(prep.get("output", "sigmoid")).lower().startswith("softmax"):
        return "binary" if out_channels == 1 else "multilabel"
    if threshold_given:
        raise ValueError("--threshold applies to sigmoid outputs; this checkpoint's output "
                         "is softmax (its label map takes the most probable class)")
    if out_channels > 256:
        raise ValueError(f"{out_channels} classes do not fit an 8-bit label map")
    return "softmax"


def mask_tensors(logits: torch.Tensor, head: str, threshold: float):
    """``K x H x W`` logits -> (masks, probabilities) on the logits' device: binary /
    multilabel: one uint8 0/255 mask per channel (sigmoid > threshold); softmax: the uint8
    label map, and 1 - P(class 0) as the probability."""
    if head == "softmax":
        prob = torch.softmax(logits, dim=0)
        return [prob.argmax(0).to(torch.uint8)], [1.0 - prob[0]]
    prob = torch.sigmoid(logits)
    return [(p > threshold).to(torch.uint8) * 255 for p in prob], list(prob)


def bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: list, ahead: int):
    """``fn`` over ``items`` in ``pool``, in order, at most ``ahead`` items decoded ahead of
    the consumer (memory stays bounded on large folders)."""
    pending: deque[Future] = deque()
    it = iter(items)
    while True:
        while len(pending) < ahead:
            item = next(it, None)
            if item is None:
                break
            pending.append(pool.submit(fn, item))
        if not pending:
            return
        yield pending.popleft().result()


class PredictionRun:
    """One ``predict`` run (see the module docstring): :meth:`run` returns a summary (files
    written, images or cases and slices, seconds, images per second)."""

    def __init__(self, cfg: PredictConfig):
        self.cfg = cfg.validate()
        self.checkpoint, self.input, self.out = (Path(cfg.checkpoint or cfg.onnx),
                                                 Path(cfg.input), Path(cfg.out))
        self.workers = (min(4, os.cpu_count() or 1) if cfg.num_workers is None
                        else cfg.num_workers)
        self.errors: list[str] = []  # bad files skipped (skip_errors)
        self.skipped = 0  # images whose outputs existed (skip_existing)

    def setup(self) -> None:
        cfg = self.cfg
        cfg.apply_reading_options()
        set_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        prep, self.model = self._load_model()
        self.prep = prep
        if not self.input.exists():
            raise FileNotFoundError(f"--input {self.input} does not exist")
        if v3d.is_volume_model(self.model):
            self._setup_volumes(prep)
        else:
            self._setup_images(prep)
        self.extra = load_ensemble(self.checkpoint, cfg.ensemble, prep, self.model, self.device)

    def _setup_threshold(self, prep: dict[str, Any]) -> None:
        cfg = self.cfg
        self.threshold = float(prep.get("threshold", 0.5) if cfg.threshold is None
                               else cfg.threshold)
        check_threshold(self.threshold)
        self.amp_dtype = self._autocast_dtype()

    def _setup_volumes(self, prep: dict[str, Any]) -> None:
        """A 3-D model: whole volumes in 3-D windows (default: the training patch)."""
        cfg = self.cfg
        v3d.check_volume_options(cfg.image_size)
        if cfg.probabilities:
            raise ValueError("--probabilities is for 2-D checkpoints; 3-D predictions are "
                             "label maps")
        self.window = v3d.volume_window(cfg.window, prep, self.model, self.checkpoint)
        self.overlap, self.size = (0.25 if cfg.overlap is None else cfg.overlap), None
        self._setup_threshold(prep)

    def _setup_images(self, prep: dict[str, Any]) -> None:
        cfg = self.cfg
        patch = prep.get("patch") if prep.get("dataset") in ("isic2018", "folder") else None
        self.window, self.overlap = default_window(cfg.window, cfg.overlap, cfg.image_size,
                                                   patch)
        self.size = resolve_image_size(self.checkpoint, prep, cfg.image_size, self.window,
                                       "predicts")
        self._setup_threshold(prep)
        if cfg.window is not None:  # sizes given here (the checkpoint's are as trained)
            dims = getattr(self.model, "spatial_dims", 2)
            self.window = fit_size("--window", expand_extent("--window", self.window, dims),
                                   self.model.size_multiple)
        if cfg.image_size is not None:
            self.size = fit_size("--image-size", self.size, self.model.size_multiple)

    def _load_model(self):
        """The preprocessing and the model: a checkpoint folder's (fp32 or int8), or an ONNX
        file's (its preprocessing travels in its metadata; run by ONNX Runtime on the CPU)."""
        cfg = self.cfg
        if cfg.onnx is None:
            return read_preprocessing(self.checkpoint), load_model(self.checkpoint, self.device)
        from ..onnx_export import OnnxModel

        model = OnnxModel(cfg.onnx, threads=cfg.threads)
        if not model.preprocessing:
            raise ValueError(f"--onnx {cfg.onnx} carries no preprocessing metadata (export it "
                             f"with raunet-fast export --format onnx from a checkpoint)")
        return model.preprocessing, model

    def _autocast_dtype(self) -> torch.dtype | None:
        """Without ``--fused``, ``--dtype bf16 / fp16`` runs the reference under autocast."""
        dtype = self.cfg.dtype
        if self.cfg.fused or dtype in (None, "fp32"):
            return None
        if dtype == "auto":
            raise ValueError("--dtype auto chooses the precision of the --fused model; pass "
                             "--fused, or a precision (bf16) for autocast")
        if dtype == "fp16" and self.device.type != "cuda":
            raise ValueError("--dtype fp16 for the reference model needs a CUDA device; on CPU "
                             "use --dtype bf16, fp32, or --fused")
        return torch.bfloat16 if dtype == "bf16" else torch.float16

    def predictor(self) -> Predictor:
        cfg = self.cfg
        p = Predictor.from_model(self.model, self.device, fused=cfg.fused, dtype=cfg.dtype,
                                 tta=cfg.tta, ensemble=self.extra, amp_dtype=self.amp_dtype,
                                 batch_size=cfg.batch_size)
        if self.amp_dtype is not None:
            p.name += f" (autocast {cfg.dtype})"
        p.progress = cfg.progress
        return p

    def run(self) -> dict[str, Any]:
        """Predict everything (under ``torchrun``: this rank's share of the inputs, each
        written by exactly one rank; the summary counts all ranks', ``rank_files`` lists
        this rank's own)."""
        with dist.session(self.cfg.device):
            if not dist.is_main():
                self.cfg.progress = False
            self.setup()
            kind = "volume" if v3d.is_volume_model(self.model) else \
                input_kind(self.prep, self.model, self.input)
            t0 = time.perf_counter()
            run = {"volume": self.run_volumes, "brats": self.run_brats}.get(kind, self.run_images)
            summary = self._gathered(run())
            summary["seconds"] = seconds = time.perf_counter() - summary.pop("t0", t0)
            count = summary[{"volume": "cases", "brats": "slices"}.get(kind, "images")]
            summary["images_per_s"] = count / max(seconds, 1e-9)
            if dist.is_main():
                write_config(self.cfg, self.out, CONFIG_FILE)
        return summary

    @staticmethod
    def _gathered(summary: dict[str, Any]) -> dict[str, Any]:
        """The counts and files of all ranks (one process: ``summary`` itself)."""
        summary["rank_files"] = list(summary["files"])
        if not dist.active():
            return summary
        summary["files"] = dist.gather_lists(summary["files"])
        for key in ("errors",):
            if key in summary:
                summary[key] = dist.gather_lists(summary[key])
        for key in ("cases", "slices", "images"):
            if key in summary:
                summary[key] = int(sum(dist.gather_lists([summary[key]])))
        return summary

    # ------------------------------------------------------------------ BraTS
    def _check_brats(self) -> list[Path]:
        from ..data.brats import REGIONS

        cfg, model = self.cfg, self.model
        cases = brats_cases(self.input)
        if self.window is not None:
            raise ValueError("--window is for checkpoints trained on patches (2-D images, 3-D "
                             "volumes); this 2-D BraTS checkpoint predicts slice by slice at "
                             "its crop and size")
        if cfg.probabilities:
            raise ValueError("--probabilities is for 2-D checkpoints; BraTS predictions are "
                             "label maps")
        if model.in_channels != 4 or model.out_channels != len(REGIONS):
            raise ValueError(f"the model in {self.checkpoint} has {model.in_channels} input / "
                             f"{model.out_channels} output channels; BraTS needs 4 / 3")
        brats_files_exist(cases)
        check_out(self.out, [f"{c.name}{BRATS_SUFFIX}" for c in cases], self.cfg.overwrite)
        return cases

    def _start(self, items: list) -> tuple[list, Predictor]:
        """After every rank checked its inputs and outputs (``items``, all of them): this
        rank's share, the predictor, and the output folder."""
        dist.barrier()  # every rank checked the outputs before any is written
        items = dist.shard(items)
        predictor = self.predictor()
        self.out.mkdir(parents=True, exist_ok=True)
        return items, predictor

    def run_brats(self) -> dict[str, Any]:
        from tqdm import tqdm

        from ..data.brats import case_files, load_case
        from ..io.nifti import write_labels

        cases, predictor = self._start(self._check_brats())
        crop, written, slices = self.prep.get("crop", 192), [], 0
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max(1, self.workers)) as pool:
            load = lambda folder: load_case(folder, with_seg=False,  # noqa: E731
                                            nan_to_num=self.cfg.nan_to_num)
            loaded = bounded_map(pool, load, cases, 2) if self.workers else map(load, cases)
            for folder, case in tqdm(zip(cases, loaded), total=len(cases), desc="predict",
                                     unit="case", disable=not self.cfg.progress):
                vol = torch.from_numpy(np.asarray(case["image"], dtype=np.float32))
                labels = predictor.predict_volume(vol, crop, self.size, self.threshold)
                written.append(self.out / f"{folder.name}{BRATS_SUFFIX}")
                write_labels(labels, case_files(folder)["flair"], written[-1])
                slices += vol.shape[0]
        return {"kind": "brats", "model": predictor.name, "files": [str(p) for p in written],
                "cases": len(cases), "slices": slices, "t0": t0}

    # ------------------------------------------------------------------ 3-D volumes
    def _volume_source(self) -> str:
        """``"brats"`` (case folders) or ``"nifti"`` (NIfTI files) for a 3-D model: from the
        data set it was trained on, else from the input."""
        dataset = self.prep.get("dataset")
        if dataset in v3d.VOLUME_DATASETS:
            return "brats" if dataset == "brats2021" else "nifti"
        brats = self.model.in_channels == 4 and brats_cases(self.input, strict=False)
        return "brats" if brats else "nifti"

    def _volume_cases(self) -> list[tuple[str, Any]]:
        """(name, source) of every case: a BraTS case folder, or a NIfTI case's image files
        (channels checked from the headers); sets :attr:`to_labels`."""
        from ..data.brats import regions_to_labels
        from ..data.volumes import masks_to_labels

        model, ck = self.model, self.checkpoint
        if self._volume_source() == "brats":
            folders = brats_cases(self.input)
            check_channels(model, 4, 3, ck)
            brats_files_exist(folders)
            self.to_labels = lambda masks, scores: regions_to_labels(masks)
            return [(f.name, f) for f in folders]
        values = v3d.checkpoint_labels(self.prep, model.out_channels)
        self.to_labels = lambda masks, scores: masks_to_labels(masks, values, scores)
        cases = v3d.nifti_inputs(self.input, ck)
        return [(name, files) for name, files in cases.items()
                if self._guarded(check_case_channels, files[0], files, name,
                                 model.in_channels, ck) is not None]

    def _check_volumes(self) -> list[tuple[str, Any]]:
        """The cases to predict, every output name checked against ``--out`` (cases whose
        output exists are left with ``skip_existing``) before anything is computed."""
        cases = self._volume_cases()
        self.outputs = {name: f"{name}{BRATS_SUFFIX}" if isinstance(src, Path) else
                        f"{name}.nii.gz" for name, src in cases}
        if self.cfg.skip_existing:
            todo = [c for c in cases if not (self.out / self.outputs[c[0]]).exists()]
            self.skipped, cases = len(cases) - len(todo), todo
        check_out(self.out, [self.outputs[name] for name, _ in cases], self.cfg.overwrite)
        return cases

    def load_volume(self, name: str, src) -> tuple[torch.Tensor, Path]:
        """One case's ``C x D x H x W`` float32 image (normalised as in training) and the
        NIfTI file whose affine and header its prediction takes (``src``: a BraTS case
        folder, or a NIfTI case's image files)."""
        from ..data.brats import case_files, load_case
        from ..data.volumes import read_case_images

        if isinstance(src, Path):  # a BraTS case folder: Z x 4 x X x Y
            image = load_case(src, with_seg=False, nan_to_num=self.cfg.nan_to_num)["image"]
            image = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(1, 0, 2, 3)
            return image.contiguous(), case_files(src)["flair"]
        image, _ = read_case_images(src, name, self.cfg.nan_to_num)
        return torch.from_numpy(image), src[0]

    def run_volumes(self) -> dict[str, Any]:
        from tqdm import tqdm

        from ..io.nifti import write_labels

        cases, predictor = self._start(self._check_volumes())
        written, known, t0 = [], len(self.errors), time.perf_counter()
        load = lambda case: self._guarded(self.load_volume, *case)  # noqa: E731
        with ThreadPoolExecutor(max(1, self.workers)) as pool:
            loaded = bounded_map(pool, load, cases, 1) if self.workers else map(load, cases)
            for (name, _), item in tqdm(zip(cases, loaded), total=len(cases), desc="predict",
                                        unit="case", disable=not self.cfg.progress):
                if item is None:  # unreadable, skipped (skip_errors)
                    continue
                logits = predictor.logits_windowed(item[0], self.window, self.overlap)
                written.append(self.out / self.outputs[name])
                write_labels(v3d.label_map(self.to_labels, logits, self.threshold), item[1],
                             written[-1])
        return {"kind": "volume", "model": predictor.name, "files": [str(p) for p in written],
                "cases": len(cases) - (len(self.errors) - known), "t0": t0,
                "skipped": self.skipped, "errors": list(self.errors)}

    # ------------------------------------------------------------------ 2-D images
    def _image_paths(self) -> list[Path]:
        try:
            return list_images(self.input)
        except ValueError:
            if self.input.is_dir() and brats_cases(self.input, strict=False):
                raise ValueError(f"--input {self.input} holds BraTS case folders, but the "
                                 f"checkpoint {self.checkpoint} was trained on 2-D images "
                                 f"({self.prep.get('dataset') or 'no data set recorded'})"
                                 ) from None
            raise

    def _head(self) -> str:
        return output_head(self.prep, self.model.out_channels, self.cfg.threshold is not None)

    def _check_images(self) -> list[Path]:
        """The images to predict, every header checked and every output name checked
        against ``--out`` before anything is computed (bad headers are skipped with
        ``skip_errors``; images whose outputs all exist with ``skip_existing``)."""
        paths = self._image_paths()
        if self.size is None and self.window is None:
            raise missing_size_error(self.checkpoint)
        paths = [p for p in paths if self._guarded(check_image, p, self.model.in_channels,
                                                    self.cfg.convert_channels) is not None]
        self.head = self._head()
        regions = region_names(self.prep, self.model.out_channels)
        self.outputs = {p: output_names(p.stem, self.head, regions, self.cfg.probabilities)
                        for p in paths}
        if self.cfg.skip_existing:
            done = [p for p in paths if all((self.out / n).exists() for n in self.outputs[p])]
            self.skipped = len(done)
            paths = [p for p in paths if p not in set(done)]
        check_out(self.out, [n for p in paths for n in self.outputs[p]], self.cfg.overwrite)
        return paths

    def _guarded(self, fn: Callable, path: Path, *args):
        """``fn(path, *args)``; with ``skip_errors`` a ValueError (a bad file) is recorded
        in :attr:`errors` and None returned instead."""
        try:
            return fn(path, *args)
        except ValueError as e:
            if not self.cfg.skip_errors:
                raise
            self.errors.append(" ".join(str(e).split()))
            return None

    def load(self, path: Path):
        """The network input of one image (decoded and scaled as in training) and its size."""
        from ..data.common import resize_pair
        from ..io.images import read_image

        mode = "RGB" if self.model.in_channels == 3 else "L"
        convert = self.cfg.convert_channels
        if self.window is not None:  # full resolution; uint8, scaled window by window
            image, full = read_image(path, mode, convert=convert)
            x = torch.from_numpy(image)
            return (x[None] if x.dim() == 2 else x.permute(2, 0, 1)), full
        image, full = read_image(path, mode, draft_size=self.size, convert=convert)
        return resize_pair(image, None, self.size)[0], full

    def write(self, path: Path, logits: torch.Tensor, full) -> list[Path]:
        """Masks (and probabilities) of one image from its ``K x h x w`` logits."""
        from ..hub import atomic_write_bytes

        logits = resize_logits(logits[None], full)[0]
        masks, probs = mask_tensors(logits, self.head, self.threshold)
        masks = [m.numpy() for m in masks]
        if self.cfg.probabilities:
            masks += [(p * 255).round_().clamp_(0, 255).to(torch.uint8).numpy() for p in probs]
        names = self.outputs[path]
        for name, array in zip(names, masks):
            atomic_write_bytes(self.out / name, png_bytes(array))
        return [self.out / n for n in names]

    def run_images(self) -> dict[str, Any]:
        paths, predictor = self._start(self._check_images())
        t0 = time.perf_counter()
        written: list[Path] = []
        known = len(self.errors)  # header errors, before decoding
        try:
            self._stream(paths, predictor, written)
        except ValueError as e:  # a file that broke while decoding: what was written stays
            raise ValueError(f"{' '.join(str(e).split())}; masks of {len(written)} images "
                             f"written before it are kept: rerun with --skip-existing after "
                             f"fixing the file, or pass --skip-errors to go past bad "
                             f"files") from e
        return {"kind": "2d", "model": predictor.name, "files": [str(p) for p in written],
                "images": len(paths) - (len(self.errors) - known), "t0": t0,
                "skipped": self.skipped, "errors": list(self.errors)}

    def _stream(self, paths: list[Path], predictor: Predictor, written: list[Path]) -> None:
        """Decode ahead, predict in batches, write behind, in ``workers`` threads; files
        written are appended to ``written`` as they complete."""
        from tqdm import tqdm

        # windows: one (full-resolution) image at a time, batch_size counts windows
        per_call = 1 if self.window is not None else self.cfg.batch_size
        bar = tqdm(total=len(paths), desc="predict", unit="image", disable=not self.cfg.progress)
        pool = ThreadPoolExecutor(max(1, self.workers))
        load = lambda path: self._guarded(self.load, path)  # noqa: E731
        try:
            writes: deque[Future] = deque()
            loaded = (bounded_map(pool, load, paths, 2 * per_call) if self.workers
                      else map(load, paths))
            for i in range(0, len(paths), per_call):
                batch = [(p, item) for p in paths[i:i + per_call]
                         if (item := next(loaded)) is not None]
                if batch:
                    logits = self._batch_logits(predictor, [item for _, item in batch])
                for j, (path, (_, full)) in enumerate(batch):
                    if self.workers:
                        writes.append(pool.submit(self.write, path, logits[j], full))
                    else:
                        written += self.write(path, logits[j], full)
                while len(writes) > 2 * per_call or (writes and writes[0].done()):
                    written += writes.popleft().result()
                bar.update(len(paths[i:i + per_call]))
            while writes:
                written += writes.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()

    def _batch_logits(self, predictor: Predictor, items) -> torch.Tensor:
        if self.window is not None:
            return predictor.logits_windowed(items[0][0], self.window, self.overlap)[None]
        return predictor.logits(torch.stack([x for x, _ in items]))


def predict(checkpoint, input, out, **options) -> dict[str, Any]:
    """Predict masks for ``input`` with ``checkpoint`` into ``out`` (Python API of
    ``raunet-fast predict``; ``options``: the fields of
    :class:`~raunet_fast.config.PredictConfig`). Returns a summary."""
    cfg = PredictConfig.from_dict(dict(options, checkpoint=checkpoint, input=input, out=out),
                                  where="predict()")
    return PredictionRun(cfg).run()

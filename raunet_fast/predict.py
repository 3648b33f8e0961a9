"""``raunet-fast predict``: masks for new data (no ground truth) from a trained checkpoint.

2-D checkpoints (ISIC 2018, image folders): ``--input`` is an image file or a folder of
images (``.png``, ``.jpg``, ... as the loaders read them; other files are skipped). Each
image is decoded and resized exactly as in training and evaluation (the checkpoint's
``preprocessing.json``: image size, pixel / 255), the logits are resized back to the
image's own size and written to ``--out`` as

* ``<stem>_mask.png``: 0/255 mask (sigmoid probability > threshold), or for a multi-class
  checkpoint (``"output": "softmax"`` in ``preprocessing.json``) the label map, one class
  index per pixel; a multi-label sigmoid checkpoint (several output channels) writes one
  ``<stem>_mask_<region>.png`` per channel;
* with ``probabilities``: ``<stem>_prob.png``, the foreground probability as 8-bit
  (0..255; softmax: 1 - P(class 0)), ``<stem>_prob_<region>.png`` per channel likewise.

With ``--window S|HxW`` (2-D only) each image is not resized: the network runs at the
image's own resolution on overlapping S x S windows, blended
(:func:`raunet_fast.sliding_window.sliding_window_inference`, ``--overlap``): for models
trained on patches at native resolution, and images of any size in bounded memory.

BraTS checkpoints: ``--input`` is a case folder (``BraTS2021_xxxxx/`` holding the flair,
t1, t1ce and t2 NIfTI files; no segmentation needed) or a folder of case folders. Each case
goes through the same slice-wise inference and label re-stacking as evaluation
(:func:`raunet_fast.evaluate.segment_volume`) and is written as
``<case>_pred_seg.nii.gz`` (uint8 labels 0/1/2/4, the flair's affine and header).

Existing output files are never replaced unless ``overwrite``; that is checked for every
output before anything is computed.
"""
from __future__ import annotations

import argparse
import io
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

MASK_SUFFIX = "_mask"
PROB_SUFFIX = "_prob"
BRATS_SUFFIX = "_pred_seg.nii.gz"

#: PIL modes with one colour channel (an alpha channel does not count)
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


# ---------------------------------------------------------------------- inputs
def _kind_of(prep: dict[str, Any], model, input: Path) -> str:
    """``"brats"`` or ``"2d"``: from the data set the checkpoint was trained on, else from
    the input (BraTS case folders) and the model (4 input channels)."""
    dataset = prep.get("dataset")
    if dataset == "brats2021":
        return "brats"
    if dataset in ("isic2018", "folder"):
        return "2d"
    if model.in_channels == 4 and input.is_dir() and _brats_cases(input, strict=False):
        return "brats"
    return "2d"


def _brats_cases(input: Path, strict: bool = True) -> list[Path]:
    """The case folders ``input`` stands for: itself when it holds ``<name>_flair.nii.gz``,
    else the ``BraTS2021_<5 digits>`` folders at or below it."""
    from .data.brats import case_files, find_cases

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


def _is_output_of(stem: str, stems: set[str]) -> bool:
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
    from .data.common import IMAGE_EXTENSIONS
    from .data.folder import _images

    if input.is_file():
        return [input]
    images = _images(input)  # stem -> path; two images with one stem are an error
    stems = set(images)
    paths = [p for stem, p in images.items() if not _is_output_of(stem, stems)]
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


# ---------------------------------------------------------------------- outputs
def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _region_names(prep: dict[str, Any], n: int) -> list[str]:
    names = prep.get("regions")
    if isinstance(names, list) and len(names) == n and all(isinstance(r, str) for r in names):
        return names
    return [f"c{i}" for i in range(n)]


def _output_names(stem: str, kind: str, regions: list[str], probabilities: bool) -> list[str]:
    parts = [""] if kind in ("binary", "softmax") else [f"_{r}" for r in regions]
    names = [f"{stem}{MASK_SUFFIX}{p}.png" for p in parts]
    if probabilities:
        names += [f"{stem}{PROB_SUFFIX}{p}.png" for p in parts]
    return names


def _check_out(out: Path, names: list[str], overwrite: bool) -> None:
    """Refuse existing outputs (before anything is computed) unless ``overwrite``; an
    --out that is a file was refused earlier (evaluate.check_run_options)."""
    if overwrite or not out.is_dir():
        return
    existing = [n for n in names if (out / n).exists()]
    if existing:
        raise ValueError(f"--out {out} already holds {len(existing)} of the {len(names)} files "
                         f"this run would write (e.g. {existing[0]}); pass --overwrite to "
                         f"replace them, or choose another --out")


# ---------------------------------------------------------------------- the command
def _bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: list, ahead: int):
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


def predict(checkpoint: str | Path, input: str | Path, out: str | Path, *, device: str = "auto",
            batch_size: int = 8, fused: bool = False, dtype: str | None = None,
            threshold: float | None = None, image_size: tuple[int, int] | None = None,
            probabilities: bool = False, overwrite: bool = False,
            num_workers: int | None = None, progress: bool = True,
            window: int | tuple[int, int] | None = None,
            overlap: float | None = None, tta: bool = False, ensemble=()) -> dict[str, Any]:
    """Predict masks for ``input`` with ``checkpoint`` (a folder written by training or
    ``save_pretrained``) and write them to ``out`` (created); see the module docstring.

    ``fused``: run the folded, fused inference model in ``dtype`` (``fp32`` / ``bf16`` /
    ``fp16``; None: fp32 on CPU, bf16 on CUDA). Without ``fused``, ``dtype`` bf16 / fp16
    runs the reference model under autocast. ``num_workers``: threads that decode images
    and encode masks alongside the network (None: up to 4). ``window`` (2-D): predict each
    image at its own resolution in overlapping windows of this size (``overlap``: the
    fraction neighbours share; ``batch_size`` then counts windows; the default for a
    checkpoint trained on patches, ``train --patch``). ``tta``: the mean
    prediction over four flips (:class:`~raunet_fast.tta.FlipTTA`). ``ensemble``: more
    checkpoints trained alike, averaged with this one. Returns a summary: files
    written, images (BraTS: cases and slices), seconds and images per second.
    """
    from tqdm import tqdm

    from .evaluate import (_predict, build_forward, check_checkpoint_folder, check_run_options,
                           check_window, load_ensemble, predict_windowed, read_preprocessing,
                           segment_volume, write_brats_labels)
    from .hub import from_pretrained
    from .train import resolve_device

    checkpoint, input, out = Path(checkpoint), Path(input), Path(out)
    check_run_options(batch_size, image_size, out)
    if num_workers is not None and num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    check_checkpoint_folder(checkpoint)
    if not input.exists():
        raise FileNotFoundError(f"--input {input} does not exist")
    prep = read_preprocessing(checkpoint)
    window, overlap = check_window(window, overlap, image_size,
                                   prep.get("patch") if prep.get("dataset") in ("isic2018", "folder")
                                   else None)
    if image_size is not None and prep.get("patch"):
        import warnings

        warnings.warn(f"{checkpoint} was trained on {prep['patch']} patches at native "
                      f"resolution; --image-size resizes the images it predicts")
    threshold_given = threshold is not None
    threshold = float(prep.get("threshold", 0.5) if threshold is None else threshold)
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    dev = resolve_device(device)
    amp_dtype = None
    if not fused and dtype not in (None, "auto", "fp32"):
        if dtype == "fp16" and dev.type != "cuda":
            raise ValueError("--dtype fp16 for the reference model needs a CUDA device; on CPU "
                             "use --dtype bf16, fp32, or --fused")
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
        if amp_dtype is None:
            raise ValueError(f"dtype must be auto, fp32, bf16 or fp16, got {dtype!r}")
    model = from_pretrained(checkpoint, map_location=dev).eval()
    extra = load_ensemble(checkpoint, ensemble, prep, model, dev)
    kind = _kind_of(prep, model, input)
    workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers

    if kind == "brats":
        from .data.brats import REGIONS, case_files, load_case

        cases = _brats_cases(input)
        if window is not None:
            raise ValueError("--window is for 2-D checkpoints; BraTS volumes are predicted "
                             "slice by slice at the checkpoint's crop and size")
        if probabilities:
            raise ValueError("--probabilities is for 2-D checkpoints; BraTS predictions are "
                             "label maps")
        if model.in_channels != 4 or model.out_channels != len(REGIONS):
            raise ValueError(f"the model in {checkpoint} has {model.in_channels} input / "
                             f"{model.out_channels} output channels; BraTS needs 4 / 3")
        for folder in cases:  # every file there before anything is computed
            for mod, f in case_files(folder).items():
                if mod != "seg" and not f.is_file():
                    raise FileNotFoundError(f"BraTS file {f} does not exist")
        names = [f"{folder.name}{BRATS_SUFFIX}" for folder in cases]
        _check_out(out, names, overwrite)
        crop = prep.get("crop", 192)
        size = image_size or (tuple(prep["image_size"]) if prep.get("image_size") else None)
        forward, model_name = build_forward(model, dev, fused, dtype, tta, extra)
        if amp_dtype is not None:
            model_name += f" (autocast {dtype})"
        out.mkdir(parents=True, exist_ok=True)
        written, slices = [], 0
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max(1, workers)) as pool:
            load = lambda folder: load_case(folder, with_seg=False)  # noqa: E731
            loaded = _bounded_map(pool, load, cases, 2) if workers else map(load, cases)
            bar = tqdm(total=len(cases), desc="predict", unit="case", disable=not progress)
            for folder, case in zip(cases, loaded):
                vol = torch.from_numpy(np.asarray(case["image"], dtype=np.float32))
                labels = segment_volume(forward, vol, crop, size, dev, amp_dtype, batch_size,
                                        threshold)
                path = out / f"{folder.name}{BRATS_SUFFIX}"
                write_brats_labels(labels, case_files(folder)["flair"], path)
                written.append(path)
                slices += vol.shape[0]
                bar.update(1)
            bar.close()
        seconds = time.perf_counter() - t0
        return {"kind": "brats", "model": model_name, "files": [str(p) for p in written],
                "cases": len(cases), "slices": slices, "seconds": seconds,
                "images_per_s": slices / max(seconds, 1e-9)}

    # ---- 2-D images
    from .data.common import read_image, resize_pair

    try:
        paths = list_images(input)
    except ValueError:
        if input.is_dir() and _brats_cases(input, strict=False):
            raise ValueError(f"--input {input} holds BraTS case folders, but the checkpoint "
                             f"{checkpoint} was trained on 2-D images "
                             f"({prep.get('dataset') or 'no data set recorded'})") from None
        raise
    size = image_size or (tuple(prep["image_size"]) if prep.get("image_size") else None)
    if size is None and window is None:
        has = (Path(checkpoint) / "preprocessing.json").is_file()
        raise ValueError(f"{checkpoint} has no "
                         f"{'image_size in its preprocessing.json' if has else 'preprocessing.json'}"
                         f" (the size it was trained at); pass --image-size")
    modes = {p: check_image(p, model.in_channels) for p in paths}
    output = str(prep.get("output", "sigmoid")).lower()
    if output.startswith("softmax"):
        head = "softmax"
        if threshold_given:
            raise ValueError("--threshold applies to sigmoid outputs; this checkpoint's output "
                             "is softmax (its label map takes the most probable class)")
        if model.out_channels > 256:
            raise ValueError(f"{model.out_channels} classes do not fit an 8-bit label map")
    else:
        head = "binary" if model.out_channels == 1 else "multilabel"
    regions = _region_names(prep, model.out_channels)
    outputs = {p: _output_names(p.stem, head, regions, probabilities) for p in paths}
    _check_out(out, [n for names in outputs.values() for n in names], overwrite)
    forward, model_name = build_forward(model, dev, fused, dtype, tta, extra)
    if amp_dtype is not None:
        model_name += f" (autocast {dtype})"
    out.mkdir(parents=True, exist_ok=True)

    def load(path: Path):
        if window is not None:  # full resolution, scaled as in training
            image, full = read_image(path, modes[path])
            return resize_pair(image, None, None)[0], full
        image, full = read_image(path, modes[path], draft_size=size)  # decoded as in training
        x, _ = resize_pair(image, None, size)
        return x, full

    def windowed(x: torch.Tensor) -> torch.Tensor:
        return predict_windowed(forward, x, window, overlap, dev, amp_dtype, batch_size)

    def write(path: Path, logits: torch.Tensor, full: tuple[int, int]) -> list[Path]:
        from .hub import atomic_write_bytes

        if tuple(logits.shape[-2:]) != tuple(full):
            logits = F.interpolate(logits[None].float(), size=full, mode="bilinear",
                                   align_corners=False)[0]
        names = outputs[path]
        if head == "softmax":
            prob = torch.softmax(logits, dim=0)
            masks = [prob.argmax(0).to(torch.uint8).numpy()]
            probs = [1.0 - prob[0]]
        else:
            prob = torch.sigmoid(logits)
            masks = [(p > threshold).numpy().astype(np.uint8) * 255 for p in prob]
            probs = list(prob)
        arrays = masks + ([(p * 255).round_().clamp_(0, 255).to(torch.uint8).numpy()
                           for p in probs] if probabilities else [])
        for name, array in zip(names, arrays):
            atomic_write_bytes(out / name, _png_bytes(array))
        return [out / n for n in names]

    written: list[Path] = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(paths), desc="predict", unit="image", disable=not progress)
    pool = ThreadPoolExecutor(max(1, workers))
    try:
        writes: deque[Future] = deque()
        # windows: one (full-resolution) image at a time, batch_size counts windows
        per_call = 1 if window is not None else batch_size
        batches = [paths[i:i + per_call] for i in range(0, len(paths), per_call)]
        loaded = _bounded_map(pool, load, paths, 2 * per_call) if workers else map(load, paths)
        for batch in batches:
            items = [next(loaded) for _ in batch]
            if window is not None:
                logits = windowed(items[0][0])[None]
            else:
                x = torch.stack([xi for xi, _ in items])
                logits = _predict(forward, x, dev, amp_dtype, batch_size)
            for j, (path, (_, full)) in enumerate(zip(batch, items)):
                if workers:
                    writes.append(pool.submit(write, path, logits[j], full))
                else:
                    written += write(path, logits[j], full)
            while len(writes) > 2 * per_call or (writes and writes[0].done()):
                written += writes.popleft().result()
            bar.update(len(batch))
        while writes:
            written += writes.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    seconds = time.perf_counter() - t0
    return {"kind": "2d", "model": model_name, "files": [str(p) for p in written],
            "images": len(paths), "seconds": seconds,
            "images_per_s": len(paths) / max(seconds, 1e-9)}


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _cmd_predict(args: argparse.Namespace) -> int:
    s = predict(args.checkpoint, args.input, args.out, device=args.device,
                batch_size=args.batch_size, fused=args.fused, dtype=args.dtype,
                threshold=args.threshold, image_size=args.image_size,
                probabilities=args.probabilities, overwrite=args.overwrite,
                num_workers=args.num_workers, progress=args.progress,
                window=args.window, overlap=args.overlap, tta=args.tta,
                ensemble=args.ensemble)
    n = len(s["files"])
    if s["kind"] == "brats":
        what = f"{_count(n, 'segmentation')} for {_count(s['cases'], 'case')}"
        rate = (f"{s['cases'] / max(s['seconds'], 1e-9):.2f} cases/s, "
                f"{s['images_per_s']:.1f} slices/s")
    else:
        what = f"{_count(n, 'file')} for {_count(s['images'], 'image')}"
        rate = f"{s['images_per_s']:.1f} images/s"
    print(f"predict: wrote {what} to {args.out} in {s['seconds']:.2f}s ({rate}, {s['model']} "
          f"model)")
    return 0


def add_cli(sub) -> None:
    from .cli import parse_size

    p = sub.add_parser("predict", help="write masks for new images or BraTS cases (no ground truth)",
                       description="Run a trained checkpoint on new data and write masks: for 2-D "
                                   "checkpoints OUT/<stem>_mask.png (0/255, at each image's own "
                                   "size; a label map for softmax checkpoints), for BraTS "
                                   "OUT/<case>_pred_seg.nii.gz (labels 0/1/2/4, the flair's "
                                   "affine and header). Preprocessing comes from the checkpoint.")
    p.add_argument("--checkpoint", required=True, type=Path, help="e.g. RUN_DIR/best")
    p.add_argument("--input", required=True, type=Path,
                   help="an image, a folder of images, a BraTS case folder or a folder of them")
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace output files that already exist in --out (refused otherwise)")
    p.add_argument("--probabilities", action="store_true",
                   help="2-D: also write the foreground probability as 8-bit <stem>_prob.png")
    p.add_argument("--threshold", type=float, default=None,
                   help="probability threshold (default: the checkpoint's, else 0.5)")
    p.add_argument("--image-size", type=parse_size, default=None, metavar="S|HxW",
                   help="network input size (default: the one stored with the checkpoint)")
    from .evaluate import add_prediction_args

    add_prediction_args(p, ensemble_note="other seeds or splits")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=8,
                   help="images (BraTS: slices; --window: windows) per forward pass")
    p.add_argument("--fused", action="store_true",
                   help="run the folded, fused inference model (build_inference_model; "
                        "norm=batch models), the fast path")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"],
                   help="precision: of the --fused model (default fp32 on CPU, bf16 on CUDA); "
                        "without --fused bf16/fp16 run the reference model under autocast "
                        "(default fp32)")
    p.add_argument("--num-workers", type=int, default=None,
                   help="threads decoding images and writing masks next to the network "
                        "(default: up to 4; 0: none)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_cmd_predict)

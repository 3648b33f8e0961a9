"""``raunet-fast export``: a trained model as a ``torch.export`` program (``.pt2``) for deployment.

:func:`export_model` traces the reference model, or its fused inference form
(:func:`raunet_fast.inference.build_inference_model`), with ``torch.export`` and returns the
:class:`torch.export.ExportedProgram`. 2-D models take ``N x C x H x W`` images, 3-D models
(``spatial_dims=3``) ``N x C x D x H x W`` volumes. By default the batch size and every
spatial size are dynamic: each spatial size any multiple of the model's ``size_multiple``
(2^(depth-1): 16 for the default depth 5) from twice that up, because the network halves them
depth-1 times (a single block is excluded: torch.export specialises sizes of 1); pad other
sizes (the eager model pads internally) or use fixed-size windows
(:func:`raunet_fast.sliding_window.sliding_window_inference`). ``dynamic=False`` fixes the
example shape.

Load and run anywhere torch runs::

    import raunet_fast.ops                # fused programs only: registers their ops
    program = torch.export.load("model.pt2")
    logits = program.module()(images)     # float32 N x C x H x W (x D first) in

The program takes float32 input (a fused 16-bit program casts inside and returns bf16 /
fp16). A reference program can go on to ``torch._inductor.aoti_compile_and_package`` for
deployment without the Python model code; a fused program calls the package's Python-
registered ops, so it needs ``raunet_fast`` installed wherever it runs.
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile
import warnings
from pathlib import Path

import torch

__all__ = ["export_model", "save_program", "dynamic_shapes", "check_example_size"]

#: the names of the spatial axes of 2-D and 3-D inputs
AXES = {2: ("h", "w"), 3: ("d", "h", "w")}


def dynamic_shapes(mult: int, spatial_dims: int = 2, max_batch: int = 4096) -> dict:
    """``torch.export`` dynamic shapes of the input ``x``: any batch up to ``max_batch``,
    every spatial size a multiple of ``mult`` from ``2 * mult``."""
    d = torch.export.Dim
    shapes = {0: d("batch", min=1, max=max_batch)}
    for i, axis in enumerate(AXES[spatial_dims]):
        shapes[2 + i] = mult * d(f"{axis}_blocks", min=2, max=65536 // mult)
    return {"x": shapes}


def export_model(model: torch.nn.Module, size: tuple[int, ...] = (512, 512), batch: int = 2,
                 dynamic: bool = True, fused: bool = False, dtype: torch.dtype | None = None,
                 device: torch.device | str = "cpu") -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` (eval mode) for inputs ``batch x C x H x W`` (3-D models:
    ``batch x C x D x H x W``) on ``device``.

    ``size``: the example (H, W) or (D, H, W), one size per spatial axis of the model; with
    ``dynamic`` each must be a multiple of ``model.size_multiple``, at least twice it, and
    the program accepts any such sizes and any batch size. ``fused``: export the fused
    inference model in ``dtype`` (default fp32 on CPU, bf16 on CUDA) instead of the
    reference model (which is exported in fp32). ``model`` itself is left as it was (a copy
    is exported).
    """
    mult = int(getattr(model, "size_multiple", 1))
    dims = int(getattr(model, "spatial_dims", 2))
    check_example_size(size, batch, mult, dynamic, dims)
    device = torch.device(device)
    model = copy.deepcopy(model).eval().to(device)
    if fused:
        from .inference import build_inference_model, inference_dtype

        dt = dtype if dtype is not None else inference_dtype(None, device)
        module = build_inference_model(model, dtype=dt)
    else:
        if dtype not in (None, torch.float32):
            raise ValueError("the reference model is exported in fp32; pass fused=True for "
                             "a 16-bit program")
        module = model
    x = torch.randn(max(batch, 2) if dynamic else batch, model.in_channels, *size,
                    device=device)
    shapes = dynamic_shapes(mult, dims) if dynamic else None
    with torch.no_grad():
        return torch.export.export(module, (x,), dynamic_shapes=shapes)


def axes_text(spatial_dims: int) -> str:
    """``"H and W"`` / ``"D, H and W"``."""
    names = [a.upper() for a in AXES[spatial_dims]]
    return f"{', '.join(names[:-1])} and {names[-1]}"


def check_example_size(size: tuple[int, ...], batch: int, mult: int, dynamic: bool,
                       spatial_dims: int = 2) -> None:
    """The example shape of an export: one size per spatial axis, sizes >= 1; with dynamic
    shapes multiples of the model's size multiple ``mult``, at least twice it."""
    size = tuple(size)
    text = "x".join(map(str, size))
    if len(size) != spatial_dims:
        want = "x".join(a.upper() for a in AXES[spatial_dims])
        raise ValueError(f"a {spatial_dims}-D model takes a {want} size (or one size for "
                         f"every axis), got {text}")
    if batch < 1 or min(size) < 1:
        raise ValueError(f"batch and size must be >= 1, got batch={batch}, size={text}")
    if dynamic and (any(s % mult for s in size) or min(size) < 2 * mult):
        raise ValueError(f"with dynamic shapes the example size must be a multiple of the "
                         f"model's size_multiple {mult} (the network halves "
                         f"{axes_text(spatial_dims)} {mult.bit_length() - 1} times), at least "
                         f"{2 * mult}, got {text}")


def save_program(program: torch.export.ExportedProgram, path: str | Path) -> Path:
    """``torch.export.save`` to ``path`` atomically (a temporary file in the same folder,
    then renamed: an interrupted export never leaves a truncated ``.pt2``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary ends in .pt2 too (torch.export.save warns about other names)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp.pt2")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            # buffers sharing one storage (folded weights) make the archive writer warn
            warnings.filterwarnings("ignore", message="No complete tensor found")
            torch.export.save(program, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the model from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _cmd_export(args: argparse.Namespace) -> int:
    from .engine.device import resolve_device
    from .hub import from_pretrained
    from .io.checkpoints import check_checkpoint_folder

    check_checkpoint_folder(args.checkpoint)
    _check_export_args(args)
    device = resolve_device(args.device)
    model = from_pretrained(args.checkpoint, map_location=device).eval()
    size = _export_size(args, model)
    if args.format == "onnx":
        return _write_onnx(args, model, size)
    from .inference import inference_dtype

    dtype = inference_dtype(args.dtype, device) if args.fused else None
    program = export_model(model, size=size, batch=args.batch, dynamic=not args.static,
                           fused=args.fused, dtype=dtype, device=device)
    save_program(program, args.out)
    kind = "fused" if args.fused else "reference"
    print(f"export: wrote {args.out} ({kind} model, {_shape_text(args, model, size)}, "
          f"{device.type}); load with torch.export.load('{args.out}').module()"
          + ("  (after `import raunet_fast.ops`, which registers its ops)" if args.fused else ""))
    return 0


def _check_export_args(args: argparse.Namespace) -> None:
    suffix = ".onnx" if args.format == "onnx" else ".pt2"
    if args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give the {suffix} file to write")
    if args.out.exists() and not args.overwrite:
        raise ValueError(f"--out {args.out} exists; pass --overwrite to replace it")
    if args.dtype is not None and args.dtype != "fp32" and (args.format == "onnx" or not args.fused):
        raise ValueError(f"--dtype {args.dtype} is for --fused .pt2 programs; the reference "
                         f"model and ONNX files are exported in fp32")
    if args.format == "onnx" and args.device == "cuda":
        raise ValueError("ONNX files are traced on the CPU (they run anywhere); drop --device")


def _export_size(args: argparse.Namespace, model) -> tuple[int, ...]:
    """``--size`` (one size for every axis, or one per axis of the model), else the
    training size (a 3-D model's patch) rounded up to what a dynamic program needs, else
    512 (3-D: 128) on every axis."""
    from .config import expand_extent
    from .io.checkpoints import read_preprocessing

    dims = int(getattr(model, "spatial_dims", 2))
    if args.size is not None:
        return expand_extent("--size", args.size, dims)
    prep = read_preprocessing(args.checkpoint)
    stored = prep.get("image_size") or prep.get("patch")  # patch-trained: its windows
    size = tuple(stored) if stored and len(stored) == dims else (512 if dims == 2 else 128,) * dims
    if not args.static:
        m = model.size_multiple
        size = tuple(max(2 * m, -(-int(v) // m) * m) for v in size)
    return size


def _shape_text(args: argparse.Namespace, model, size) -> str:
    mult = model.size_multiple
    if args.static:
        return " x ".join(str(v) for v in (args.batch, model.in_channels, *size))
    names = " x ".join(a.upper() for a in AXES[len(size)])
    return (f"N x {model.in_channels} x {names}, {axes_text(len(size))} multiples of {mult} "
            f"from {2 * mult}")


def _write_onnx(args: argparse.Namespace, model, size) -> int:
    from .io.checkpoints import read_preprocessing
    from .onnx_export import OPSET, export_onnx

    export_onnx(model.cpu(), args.out, size=size, batch=args.batch, dynamic=not args.static,
                folded=args.fused, preprocessing=read_preprocessing(args.checkpoint))
    kind = "BatchNorm-folded" if args.fused else "reference"
    print(f"export: wrote {args.out} ({kind} model, ONNX opset {OPSET}, "
          f"{_shape_text(args, model, size)}, fp32); run it with `raunet-fast predict --onnx "
          f"{args.out}` or onnxruntime.InferenceSession")
    return 0


def add_cli(sub) -> None:
    from .config import DTYPE_NAMES, parse_extent

    p = sub.add_parser("export", help="write a trained model as a torch.export program (.pt2)",
                       description="Export a checkpoint with torch.export for deployment: "
                                   "dynamic batch, height and width (and depth: 3-D models) "
                                   "(multiples of the model's size multiple from twice it: 32, "
                                   "48, 64, ... at depth 5) unless --static; the reference "
                                   "model in fp32, or with --fused the fused inference model.")
    p.add_argument("--checkpoint", required=True, type=Path, help="e.g. RUN_DIR/best")
    p.add_argument("--out", required=True, type=Path, help="the .pt2 (or .onnx) file to write")
    p.add_argument("--format", default="pt2", choices=["pt2", "onnx"],
                   help="pt2: a torch.export program; onnx: an ONNX file for ONNX Runtime "
                        "(the onnx extra; --fused then exports the BatchNorm-folded model in "
                        "standard ops) (default: pt2)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--size", type=parse_extent, default=None, metavar="S|HxW|DxHxW",
                   help="example input size, one size for every axis or one per axis of the "
                        "model (the fixed size with --static; default: the checkpoint's "
                        "training size or patch, else 512; 3-D models: 128)")
    p.add_argument("--batch", type=int, default=1,
                   help="example batch size (the fixed one with --static; default: 1)")
    p.add_argument("--static", action="store_true", help="fix the example shape")
    p.add_argument("--fused", action="store_true",
                   help="export the fused inference model (folded BN, fused ops)")
    p.add_argument("--dtype", default=None, choices=DTYPE_NAMES,
                   help="--fused model precision (default fp32 on CPU, bf16 on CUDA)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"],
                   help="device the program is traced for (default: cpu)")
    p.set_defaults(func=_cmd_export)

"""Run configurations: the one home of every command's defaults, choices and checks.

Each command (``train``, ``evaluate``, ``predict``) is described by a dataclass whose fields
carry their help text and choices as metadata (:func:`option`). The command line is
generated from the dataclass (:func:`add_options`), so a default is written once; a run can
also be read from a JSON / YAML file (``--config FILE``, flags override it), and
``--print-config`` prints the resolved configuration. :meth:`RunConfig.validate` checks types
and ranges with one-line errors before anything is built.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

#: 2-D data sets (image files or BraTS slices); ``nifti-folder`` holds volumes, for 3-D models
IMAGE_DATASETS = ("isic2018", "brats2021", "folder")
DATASETS = (*IMAGE_DATASETS, "nifti-folder")
#: the last two are the MONAI baselines (the peers extra, raunet_fast.peers)
MODELS = ("raunet", "attention-unet", "unet", "resunet", "monai-attention-unet",
          "monai-basicunet")
NORMS = ("batch", "instance", "group")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("none", "bf16", "fp16")
DTYPE_NAMES = ("fp32", "bf16", "fp16")
#: --dtype choices: a precision, or auto (bf16 where the hardware has bf16 matrix units)
DTYPE_CHOICES = ("auto", *DTYPE_NAMES)
SPLITS = ("train", "val", "test")
SCHEDULERS = ("plateau", "cosine", "none")


def parse_size(text: str) -> tuple[int, int]:
    """``"512"`` -> (512, 512); ``"480x640"`` -> (480, 640)."""
    parts = str(text).lower().split("x")
    try:
        hw = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512 or 480x640, got {text!r}")
    if len(hw) == 1:
        hw = hw * 2
    if len(hw) != 2 or min(hw) < 1:
        raise argparse.ArgumentTypeError(f"size must look like 512 or 480x640, got {text!r}")
    return hw  # type: ignore[return-value]


def parse_extent(text: str) -> tuple[int, ...]:
    """A 2-D or 3-D extent: ``"64"`` -> (64,) (every axis, expanded by
    :func:`expand_extent` once the number of axes is known); ``"480x640"`` -> (480, 640);
    ``"64x128x128"`` -> (64, 128, 128)."""
    try:
        sizes = tuple(int(p) for p in str(text).lower().split("x"))
    except ValueError:
        sizes = ()
    if not 1 <= len(sizes) <= 3 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"size must look like 64, 480x640 or 64x128x128, "
                                         f"got {text!r}")
    return sizes


def expand_extent(name: str, value, spatial_dims: int):
    """``value`` for a ``spatial_dims``-D model: one size for every axis, or one per axis;
    None stays None."""
    if value is None:
        return None
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        return value * spatial_dims
    if len(value) != spatial_dims:
        want = "HxW" if spatial_dims == 2 else "DxHxW"
        raise ValueError(f"{name} {'x'.join(map(str, value))} has {len(value)} sizes; a "
                         f"{spatial_dims}-D model takes {want} (or one size for every axis)")
    return value


def option(default: Any = None, help: str = "", *, choices=None, flag: str | None = None,
           parse=None, metavar: str | None = None, nargs: str | None = None,
           required: bool = False):
    """A config field with its command-line description. ``flag``: the option's name when
    it is not ``--<field-name>`` (``--no-augment`` for a field that defaults to True);
    ``parse``: the argparse ``type``; ``required``: must be given (flag or config file)."""
    meta = {"help": help, "choices": choices, "flag": flag, "parse": parse,
            "metavar": metavar, "nargs": nargs, "required": required}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------- checks (one place each)
def check_threshold(value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"threshold must be in (0, 1), got {value}")


def check_size(name: str, value, lengths: tuple[int, ...] = (2,)) -> None:
    """``value``: None or ``lengths`` sizes >= 1 (default two: H, W)."""
    if value is not None and (len(value) not in lengths or min(value) < 1):
        what = " or ".join({1: "one size", 2: "two sizes", 3: "three sizes"}[n]
                           for n in lengths)
        raise ValueError(f"{name} must be {what} >= 1 (H, W or D, H, W), got {value}")


def fit_size(name: str, size, multiple: int):
    """``size`` (H, W or D, H, W) rounded up to a multiple of ``multiple`` (the network's
    ``2**(depth-1)``), with a warning when it changes; None stays None."""
    if size is None:
        return None
    fitted = tuple(-(-int(v) // multiple) * multiple for v in size)
    if fitted != tuple(size):
        import warnings

        warnings.warn(f"{name} {'x'.join(map(str, size))} is not a multiple of {multiple} "
                      f"(the network halves it depth-1 times): using "
                      f"{'x'.join(map(str, fitted))}", stacklevel=2)
    return fitted


def check_at_least(name: str, value, low: int) -> None:
    if value is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def check_out_folder(out) -> None:
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose another --out")


def _type_ok(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, (str, Path))
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        return len(items) == len(value) and all(_type_ok(v, a) for v, a in zip(value, items))
    return True


def _type_name(hint) -> str:
    if isinstance(hint, type):
        return {"bool": "true or false", "str": "a string", "int": "an integer",
                "float": "a number"}.get(hint.__name__, hint.__name__)
    return str(hint).replace("typing.", "").replace("NoneType", "None")


# ---------------------------------------------------------------------- base class
@dataclass
class RunConfig:
    """Shared behaviour of the command configurations."""

    command: ClassVar[str] = ""
    #: fields that hold paths (stored as str, so a config is JSON)
    path_fields: ClassVar[tuple[str, ...]] = ()
    #: keys a run adds to its written config (not options): skipped when it is read back
    record_keys: ClassVar[tuple[str, ...]] = ()

    _: dataclasses.KW_ONLY
    threads: int | None = option(
        None, "torch CPU threads of this process (default: torch's: all cores, or "
              "OMP_NUM_THREADS); train's DataLoader worker processes run 1 thread each",
        parse=int, metavar="N")

    # how input files are read: the same options, and rules, for every command
    convert_channels: bool = option(
        False, "convert grayscale images to RGB (or RGB to grayscale) when the model takes "
               "the other; refused otherwise")
    max_image_pixels: int | None = option(
        None, "decode images up to this many pixels (default 178956970, about 13400 x 13400: "
              "a guard against decompression bombs)", parse=int)
    nan_to_num: bool = option(
        False, "NIfTI volumes: replace NaN / Inf voxels by 0 instead of refusing the volume")

    def validate(self) -> "RunConfig":
        """Types of every field, then the command's own ranges (:meth:`check`)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _type_ok(value, hints[f.name]):
                raise ValueError(f"{self.command} option {f.name} must be "
                                 f"{_type_name(hints[f.name])}, got {value!r}")
            if f.metadata.get("required") and value is None:
                raise ValueError(f"{self.command}: {flag_of(f)} is required (a flag or a "
                                 f"key of --config)")
            choices = f.metadata.get("choices")
            if choices and value is not None and value not in choices:
                raise ValueError(f"{self.command} option {f.name} must be one of "
                                 f"{', '.join(choices)}, got {value!r}")
        self.check()
        return self

    def check(self) -> None:
        """Ranges and combinations (subclasses call this first)."""
        check_at_least("threads", self.threads, 1)
        check_at_least("max_image_pixels", self.max_image_pixels, 1)

    def apply_reading_options(self) -> None:
        """Make this process (and the DataLoader workers it starts) read inputs as the
        options say."""
        if self.max_image_pixels is not None:
            from .io.images import set_max_image_pixels

            set_max_image_pixels(self.max_image_pixels)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self),
                                     default=lambda o: list(o) if isinstance(o, tuple) else str(o)))

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> "RunConfig":
        """Build from plain values (a config file, flags): unknown keys are an error, lists
        become tuples, paths strings."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k not in cls.record_keys}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"{where}: unknown {cls.command} option(s) {', '.join(unknown)}; "
                             f"known: {', '.join(names)}")
        kw = {k: _normalise(v, k in cls.path_fields) for k, v in values.items()}
        return cls(**kw)


def _normalise(value, is_path: bool):
    if isinstance(value, list):
        return tuple(_normalise(v, is_path) for v in value)
    if is_path and isinstance(value, Path):
        return str(value)
    return value


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


# ---------------------------------------------------------------------- argparse generation
def add_options(parser: argparse.ArgumentParser, cls: type[RunConfig]) -> None:
    """One option per field of ``cls`` (help text and default from the field), plus
    ``--config FILE`` and ``--print-config``. Options are parsed with no argparse defaults,
    so :func:`from_args` knows which ones the user gave."""
    fields = sorted(dataclasses.fields(cls), key=lambda f: not f.metadata.get("required"))
    for f in fields:  # the required ones first
        parser.add_argument(flag_of(f), dest=f.name, default=argparse.SUPPRESS,
                            help=_help(f), **_argparse_kind(f))
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="read options from a JSON or YAML file (flags given as well "
                             "override it)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved configuration as JSON and exit")
    parser.set_defaults(config_class=cls)


def _argparse_kind(f: dataclasses.Field) -> dict[str, Any]:
    meta = f.metadata
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if isinstance(default, bool):
        return {"action": "store_false" if default else "store_true"}
    kind: dict[str, Any] = {}
    if meta.get("choices"):
        kind["choices"] = meta["choices"]
    if meta.get("nargs"):
        kind["nargs"] = meta["nargs"]
    if meta.get("metavar"):
        kind["metavar"] = meta["metavar"]
    parse = meta.get("parse")
    if parse is None and isinstance(default, (int, float)):
        parse = type(default)
    if parse is not None:
        kind["type"] = parse
    return kind


def _help(f: dataclasses.Field) -> str:
    text = f.metadata["help"]
    if f.metadata.get("required"):
        return f"{text} (required)"
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if isinstance(default, bool) or "(default" in text:
        return text.replace("%", "%%")
    if default in (None, ()):
        return f"{text} (default: none)".replace("%", "%%")
    shown = "x".join(map(str, default)) if isinstance(default, tuple) and default else default
    return f"{text} (default: {shown})".replace("%", "%%")


def read_config_file(path: Path) -> dict[str, Any]:
    """The options in a JSON or YAML file (YAML needs PyYAML)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ValueError(f"--config {path}: cannot be read ({e.strerror or e})") from e
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError("--config: YAML files need PyYAML: pip install pyyaml "
                             "(or give the config as JSON)") from None
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"--config {path} is not valid YAML ({e})") from e
    else:
        try:
            values = json.loads(text)
        except ValueError as e:
            raise ValueError(f"--config {path} is not valid JSON ({e})") from e
    if not isinstance(values, dict):
        raise ValueError(f"--config {path} must hold an object of options, not a "
                         f"{type(values).__name__}")
    return {k.replace("-", "_"): v for k, v in values.items()}


def from_args(args: argparse.Namespace) -> RunConfig:
    """The validated config of a parsed command line: the dataclass defaults, then the
    ``--config`` file, then the flags given."""
    cls = args.config_class
    names = {f.name for f in dataclasses.fields(cls)}
    values = read_config_file(args.config) if getattr(args, "config", None) else {}
    values.update({k: v for k, v in vars(args).items() if k in names})
    cfg = cls.from_dict(values, where=f"--config {args.config}" if args.config else "options")
    return cfg.validate()


def print_config(cfg: RunConfig, file=None) -> None:
    print(json.dumps(cfg.to_dict(), indent=2), file=file or sys.stdout)


def write_config(cfg: RunConfig, folder: Path, name: str = "config.json") -> Path:
    """The resolved config next to a run's results (atomically)."""
    from .hub import atomic_write_json

    path = Path(folder) / name
    atomic_write_json(path, cfg.to_dict())
    return path


def _finite_positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number, got {value}")


# ---------------------------------------------------------------------- the commands
@dataclass
class TrainConfig(RunConfig):
    """Everything a training run depends on (``raunet-fast train --help`` documents each)."""

    command: ClassVar[str] = "train"
    path_fields: ClassVar[tuple[str, ...]] = ("data_root", "out", "cache_dir")
    record_keys: ClassVar[tuple[str, ...]] = ("resumes",)  # run.json: each --resume

    data_root: str | None = option(None, "folder holding the data set", required=True,
                                   parse=str)
    out: str | None = option(None, "run directory (created)", required=True, parse=str)
    model: str = option("raunet", "architecture", choices=MODELS)
    dataset: str = option("isic2018", "data set layout", choices=DATASETS)
    epochs: int = option(150, "training epochs")
    batch_size: int = option(8, "images (slices, patches) per step (under torchrun: the "
                                "global batch, split across the processes)")
    image_size: tuple[int, int] | None = option(
        None, "network input size (default 512 for 2-D data; the crop for BraTS)",
        parse=parse_size, metavar="S|HxW")
    spatial_dims: int = option(
        2, "2: images (or BraTS slices); 3: volumes (brats2021, nifti-folder) in 3-D patches "
           "(needs --patch DxHxW)", choices=(2, 3))
    patch: tuple[int, ...] | None = option(
        None, "train on random patches at the data's own resolution (validation: whole "
              "images or volumes in tiles of the patch); 2-D: S or HxW; 3-D (required): S or "
              "DxHxW; evaluate / predict then default to --window of that size",
        parse=parse_extent, metavar="S|HxW|DxHxW")
    foreground_ratio: float | None = option(
        None, "3-D: fraction of the training patches centred on a random foreground voxel "
              "(of a region or label present in the case); the rest lie anywhere (default "
              "0.33, as nnU-Net)", parse=float)
    patches_per_image: int = option(
        1, "with --patch: K random patches per image (3-D: volume) and epoch, drawn one "
           "after another so that each image is decoded once for K patches (an epoch is then "
           "K times as long; a batch holds batch-size / K images: keep K well below the "
           "batch size)",
        metavar="K")
    crop: int | None = option(192, "BraTS: centre crop of the axial slices", parse=int)
    base_channels: int = option(64, "channels of the first level (doubled per level)")
    depth: int = option(5, "levels of the U (4 poolings at 5)")
    norm: str = option("batch", "normalisation layer", choices=NORMS)
    dropout: float = option(0.1, "dropout in the decoder blocks")
    deep_supervision: bool = option(False, "auxiliary losses on coarser decoder levels")
    lr: float = option(1e-4, "Adam learning rate (paper: 1e-4)")
    weight_decay: float = option(0.0, "Adam weight decay")
    scheduler: str = option("plateau", "learning-rate schedule", choices=SCHEDULERS)
    patience: int = option(20, "early stopping: epochs without val Dice improvement")
    lambda_dice: float = option(1.0, "weight of the Dice loss")
    lambda_focal: float = option(1.0, "weight of the focal loss")
    focal_alpha: float = option(0.25, "focal loss alpha")
    focal_gamma: float = option(2.0, "focal loss gamma")
    augment: bool = option(True, "no random flips, rotations and elastic deformation",
                           flag="--no-augment")
    tumour_weight: float = option(3.0, "BraTS: sampling weight of slices with tumour "
                                       "(1 = uniform)")
    threshold: float = option(0.5, "probability threshold of the validation Dice")
    amp: str = option("none", "autocast precision", choices=AMP_MODES)
    compile: bool = option(False, "torch.compile the model")
    seed: int = option(0, "seed of initialisation, data order and augmentation")
    num_workers: int = option(2, "DataLoader worker processes")
    max_steps_per_epoch: int | None = option(None, "cap on the steps of an epoch", parse=int)
    device: str = option("auto", "auto: CUDA when present, else CPU", choices=DEVICES)
    cache_dir: str | None = option(
        None, "BraTS: keep preprocessed volumes here as .npy (recommended for real data)",
        parse=str)
    cache_images: bool = option(
        False, "2-D data: keep decoded, resized images in memory (small data sets; with "
               "--patch the full-resolution uint8 images: 4 bytes a pixel)")
    resume: bool = option(False, "continue the run in --out from its last checkpoint")
    progress: bool = option(True, "no progress bars", flag="--no-progress")
    split_seed: int = option(0, "BraTS / folder: seed of the reproducible train/val/test "
                                "split by case")
    in_channels: int | None = option(
        None, "folder: image channels the model takes, 1 (grayscale) or 3 (RGB) (default: "
              "those of the first image)", parse=int, choices=(1, 3))
    sync_batchnorm: bool = option(
        False, "under torchrun: BatchNorm statistics of the global batch (all processes) "
               "instead of each process's part")
    scale_lr: bool = option(False, "under torchrun: multiply --lr by the number of processes")
    dist_timeout: float = option(
        600.0, "under torchrun: seconds a process waits for the others before it stops with "
               "an error (a dead or stuck process)")

    def resolved_image_size(self) -> tuple[int, int] | None:
        if self.image_size is not None:
            return tuple(self.image_size)
        if self.patch is not None or self.dataset == "brats2021" or self.spatial_dims == 3:
            # native resolution / crop
            return None
        return (512, 512)

    def check(self) -> None:
        super().check()
        for name in ("epochs", "batch_size", "patience", "patches_per_image",
                     "max_steps_per_epoch"):
            check_at_least(name, getattr(self, name), 1)
        check_at_least("num_workers", self.num_workers, 0)
        if self.spatial_dims == 3:
            self.check_volumes()
        elif self.dataset == "nifti-folder":
            raise ValueError("--dataset nifti-folder holds volumes, for 3-D models: pass "
                             "--spatial-dims 3 --patch DxHxW")
        elif self.foreground_ratio is not None:
            raise ValueError("--foreground-ratio is for 3-D patches (--spatial-dims 3)")
        if not self.dist_timeout > 0:
            raise ValueError(f"dist_timeout must be > 0 seconds, got {self.dist_timeout}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        check_threshold(self.threshold)
        if self.crop is not None and self.crop < 1:
            raise ValueError(f"crop must be >= 1 (pixels of the BraTS axial crop), got {self.crop}")
        check_size("image_size", self.image_size)
        check_size("patch", self.patch, (self.spatial_dims,))
        if self.patch is not None and self.dataset == "brats2021" and self.spatial_dims == 2:
            raise ValueError("--patch is for 2-D data; BraTS slices are cropped with --crop")
        if self.patch is not None and self.image_size is not None:
            raise ValueError("--patch trains on patches at each image's own resolution; "
                             "--image-size (resize) does not apply with it")
        if self.patches_per_image != 1 and self.patch is None:
            raise ValueError("--patches-per-image needs --patch (it cuts several random "
                             "patches from each decoded image)")
        if self.in_channels is not None and self.dataset != "folder":
            have = {"brats2021": "4 channels", "isic2018": "3 channels"}.get(
                self.dataset, "the channels of their files")
            raise ValueError(f"--in-channels is for the folder data set; {self.dataset} "
                             f"images have {have}")
        if not (self.tumour_weight > 0 and math.isfinite(self.tumour_weight)):
            raise ValueError(f"tumour_weight must be a positive number (1 = uniform "
                             f"sampling), got {self.tumour_weight}")

    def check_volumes(self) -> None:
        """The combinations of a 3-D run (``--spatial-dims 3``)."""
        given = getattr(self, "given", frozenset())
        if self.dataset not in ("brats2021", "nifti-folder"):
            raise ValueError(f"--spatial-dims 3 trains on volumes: --dataset brats2021 or "
                             f"nifti-folder, not {self.dataset}")
        if self.patch is None:
            raise ValueError("--spatial-dims 3 needs --patch DxHxW (the training patch size, "
                             "e.g. 128x128x128)")
        if self.model.startswith("monai-"):
            raise ValueError(f"--model {self.model} is 2-D only; 3-D models: raunet, "
                             f"attention-unet, unet, resunet")
        for name, bad, why in (
                ("--image-size", self.image_size is not None, "volumes are cut into patches at "
                                                               "their own resolution"),
                ("--crop", self.crop is not None and (self.crop != 192 or "crop" in given),
                 "BraTS volumes are not cropped"),
                ("--cache-images", self.cache_images, "pass --cache-dir for BraTS"),
                ("--tumour-weight", self.tumour_weight != 3.0, "use --foreground-ratio")):
            if bad:
                raise ValueError(f"{name} is for 2-D training; with --spatial-dims 3 {why}")
        if self.foreground_ratio is not None and not 0.0 <= self.foreground_ratio <= 1.0:
            raise ValueError(f"--foreground-ratio must be in [0, 1], got {self.foreground_ratio}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> "TrainConfig":
        """As :meth:`RunConfig.from_dict`; remembers the options given (:attr:`given`), so
        that a 2-D option with a default (``--crop``) is refused in 3-D only when given."""
        cfg = super().from_dict(values, where)
        cfg.given = frozenset(values)
        return cfg

    def resolved_foreground_ratio(self) -> float | None:
        """The 3-D foreground ratio (default 0.33); None for 2-D runs."""
        if self.spatial_dims != 3:
            return None
        return 0.33 if self.foreground_ratio is None else float(self.foreground_ratio)

    def validate(self) -> "TrainConfig":
        for name in ("image_size", "patch"):
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))
        if isinstance(self.patch, int) and not isinstance(self.patch, bool):
            self.patch = (self.patch,)
        if (isinstance(self.patch, tuple) and self.spatial_dims in (2, 3)
                and all(isinstance(v, int) for v in self.patch)):
            self.patch = expand_extent("--patch", self.patch, self.spatial_dims)
        if self.spatial_dims == 3 and self.crop == 192 and "crop" not in getattr(
                self, "given", ()):
            self.crop = None  # the 2-D BraTS default: volumes are not cropped
        for name in self.path_fields:
            if isinstance(getattr(self, name), Path):
                setattr(self, name, str(getattr(self, name)))
        super().validate()
        if isinstance(self.depth, int) and self.depth >= 1:
            self.image_size = fit_size("--image-size", self.image_size, 2 ** (self.depth - 1))
            self.patch = fit_size("--patch", self.patch, 2 ** (self.depth - 1))
        return self


@dataclass(kw_only=True)
class InferenceConfig(RunConfig):
    """How predictions are made: the options ``evaluate`` and ``predict`` share."""

    path_fields: ClassVar[tuple[str, ...]] = ("checkpoint", "out", "ensemble")

    checkpoint: str | None = option(None, "checkpoint folder, e.g. RUN_DIR/best",
                                    required=True, parse=str)
    out: str | None = option(None, "output folder (created)", required=True, parse=str)
    overwrite: bool = option(False, "replace output files that already exist in --out "
                                    "(refused otherwise)")
    image_size: tuple[int, int] | None = option(
        None, "network input size (default: the one stored with the checkpoint)",
        parse=parse_size, metavar="S|HxW")
    threshold: float | None = option(
        None, "probability threshold (default: the checkpoint's, else 0.5)", parse=float)
    tta: bool = option(False, "test-time augmentation: the mean of the predictions over 4 "
                              "flips (3-D models: 8) (raunet_fast.tta.FlipTTA; 4x (8x) the "
                              "inference time)")
    ensemble: tuple[str, ...] = option(
        (), "more checkpoints trained alike: the mean of all the models' predictions",
        nargs="+", metavar="CHECKPOINT", parse=str)
    window: tuple[int, ...] | None = option(
        None, "predict each image (3-D models: each volume) at its own resolution in "
              "overlapping windows, blended, instead of resizing to the network size (for "
              "models trained on patches; default for a checkpoint trained with --patch)",
        parse=parse_extent, metavar="S|HxW|DxHxW")
    overlap: float | None = option(
        None, "with --window: fraction of a window its neighbours share (default 0.25)",
        parse=float)
    device: str = option("auto", "auto: CUDA when present, else CPU", choices=DEVICES)
    batch_size: int = option(8, "images (BraTS: slices; --window: windows) per forward pass")
    fused: bool = option(False, "run the folded, fused inference model "
                                "(build_inference_model; norm=batch models), the fast path; "
                                "evaluate: --amp is rejected with it, use --dtype")
    dtype: str | None = option(None, "precision of the --fused model (default fp32 on CPU, "
                                     "bf16 on CUDA; auto: bf16 also on a CPU with AMX / "
                                     "AVX512-BF16)", choices=DTYPE_CHOICES)
    progress: bool = option(True, "no progress bars", flag="--no-progress")

    def check(self) -> None:
        super().check()
        check_at_least("batch_size", self.batch_size, 1)
        check_size("image_size", self.image_size)
        check_size("window", self.window, (1, 2, 3))
        check_out_folder(self.out)
        if self.threshold is not None:
            check_threshold(self.threshold)
        if self.window is not None and self.image_size is not None:
            raise ValueError("--window predicts at each image's own resolution; --image-size "
                             "(resize to the network size) does not apply with it")
        if self.overlap is not None and not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"--overlap must be in [0, 1), got {self.overlap}")


@dataclass(kw_only=True)
class EvaluateConfig(InferenceConfig):
    """``raunet-fast evaluate``: score a checkpoint on a split of a data set."""

    command: ClassVar[str] = "evaluate"
    path_fields: ClassVar[tuple[str, ...]] = ("checkpoint", "out", "ensemble", "data_root",
                                              "cache_dir")

    out: str | None = option(None, "output folder for cases.csv, summary.json and config.json "
                                   "(created; none: print the scores only)", parse=str)
    dataset: str | None = option(None, "data set layout", choices=DATASETS, required=True)
    data_root: str | None = option(None, "folder holding the data set", required=True,
                                   parse=str)
    split: str = option("val", "the split scored", choices=SPLITS)
    crop: int | None = option(None, "BraTS crop (default: from the checkpoint)", parse=int)
    split_seed: int | None = option(
        None, "BraTS / folder split seed (default: the one used in training)", parse=int)
    amp: str = option("none", "autocast precision of the reference model (not with --fused)",
                      choices=AMP_MODES)
    save_predictions: bool = option(
        False, "also write the predicted masks (PNG / NIfTI) to OUT/predictions/")
    cache_dir: str | None = option(
        None, "BraTS: keep preprocessed volumes here as .npy (the same folder can be shared "
              "with training)", parse=str)

    def check(self) -> None:
        super().check()  # --window with BraTS: 3-D models only (checked with the model)
        if self.crop is not None and self.crop < 1:
            raise ValueError(f"crop must be >= 1, got {self.crop}")
        if self.fused and self.amp != "none":
            raise ValueError(f"--amp {self.amp} does not apply to --fused (the fused model "
                             f"runs in its own precision): drop --amp and choose --dtype "
                             f"fp32, bf16 or fp16")
        if self.dtype is not None and not self.fused:
            raise ValueError(f"--dtype {self.dtype} is the precision of the fused model; pass "
                             f"--fused with it (the reference model's precision is --amp)")


@dataclass(kw_only=True)
class PredictConfig(InferenceConfig):
    """``raunet-fast predict``: masks for new data (no ground truth)."""

    command: ClassVar[str] = "predict"
    path_fields: ClassVar[tuple[str, ...]] = ("checkpoint", "out", "ensemble", "input", "onnx")

    checkpoint: str | None = option(None, "checkpoint folder, e.g. RUN_DIR/best (or --onnx)",
                                    parse=str)
    onnx: str | None = option(
        None, "run this .onnx file (raunet-fast export --format onnx) with ONNX Runtime "
              "instead of a checkpoint (the onnx extra)", parse=str, metavar="FILE")
    input: str | None = option(None, "an image, a folder of images, a BraTS case folder or "
                                     "a folder of them; 3-D checkpoints: also a .nii.gz file, "
                                     "a folder of them or a NIfTI folder with images/",
                               required=True, parse=str)
    probabilities: bool = option(False, "2-D: also write the foreground probability as "
                                        "8-bit <stem>_prob.png")
    num_workers: int | None = option(
        None, "threads decoding images and writing masks next to the network (default: up "
              "to 4; 0: none)", parse=int)
    dtype: str | None = option(
        None, "precision: of the --fused model (default fp32 on CPU, bf16 on CUDA); without "
              "--fused bf16 / fp16 run the reference model under autocast (default fp32); "
              "auto (--fused): bf16 where the hardware has bf16 matrix units",
        choices=DTYPE_CHOICES)
    skip_errors: bool = option(
        False, "2-D images and 3-D volumes: go past inputs that cannot be read (each is listed "
               "at the end, and the exit code is 2)")
    skip_existing: bool = option(
        False, "2-D images and 3-D volumes: leave inputs whose outputs are all in --out "
               "already (resume a partly written folder)")

    def check(self) -> None:
        super().check()
        check_at_least("num_workers", self.num_workers, 0)
        if (self.checkpoint is None) == (self.onnx is None):
            raise ValueError("predict: pass --checkpoint (a checkpoint folder) or --onnx (an "
                             "exported .onnx file), one of the two")
        if self.onnx is not None and (self.fused or self.ensemble or
                                      self.dtype not in (None, "fp32") or self.device == "cuda"):
            raise ValueError("--onnx runs the exported file as it is, in fp32 on the CPU: "
                             "--fused, --ensemble, --dtype and --device cuda do not apply")
        if self.skip_existing and self.overwrite:
            raise ValueError("--skip-existing keeps the outputs in --out, --overwrite replaces "
                             "them: pass one of the two")


VIDEO_FORMATS = ("mp4", "avi", "webm")


@dataclass(kw_only=True)
class StreamConfig(InferenceConfig):
    """``raunet-fast stream``: segment a video, a folder of frames or a camera, frame by
    frame, into an overlay video and / or per-frame masks."""

    command: ClassVar[str] = "stream"
    path_fields: ClassVar[tuple[str, ...]] = ("checkpoint", "out", "ensemble", "input")

    input: str | None = option(
        None, "a video file (mp4, avi, webm, ...: the video extra), a folder of frames "
              "(read in natural name order) or camera:N (a camera device)", required=True,
        parse=str)
    video: bool = option(True, "no overlay video (OUT/<input>_overlay.<format>)",
                         flag="--no-video")
    masks: bool = option(False, "also write each frame's mask as OUT/masks/<frame>_mask.png "
                                "(frames of a video are named frame_000000, ...)")
    video_format: str = option("mp4", "container of the overlay video (mp4: H.264, avi: "
                                      "MPEG-4 part 2, webm: VP9)", choices=VIDEO_FORMATS)
    fps: float | None = option(
        None, "frame rate of a folder of frames or a camera (default 25), and of the overlay "
              "video (default: the input's)", parse=float)
    realtime: bool = option(
        False, "play the input at its frame rate and skip frames when inference falls "
               "behind (the newest frame is segmented; the others are counted as dropped)")
    max_frames: int | None = option(None, "stop after this many frames (a camera runs until "
                                          "then, or until Ctrl-C)", parse=int)
    queue_size: int = option(4, "frames each stage may hold ahead of the next (decode, "
                                "inference, overlay, writing run in their own threads)")
    alpha: float = option(0.5, "opacity of the mask colour in the overlay video")
    fused: bool = option(True, "run the reference model instead of the folded, fused one "
                               "(the fused one needs norm=batch; on CUDA it runs as CUDA "
                               "graphs)", flag="--no-fused")
    dtype: str | None = option("auto", "precision of the fused model (auto: bf16 on CUDA and "
                                       "on CPUs with AMX / AVX512-BF16, fp32 elsewhere)",
                               choices=DTYPE_CHOICES)

    def check(self) -> None:
        super().check()
        check_at_least("max_frames", self.max_frames, 1)
        check_at_least("queue_size", self.queue_size, 1)
        if self.fps is not None:
            _finite_positive("fps", self.fps)
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if not self.fused and self.dtype not in (None, "auto", "fp32"):
            raise ValueError(f"--dtype {self.dtype} is the precision of the fused model; drop "
                             f"--no-fused (the reference model runs in fp32)")


#: reproduce --dataset: the training data sets, or synthetic lesions in the ISIC layout
REPRODUCE_DATASETS = (*IMAGE_DATASETS, "generated")


@dataclass
class ReproduceConfig(RunConfig):
    """``raunet-fast reproduce``: the paper's model comparison, rerun (docs/reproduce.md)."""

    command: ClassVar[str] = "reproduce"
    path_fields: ClassVar[tuple[str, ...]] = ("data_root", "out", "cache_dir")

    dataset: str | None = option(
        None, "data set; generated: synthetic lesions in the ISIC 2018 layout, written to "
              "--data-root (default OUT/data)", choices=REPRODUCE_DATASETS, required=True)
    out: str | None = option(None, "output folder: tables, figures, report, one run "
                                   "folder per model and seed (created)", required=True,
                             parse=str)
    data_root: str | None = option(None, "folder holding the data set (required except for "
                                         "generated)", parse=str)
    seeds: int = option(3, "training seeds per model (0 .. N-1), the same for every model")
    epochs: int = option(50, "training epochs of every run")
    image_size: tuple[int, int] | None = option(
        None, "network input size (default: 64 for generated, else train's default)",
        parse=parse_size, metavar="S|HxW")
    base_channels: int = option(64, "channels of the first level (doubled per level)")
    depth: int = option(5, "levels of the U")
    batch_size: int = option(8, "images (slices) per training step")
    lr: float = option(1e-4, "Adam learning rate (paper: 1e-4)")
    patience: int = option(20, "early stopping: epochs without val Dice improvement")
    max_steps_per_epoch: int | None = option(None, "cap on the steps of an epoch", parse=int)
    with_resunet: bool = option(False, "also train ResUNet (residual blocks, no gates)")
    peers: str | None = option(None, "also train outside baselines alike: monai = MONAI "
                                     "AttentionUnet and BasicUNet (5 levels; the peers "
                                     "extra)", choices=("monai",), parse=str)
    cases: int = option(200, "generated: synthetic images to write (60/20/20 % split)")
    crop: int | None = option(192, "BraTS: centre crop of the axial slices", parse=int)
    split_seed: int = option(0, "BraTS / folder: seed of the train/val/test split by case")
    cache_dir: str | None = option(None, "BraTS: keep preprocessed volumes here as .npy",
                                   parse=str)
    num_workers: int = option(2, "DataLoader worker processes")
    device: str = option("auto", "auto: CUDA when present, else CPU", choices=DEVICES)
    resume: bool = option(False, "continue an interrupted reproduce in --out: finished runs "
                                 "are kept, interrupted ones continue")
    progress: bool = option(True, "no progress bars", flag="--no-progress")

    def check(self) -> None:
        super().check()
        for name in ("seeds", "epochs", "base_channels", "batch_size", "patience",
                     "max_steps_per_epoch"):
            check_at_least(name, getattr(self, name), 1)
        check_at_least("depth", self.depth, 2)
        check_at_least("num_workers", self.num_workers, 0)
        check_at_least("cases", self.cases, 3)
        check_size("image_size", self.image_size)
        check_out_folder(self.out)
        _finite_positive("lr", self.lr)
        if self.dataset != "generated" and self.data_root is None:
            raise ValueError(f"reproduce --dataset {self.dataset} needs --data-root (the "
                             f"folder holding the data set)")

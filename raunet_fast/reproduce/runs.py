"""The runs of a reproduce: one training run and one test-split evaluation per model and
seed, each in its own folder ``OUT/runs/<model>-seed<k>/``, plus each model's size and
speed. Every model gets the same data, split, budget, augmentation and seeds."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import ReproduceConfig, TrainConfig, fit_size
from ..hub import atomic_write_json
from ..peers import FIXED_DEPTH

#: display names, in table order; RA-U-Net last (the one compared with each baseline)
LABELS = {"unet": "U-Net", "attention-unet": "Attention U-Net", "resunet": "ResUNet",
          "monai-attention-unet": "MONAI AttentionUnet", "monai-basicunet": "MONAI BasicUNet",
          "raunet": "RA-U-Net"}
PROPOSED = "raunet"
#: the outside baselines each ``--peers`` choice adds
PEERS = {"monai": ("monai-attention-unet", "monai-basicunet")}


@dataclass(frozen=True)
class Run:
    model: str
    seed: int
    folder: Path

    @property
    def trained(self) -> bool:
        return (self.folder / "result.json").is_file()

    @property
    def evaluated(self) -> bool:
        return (self.folder / "test" / "summary.json").is_file()

    @property
    def cases_csv(self) -> Path:
        return self.folder / "test" / "cases.csv"


def model_names(cfg: ReproduceConfig) -> list[str]:
    extra = {"resunet"} if cfg.with_resunet else set()
    extra.update(PEERS.get(cfg.peers, ()))
    optional = {"resunet", *(m for ms in PEERS.values() for m in ms)}
    return [m for m in LABELS if m not in optional or m in extra]


def plan(cfg: ReproduceConfig) -> list[Run]:
    """Every (model, seed) run, seeds outermost: an interrupted reproduce has all models
    of the early seeds."""
    runs_dir = Path(cfg.out) / "runs"
    return [Run(m, s, runs_dir / f"{m}-seed{s}") for s in range(cfg.seeds)
            for m in model_names(cfg)]


def data_source(cfg: ReproduceConfig) -> tuple[str, Path]:
    """(data set layout, root) the runs read; ``generated`` data is written here once."""
    if cfg.dataset != "generated":
        return cfg.dataset, Path(cfg.data_root)
    from ..data.generate import make_isic2018
    from ..data.isic import SPLIT_NAMES, truth_dir_name

    root = Path(cfg.data_root) if cfg.data_root else Path(cfg.out) / "data"
    if not all((root / truth_dir_name(s)).is_dir() for s in SPLIT_NAMES):
        make_isic2018(root, cfg.cases, shape=(96, 128), seed=0, overwrite=True)
    return "isic2018", root


def model_depth(cfg: ReproduceConfig, model: str) -> int:
    """``--depth``, except for a peer whose depth MONAI fixes."""
    return FIXED_DEPTH.get(model, cfg.depth)


def image_size(cfg: ReproduceConfig):
    """The input size every model trains on: rounded up to the deepest model's multiple."""
    size = cfg.image_size
    if size is None and cfg.dataset == "generated":
        size = (64, 64)
    if size is None:
        return None
    multiple = max(2 ** (model_depth(cfg, m) - 1) for m in model_names(cfg))
    return fit_size("--image-size", tuple(size), multiple)


def train_config(cfg: ReproduceConfig, run: Run, dataset: str, root: Path) -> TrainConfig:
    """The run's training configuration: everything but the model and the seed is shared."""
    return TrainConfig(
        data_root=str(root), out=str(run.folder), model=run.model, dataset=dataset,
        epochs=cfg.epochs, batch_size=cfg.batch_size, image_size=image_size(cfg),
        crop=cfg.crop, base_channels=cfg.base_channels,
        depth=model_depth(cfg, run.model), lr=cfg.lr,
        patience=cfg.patience, max_steps_per_epoch=cfg.max_steps_per_epoch, seed=run.seed,
        split_seed=cfg.split_seed, cache_dir=cfg.cache_dir, num_workers=cfg.num_workers,
        device=cfg.device, resume=cfg.resume, progress=cfg.progress, threads=cfg.threads,
        cache_images=dataset != "brats2021", convert_channels=cfg.convert_channels,
        max_image_pixels=cfg.max_image_pixels, nan_to_num=cfg.nan_to_num).validate()


def check_out(cfg: ReproduceConfig) -> None:
    """A folder holding an earlier reproduce is continued only with ``--resume``."""
    runs = Path(cfg.out) / "runs"
    if not cfg.resume and runs.is_dir() and any(runs.iterdir()):
        raise ValueError(f"{cfg.out} holds an earlier reproduce; pass --resume to continue "
                         f"it (finished runs are kept), or choose another --out")


def execute(cfg: ReproduceConfig, runs: list[Run], dataset: str, root: Path) -> dict:
    """Train and evaluate every run that is not finished; returns what was done."""
    from tqdm import tqdm

    from ..engine import train
    from ..engine.resume import check_same_run

    done = {"trained": [], "kept": []}
    for run in tqdm(runs, desc="reproduce", unit="run", disable=not cfg.progress):
        tcfg = train_config(cfg, run, dataset, root)
        if run.trained and run.evaluated:
            check_same_run(run.folder, tcfg)  # a kept run must match the options
            done["kept"].append(run.folder.name)
            continue
        if not run.trained:
            train(tcfg)
            done["trained"].append(run.folder.name)
        evaluate_run(cfg, run, dataset, root)
    return done


def evaluate_run(cfg: ReproduceConfig, run: Run, dataset: str, root: Path) -> None:
    """The best checkpoint scored on the test split into ``RUN/test/``."""
    from ..engine import evaluate

    extra = {"cache_dir": cfg.cache_dir} if dataset == "brats2021" else {}
    evaluate(run.folder / "best", dataset, root, "test", run.folder / "test",
             device=cfg.device, progress=False, overwrite=True, threads=cfg.threads,
             batch_size=cfg.batch_size, convert_channels=cfg.convert_channels,
             max_image_pixels=cfg.max_image_pixels, nan_to_num=cfg.nan_to_num, **extra)


def input_shape(checkpoint: Path, in_channels: int) -> tuple[int, int, int, int]:
    """One network input as the checkpoint was trained: 2-D size, else the BraTS crop."""
    from ..io.checkpoints import read_preprocessing

    prep = read_preprocessing(checkpoint)
    size = prep.get("image_size") or [prep.get("crop") or 192] * 2
    return (1, in_channels, int(size[0]), int(size[1]))


def model_cost(checkpoint: Path, device: str, repeats: int = 3) -> dict[str, Any]:
    """Parameters, GFLOP per image (multiply-add = 2) and inference images / s of the
    checkpoint's model on ``device`` (batch 1, after one warm-up call)."""
    from ..benchmark import network_flops
    from ..engine.device import resolve_device
    from ..hub import from_pretrained

    dev = resolve_device(device)
    model = from_pretrained(checkpoint, map_location=dev).eval()
    shape = input_shape(checkpoint, model.in_channels)
    x = torch.rand(shape, device=dev)
    flops = network_flops(model, x)
    with torch.no_grad():
        model(x)
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(x)
        _sync(dev)
        seconds = time.perf_counter() - t0
    return {"params": sum(p.numel() for p in model.parameters()),
            "gflop_per_image": None if flops is None else flops / 1e9,
            "images_per_s": repeats * shape[0] / seconds,
            "input": "x".join(map(str, shape[1:])), "device": str(dev)}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def costs(cfg: ReproduceConfig, runs: list[Run]) -> dict[str, dict[str, Any]]:
    """:func:`model_cost` per model, from its first seed's best checkpoint."""
    first = {}
    for run in runs:
        first.setdefault(run.model, run)
    return {m: model_cost(r.folder / "best", cfg.device) for m, r in first.items()}


def training_seconds(run: Run) -> float:
    """Wall time of the run's finished epochs (from its log)."""
    rows = json.loads((run.folder / "log.json").read_text())
    return float(sum(r.get("epoch_time_s", 0.0) for r in rows))


def write_config(cfg: ReproduceConfig, done: dict) -> None:
    out = Path(cfg.out)
    atomic_write_json(out / "reproduce.json", {**cfg.to_dict(), "last_invocation": done})

"""``raunet-fast reproduce``: parse -> :class:`~raunet_fast.config.ReproduceConfig` ->
:func:`raunet_fast.reproduce.reproduce`."""
from __future__ import annotations

from pathlib import Path

from ..config import ReproduceConfig
from ..io.lock import folder_lock
from .common import add_parser, resolve


def run(args) -> int:
    cfg = resolve(args)
    if cfg is None:
        return 0
    from ..reproduce import reproduce

    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    with folder_lock(cfg.out, "reproduce"):
        result = reproduce(cfg)
    print((Path(cfg.out) / "table1.md").read_text())
    print("\n".join(result["lines"]))
    print(f"\nreport in {result['paths']['report']}; figures "
          f"{', '.join(str(result['paths'][k]) for k in ('fig5', 'fig6', 'curves'))}")
    return 0


def add_cli(sub) -> None:
    p = add_parser(sub, "reproduce", ReproduceConfig,
                   help="rerun the paper's comparison: U-Net, Attention U-Net, RA-U-Net "
                        "over seeds (Table 1, Fig. 5, Fig. 6)",
                   description="Train U-Net, Attention U-Net (--with-resunet: ResUNet) and "
                               "RA-U-Net with the same data, split, budget, augmentation and "
                               "seeds, score each on the test split and write OUT/table1.md, "
                               "table1.csv, table1_paired.csv, fig5_metrics.png, "
                               "fig6_cases.png, curves.png and report.md; one run folder per "
                               "model and seed under OUT/runs/. --resume continues an "
                               "interrupted reproduce. --peers monai adds MONAI's AttentionUnet "
                               "and BasicUNet as outside baselines (the peers extra). "
                               "Figures need the plots extra.")
    p.set_defaults(func=run)

"""``raunet-fast reproduce --peers monai``: MONAI's AttentionUnet and BasicUNet trained
alike as outside baselines. The table's rows for them are recomputed here from their runs'
cases.csv (numpy, scipy); the adapter keeps the input size on odd sizes and has exactly the
parameters of the MONAI network built here directly; without MONAI the error is one line
naming the peers extra."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import wilcoxon

from helpers.reproduce import METRICS, case_scores, read
from raunet_fast import cli

pytest.importorskip("matplotlib")
nets = pytest.importorskip("monai.networks.nets")

PEERS = {"monai-attention-unet": "MONAI AttentionUnet", "monai-basicunet": "MONAI BasicUNet"}
ALL = ("unet", "attention-unet", *PEERS, "raunet")
SEEDS = 2


def reproduce_args(out: Path, *extra: str) -> list[str]:
    # odd sizes: a non-square input, 6 base channels, depth 3 (BasicUNet keeps its 5 levels)
    return ["reproduce", "--dataset", "generated", "--out", str(out), "--cases", "12",
            "--seeds", str(SEEDS), "--epochs", "1", "--image-size", "24x40",
            "--base-channels", "6", "--depth", "3", "--batch-size", "4", "--lr", "3e-3",
            "--num-workers", "0", "--device", "cpu", "--no-progress", "--peers", "monai",
            *extra]


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("peers") / "out"
    assert cli.main(reproduce_args(out)) == 0
    return out




def test_peer_rows_match_their_runs_cases(done):
    ours = {r["model"]: r for r in read(done / "table1.csv") if r["source"] == "ours"}
    assert set(ours) == {"U-Net", "Attention U-Net", "RA-U-Net", *PEERS.values()}
    for model, label in PEERS.items():
        per_seed = [case_scores(done, model, s) for s in range(SEEDS)]
        for m in METRICS:
            means = np.array([np.nanmean([c[m] for c in cases.values()])
                              for cases in per_seed], dtype=np.float64)
            assert float(ours[label][f"{m}_mean"]) == pytest.approx(means.mean(), rel=1e-8)
            assert float(ours[label][f"{m}_std"]) == pytest.approx(means.std(ddof=1),
                                                                   rel=1e-8, abs=1e-10)
    table = (done / "table1.md").read_text()
    assert all(label in table for label in PEERS.values())


def test_paired_comparison_with_each_peer(done):
    rows = read(done / "table1_paired.csv")
    assert {r["comparison"] for r in rows} == {
        f"RA-U-Net - {b}" for b in ("U-Net", "Attention U-Net", *PEERS.values())}
    proposed = [case_scores(done, "raunet", s) for s in range(SEEDS)]
    for model, label in PEERS.items():
        other = [case_scores(done, model, s) for s in range(SEEDS)]
        names = sorted(proposed[0])
        d = np.array([np.mean([p[n]["dice"] for p in proposed]) -
                      np.mean([o[n]["dice"] for o in other]) for n in names])
        row = next(r for r in rows if r["comparison"] == f"RA-U-Net - {label}"
                   and r["metric"] == "dice")
        assert float(row["mean_diff"]) == pytest.approx(d.mean(), rel=1e-8, abs=1e-10)
        expected_p = 1.0 if not np.any(d) else wilcoxon(d).pvalue
        assert float(row["wilcoxon_p"]) == pytest.approx(expected_p, rel=1e-8)


def test_every_model_trains_on_the_same_input(done):
    # 24x40 rounded up to BasicUNet's multiple of 16, for every model alike
    for model in ALL:
        run = json.loads((done / "runs" / f"{model}-seed0" / "run.json").read_text())
        assert (run["image_size"], run["epochs"], run["lr"]) == ([32, 48], 1, 3e-3), model


def test_peer_checkpoints_name_and_rebuild_the_peer(done):
    from raunet_fast import from_pretrained

    for model, arch, depth in (("monai-attention-unet", "MonaiAttentionUnet", 3),
                               ("monai-basicunet", "MonaiBasicUNet", 5)):
        best = done / "runs" / f"{model}-seed0" / "best"
        config = json.loads((best / "config.json").read_text())
        assert (config["architecture"], config["depth"], config["base_channels"]) == \
            (arch, depth, 6)
        net = from_pretrained(best)
        assert type(net).__name__ == arch
        assert net(torch.rand(1, 3, 25, 41)).shape == (1, 1, 25, 41)


def test_figures_include_the_peers(done):
    from test_reproduce import panel_grid

    n_test = len(read(done / "runs" / "raunet-seed0" / "test" / "cases.csv"))
    panel_grid(done / "curves.png", 1, len(ALL))
    panel_grid(done / "fig6_cases.png", min(3, n_test), 2 + len(ALL) + 1)
    panel_grid(done / "fig5_metrics.png", 1, len(METRICS))


@pytest.mark.parametrize("name", list(PEERS))
def test_adapter_keeps_odd_sizes_and_monai_parameters(name):
    from raunet_fast import build_model

    depth = 5 if name == "monai-basicunet" else 4
    model = build_model(name, in_channels=3, out_channels=2, base_channels=5, depth=depth)
    x = torch.rand(2, 3, 23, 37)
    assert model(x).shape == (2, 2, 23, 37)
    if name == "monai-basicunet":
        ref = nets.BasicUNet(spatial_dims=2, in_channels=3, out_channels=2,
                             features=(5, 5, 10, 20, 40, 5), norm="batch")
    else:
        ref = nets.AttentionUnet(spatial_dims=2, in_channels=3, out_channels=2,
                                 channels=(5, 10, 20, 40), strides=(2, 2, 2))
    assert sum(p.numel() for p in model.parameters()) == \
        sum(p.numel() for p in ref.parameters())
    # the adapter computes what MONAI does on a padded input, cropped back
    ref.load_state_dict({k[len("net."):]: v for k, v in model.state_dict().items()})
    model.eval(), ref.eval()
    m = 2 ** (depth - 1)  # pad bottom/right to the size multiple, by hand
    padded = torch.nn.functional.pad(x, (0, -37 % m, 0, -23 % m))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(padded)[..., :23, :37])


def test_basicunet_refuses_another_depth():
    from raunet_fast import build_model

    with pytest.raises(ValueError, match="5 levels"):
        build_model("monai-basicunet", base_channels=4, depth=3)


def test_missing_monai_names_the_peers_extra(done, tmp_path, capsys, monkeypatch):
    from raunet_fast import build_model, from_pretrained
    from raunet_fast.errors import MissingExtra

    monkeypatch.setitem(sys.modules, "monai", None)  # import fails
    assert cli.main(reproduce_args(tmp_path / "o")) == 2
    err = capsys.readouterr().err.strip()
    assert "raunet-fast[peers]" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o" / "runs").exists()  # refused before any training
    with pytest.raises(MissingExtra, match=r"raunet-fast\[peers\]"):
        build_model("monai-attention-unet", base_channels=4, depth=3)
    with pytest.raises(MissingExtra, match=r"raunet-fast\[peers\]"):  # a saved peer too
        from_pretrained(done / "runs" / "monai-basicunet-seed0" / "best")


def test_fused_evaluate_of_a_peer_is_one_line(done, tmp_path, capsys):
    data = done / "data"
    assert cli.main(["evaluate", "--checkpoint", str(done / "runs" / "monai-basicunet-seed0"
                                                     / "best"),
                     "--dataset", "isic2018", "--data-root", str(data), "--split", "test",
                     "--out", str(tmp_path / "ev"), "--fused", "--device", "cpu",
                     "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no fused inference form" in err and len(err.splitlines()) == 1


def test_summary_of_a_peer_is_one_line(capsys):
    assert cli.main(["summary", "--model", "monai-basicunet", "--base-channels", "4",
                     "--image-size", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no per-level summary" in err and len(err.splitlines()) == 1

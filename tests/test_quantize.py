"""int8 post-training quantization (torchao PT2E): masks agree with fp32 on held-out
images, the quantize CLI reports the Dice change, predict / evaluate take the folder, and
a missing extra is one line naming it."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from raunet_fast import cli
from raunet_fast.models import build_model

pytest.importorskip("torchao", reason="the cpu-int8 extra (installed by the test extra)")
from raunet_fast.quantize import Int8Model, quantize_model  # noqa: E402

SIZE = 32


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with a bright disc on textured background, and the disc masks."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    images, masks = [], []
    for _ in range(n):
        cy, cx, r = (torch.randint(8, SIZE - 8, (2,), generator=g).tolist()
                     + [int(torch.randint(4, 9, (1,), generator=g))])
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).float()
        noise = torch.rand(3, SIZE, SIZE, generator=g) * 0.3
        images.append((noise + 0.6 * disc).clamp(0, 1))
        masks.append(disc)
    return torch.stack(images), torch.stack(masks)[:, None]


@pytest.fixture(scope="module")
def trained():
    """A tiny RA-U-Net trained for a few hundred steps to segment the discs."""
    torch.manual_seed(0)
    model = build_model("raunet", base_channels=4, depth=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = _blobs(64, 0)
    for step in range(150):
        idx = torch.randint(0, 64, (16,))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a * b).sum() / (a.sum() + b.sum()).clamp_min(1))


def test_int8_masks_agree_with_fp32_on_held_out_images(trained):
    calib, _ = _blobs(16, 1)
    test, truth = _blobs(12, 2)
    q = quantize_model(trained, calib.split(4), calib[:2])
    from raunet_fast.runtime import compile_frozen

    int8 = compile_frozen(q)
    with torch.no_grad():
        fp32_mask = (trained(test) > 0).float()
        int8_mask = (int8(test) > 0).float()
    assert _dice(fp32_mask, truth) > 0.8  # the model learnt the task
    assert _dice(int8_mask, fp32_mask) > 0.95
    assert abs(_dice(int8_mask, truth) - _dice(fp32_mask, truth)) < 0.02


def _folder_data(root, n_train=6, n_val=4):
    for split, n, seed in (("train", n_train, 3), ("val", n_val, 4)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        x, y = _blobs(n, seed)
        for i in range(n):
            img = (x[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(img).save(root / split / "images" / f"{split}{i}.png")
            Image.fromarray((y[i, 0].numpy() * 255).astype(np.uint8)).save(
                root / split / "masks" / f"{split}{i}.png")
    return root


def test_quantize_cli_report_and_predict(trained, tmp_path, capsys):
    ck = tmp_path / "ck"
    trained.save_pretrained(ck)
    (ck / "preprocessing.json").write_text(json.dumps(
        {"dataset": "folder", "image_size": [SIZE, SIZE], "threshold": 0.5, "split_seed": 0}))
    data = _folder_data(tmp_path / "data")
    out = tmp_path / "int8"
    assert cli.main(["quantize", "--checkpoint", str(ck), "--calibration",
                     str(data / "train" / "images"), "--out", str(out), "--dataset", "folder",
                     "--data-root", str(data), "--split", "val"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "quantization.json").read_text())
    assert report["calibration_images"] == 6 and "val split: dice" in printed
    v = report["validation"]
    assert v["fp32"]["dice"] > 0.8 and abs(v["change"]["dice"]) < 0.02
    assert v["change"]["dice"] == pytest.approx(v["int8"]["dice"] - v["fp32"]["dice"])
    common = ["--input", str(data / "val" / "images"), "--no-progress", "--device", "cpu"]
    assert cli.main(["predict", "--checkpoint", str(out), "--out", str(tmp_path / "p8"),
                     *common]) == 0
    assert "int8 model" in capsys.readouterr().out
    assert cli.main(["predict", "--checkpoint", str(ck), "--out", str(tmp_path / "p32"),
                     *common]) == 0
    for i in range(4):
        a = np.asarray(Image.open(tmp_path / "p8" / f"val{i}_mask.png")) > 0
        b = np.asarray(Image.open(tmp_path / "p32" / f"val{i}_mask.png")) > 0
        assert (a != b).mean() < 0.02
    assert cli.main(["predict", "--checkpoint", str(out), "--out", str(tmp_path / "f"),
                     "--fused", *common]) == 2
    assert "drop --fused" in capsys.readouterr().err
    # benchmark takes the int8 folder, timed next to its fp32 source
    assert cli.main(["benchmark", "--checkpoint", str(out), "--size", str(SIZE), "--batch", "1",
                     "--device", "cpu", "--warmup", "1", "--iters", "1", "--no-compile"]) == 0
    table = capsys.readouterr().out
    assert "int8-checkpoint" in table and "eager-fp32" in table and "FAILED" not in table


def test_int8_model_refuses_wrong_input(trained, tmp_path):
    from raunet_fast.quantize import save_quantized

    trained.save_pretrained(tmp_path / "ck")
    calib, _ = _blobs(4, 5)
    q = quantize_model(trained, [calib], calib[:2])
    save_quantized(tmp_path / "q", q, calib[:2], tmp_path / "ck", {}, trained.size_multiple)
    with pytest.raises(ValueError, match="takes N x 3 x H x W"):
        Int8Model(tmp_path / "q", compile=False)(torch.rand(1, 1, SIZE, SIZE))


def test_missing_extra_is_one_line(tmp_path, monkeypatch, capsys):
    trained_ck = tmp_path / "ck"
    build_model("unet", base_channels=4, depth=2).save_pretrained(trained_ck)
    (trained_ck / "preprocessing.json").write_text(json.dumps({"image_size": [16, 16]}))
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    monkeypatch.setitem(sys.modules, "torchao", None)
    assert cli.main(["quantize", "--checkpoint", str(trained_ck), "--calibration",
                     str(tmp_path / "imgs"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and 'pip install "raunet-fast[cpu-int8]"' in err

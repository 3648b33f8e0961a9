"""ONNX export and ONNX Runtime: parity with eager PyTorch (another library computing the
same network), the metadata that carries the preprocessing, predict --onnx, and the
one-line error when the extra is missing."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from raunet_fast import cli
from raunet_fast.models import build_model

pytest.importorskip("onnxruntime", reason="the onnx extra (installed by the test extra)")
from raunet_fast.onnx_export import OnnxModel, export_onnx  # noqa: E402

PREP = {"dataset": "folder", "image_size": [24, 20], "threshold": 0.5,
        "output": "sigmoid per channel", "in_channels": 3}


def _model(seed: int = 0, out_channels: int = 2):
    """A small RA-U-Net with non-trivial BatchNorm statistics (folding must matter)."""
    torch.manual_seed(seed)
    m = build_model("raunet", in_channels=3, out_channels=out_channels, base_channels=6,
                    depth=3)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.rand(4, 3, 24, 28) * 2 - 0.3)
    return m.eval()


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    paths = {}
    for folded in (False, True):
        paths[folded] = export_onnx(model, folder / f"m{int(folded)}.onnx", size=(16, 24),
                                    batch=2, folded=folded, preprocessing=PREP)
    return paths


@pytest.mark.parametrize("folded", [False, True])
@pytest.mark.parametrize("shape", [(1, 3, 16, 24), (3, 3, 32, 8 * 5), (2, 3, 13, 27)])
def test_onnx_runtime_equals_eager(model, exported, folded, shape):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    with torch.no_grad():
        want = model.double()(x.double()).float()
        model.float()
    got = OnnxModel(exported[folded])(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_metadata_travels_with_the_file(model, exported):
    runner = OnnxModel(exported[True])
    assert runner.preprocessing == PREP
    assert (runner.in_channels, runner.out_channels, runner.size_multiple) == (3, 2, 4)


def test_static_file_splits_batches_and_refuses_larger_images(model, tmp_path):
    path = export_onnx(model, tmp_path / "s.onnx", size=(20, 24), batch=2, dynamic=False)
    runner = OnnxModel(path)
    x = torch.rand(3, 3, 18, 24)  # 3 images on a batch-2 file, smaller than its 20 x 24
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(runner(x), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    with pytest.raises(ValueError, match="fixed input size 20x24"):
        runner(torch.rand(1, 3, 24, 24))


def test_export_cli_and_predict_onnx_match_the_checkpoint(model, tmp_path, capsys):
    ck = tmp_path / "ck"
    one = _model(1, out_channels=1)
    one.save_pretrained(ck)
    (ck / "preprocessing.json").write_text(json.dumps(PREP))
    onnx_file = tmp_path / "m.onnx"
    assert cli.main(["export", "--checkpoint", str(ck), "--out", str(onnx_file), "--format",
                     "onnx", "--fused"]) == 0
    assert "BatchNorm-folded" in capsys.readouterr().out
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, hw in enumerate([(30, 26), (17, 41), (24, 20)]):
        Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(images / f"i{i}.png")
    common = ["--input", str(images), "--no-progress", "--device", "cpu", "--probabilities"]
    assert cli.main(["predict", "--checkpoint", str(ck), "--out", str(tmp_path / "a"), *common]) == 0
    assert cli.main(["predict", "--onnx", str(onnx_file), "--out", str(tmp_path / "b"), *common]) == 0
    for i in range(3):
        for kind in ("mask", "prob"):
            a = np.asarray(Image.open(tmp_path / "a" / f"i{i}_{kind}.png"), dtype=int)
            b = np.asarray(Image.open(tmp_path / "b" / f"i{i}_{kind}.png"), dtype=int)
            assert a.shape == b.shape
            assert np.abs(a - b).max() <= (1 if kind == "prob" else 255)
            assert (a != b).sum() <= 3, (i, kind)
    capsys.readouterr()
    assert cli.main(["predict", "--onnx", str(onnx_file), "--checkpoint", str(ck), "--out",
                     str(tmp_path / "c"), *common]) == 2
    assert "one of the two" in capsys.readouterr().err
    assert cli.main(["predict", "--onnx", str(onnx_file), "--fused", "--out",
                     str(tmp_path / "c"), *common]) == 2
    assert "--fused" in capsys.readouterr().err


def test_missing_extra_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    (tmp_path / "i").mkdir()
    assert cli.main(["predict", "--onnx", str(tmp_path / "x.onnx"), "--input",
                     str(tmp_path / "i"), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert 'pip install "raunet-fast[onnx]"' in err and "onnxruntime" in err, err

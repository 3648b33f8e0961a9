"""export, benchmark, quantize and stream with a 3-D (volume) checkpoint: torch.export and
ONNX programs against the eager model run in fp64 on odd volumes (dynamic batch, D, H, W),
predict --onnx against predict --checkpoint on a BraTS case, the benchmark's table, and the
one-line refusals (exit 2, nothing written)."""
from __future__ import annotations

import copy
import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from helpers.numerics import randomize_bn
from raunet_fast import cli
from raunet_fast.data import make_brats2021
from raunet_fast.export import export_model
from raunet_fast.models import build_model

# what a 3-D BraTS training run records (raunet-fast train --spatial-dims 3 --patch 8)
PREP = {"crop": None, "dataset": "brats2021", "image_size": None, "in_channels": 4,
        "labels": None, "output": "sigmoid per channel", "patch": [8, 8, 8],
        "regions": ["WT", "TC", "ET"], "spatial_dims": 3, "split_seed": 0, "threshold": 0.5,
        "normalization": "z-score per channel over non-zero voxels"}


def _volume_model(seed: int = 0, channels: tuple[int, int] = (4, 3)):
    """A 3-D RA-U-Net (4 -> 3 channels, base 6, depth 3: size multiple 4) with non-trivial
    BatchNorm statistics, so folding matters."""
    torch.manual_seed(seed)
    model = build_model("raunet", in_channels=channels[0], out_channels=channels[1],
                        base_channels=6, depth=3, spatial_dims=3)
    return randomize_bn(model)


def _fp64(model, x):
    with torch.no_grad():
        return copy.deepcopy(model).double()(x.double()).float()


def _close(got, want):
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmd3d")
    folder = root / "ck"
    _volume_model().save_pretrained(folder)
    (folder / "preprocessing.json").write_text(json.dumps(PREP))
    make_brats2021(root / "data", 1, (19, 17, 11), seed=3)  # X, Y, Z: odd, unequal
    return folder


def _case(ck):
    return next((ck.parent / "data").iterdir())


def _volume(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_pt2_reference_and_fused_equal_fp64_eager_on_other_shapes(ck, tmp_path, capsys):
    model = _volume_model()
    ref_file, fused_file = tmp_path / "r.pt2", tmp_path / "f.pt2"
    assert cli.main(["export", "--checkpoint", str(ck), "--out", str(ref_file)]) == 0
    assert "N x 4 x D x H x W, D, H and W multiples of 4 from 8" in capsys.readouterr().out
    assert cli.main(["export", "--checkpoint", str(ck), "--out", str(fused_file), "--fused",
                     "--size", "8x12x16"]) == 0
    for path in (ref_file, fused_file):
        program = torch.export.load(str(path)).module()
        # batch, D, H and W all other than the example's (D 12 of a 8-deep example)
        for shape in ((1, 4, 12, 20, 8), (3, 4, 8, 8, 24)):
            x = _volume(shape, sum(shape))
            with torch.no_grad():
                _close(program(x), _fp64(model, x))
        with pytest.raises((AssertionError, RuntimeError), match="[Gg]uard|size"):
            program(torch.randn(1, 4, 10, 8, 8))  # D % 4 != 0
    static = export_model(model, size=(8, 12, 4), batch=1, dynamic=False, fused=True).module()
    x = _volume((1, 4, 8, 12, 4), 5)
    with torch.no_grad():
        _close(static(x), _fp64(model, x))


def test_onnx_dynamic_and_static_equal_fp64_eager(ck, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the onnx extra (installed by the test extra)")
    from raunet_fast.onnx_export import OnnxModel, export_onnx

    model, path = _volume_model(), tmp_path / "m.onnx"
    assert cli.main(["export", "--checkpoint", str(ck), "--out", str(path), "--format",
                     "onnx"]) == 0
    capsys.readouterr()
    runner = OnnxModel(path)
    assert (runner.spatial_dims, runner.in_channels, runner.out_channels) == (3, 4, 3)
    assert runner.preprocessing == PREP
    shape = runner.session.get_inputs()[0].shape  # names where dynamic, ints where fixed
    assert shape[1] == 4 and all(isinstance(s, str) for s in (shape[0], *shape[2:])), shape
    # 10 x 14 x 11 is padded up to 12 x 16 x 12 inside and cropped, as the eager model does
    for shape in ((1, 4, 10, 14, 11), (2, 4, 16, 8, 12)):
        x = _volume(shape, sum(shape))
        _close(runner(x), _fp64(model, x))
    static = OnnxModel(export_onnx(model, tmp_path / "s.onnx", size=(8, 8, 12), batch=2,
                                   dynamic=False, folded=True))
    x = _volume((3, 4, 7, 8, 9), 9)  # 3 volumes on a batch-2 file, smaller than 8 x 8 x 12
    _close(static(x), _fp64(model, x))
    with pytest.raises(ValueError, match="fixed input size 8x8x12"):
        static(torch.rand(1, 4, 12, 8, 8))
    with pytest.raises(ValueError, match="N x 4 x D x H x W"):
        static(torch.rand(1, 4, 8, 8))


def test_predict_onnx_writes_the_checkpoints_labels(ck, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the onnx extra (installed by the test extra)")
    path = tmp_path / "m.onnx"
    assert cli.main(["export", "--checkpoint", str(ck), "--out", str(path), "--format",
                     "onnx", "--fused"]) == 0
    case = _case(ck)
    common = ["--input", str(case), "--no-progress", "--device", "cpu", "--num-workers", "0"]
    assert cli.main(["predict", "--checkpoint", str(ck), "--out", str(tmp_path / "a"),
                     *common]) == 0
    assert cli.main(["predict", "--onnx", str(path), "--out", str(tmp_path / "b"),
                     *common]) == 0
    assert "1 volume" in capsys.readouterr().out
    name = f"{case.name}_pred_seg.nii.gz"
    a = np.asarray(nib.load(str(tmp_path / "a" / name)).dataobj)
    b = np.asarray(nib.load(str(tmp_path / "b" / name)).dataobj)
    assert a.shape == b.shape == (19, 17, 11)
    assert len(np.unique(a)) > 1  # the label map is not constant: the comparison can fail
    assert (a != b).sum() <= 2, int((a != b).sum())


def test_predict_onnx_on_a_nifti_file(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the onnx extra (installed by the test extra)")
    from raunet_fast.data.generate import make_nifti_folder
    from raunet_fast.onnx_export import export_onnx

    prep = dict(PREP, dataset="nifti-folder", in_channels=2, labels=[1, 2],
                regions=["core", "oedema"], patch=[8, 12, 8])
    ck, path = tmp_path / "ck", tmp_path / "n.onnx"
    model = _volume_model(1, (2, 2))
    with torch.no_grad():  # each channel's logits straddle 0: a label map that is not constant
        logits = model(_volume((1, 2, 12, 16, 12), 4))
        model.head.bias -= logits.transpose(0, 1).flatten(1).median(1).values
    model.save_pretrained(ck)
    (ck / "preprocessing.json").write_text(json.dumps(prep))
    export_onnx(model, path, size=(8, 8, 8), preprocessing=prep)
    make_nifti_folder(tmp_path / "data", 1, (13, 15, 10), seed=2, channels=2)
    image = next((tmp_path / "data" / "images").iterdir())  # one X x Y x Z x 2 .nii.gz
    common = ["--input", str(image), "--no-progress", "--device", "cpu", "--num-workers", "0"]
    assert cli.main(["predict", "--checkpoint", str(ck), "--out", str(tmp_path / "a"),
                     *common]) == 0
    assert cli.main(["predict", "--onnx", str(path), "--out", str(tmp_path / "b"),
                     *common]) == 0
    a = np.asarray(nib.load(str(tmp_path / "a" / image.name)).dataobj)
    b = np.asarray(nib.load(str(tmp_path / "b" / image.name)).dataobj)
    assert a.shape == b.shape == (13, 15, 10) and len(np.unique(a)) > 1
    assert (a != b).sum() <= 2, int((a != b).sum())


def test_benchmark_times_volumes(ck, tmp_path, capsys):
    out = tmp_path / "b.csv"
    tiny = ["--device", "cpu", "--no-compile", "--iters", "1", "--warmup", "0"]
    assert cli.main(["benchmark", "--checkpoint", str(ck), *tiny, "--size", "8x12x8",
                     "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "vol/s" in text and "fastest:" in text and "FAILED" not in text, text
    assert "int8-fp32in left out" in text and "2-D" in text
    rows = list(csv.DictReader(out.open()))
    assert {r["shape"] for r in rows} == {"1x4x8x12x8"}
    assert {"eager-fp32", "fused-fp32"} <= {r["variant"] for r in rows}
    for r in rows:
        assert float(r["err"]) < (0.1 if r["variant"].endswith("bf16") else 1e-4), r
    # a fresh 3-D model in bf16: the low-precision reference runs channels_last_3d
    assert cli.main(["benchmark", "--spatial-dims", "3", "--in-channels", "2",
                     "--base-channels", "4", "--size", "8", "--dtype", "bf16", *tiny]) == 0
    text = capsys.readouterr().out
    assert " eager-bf16 " in text and " fused-bf16 " in text and "FAILED" not in text, text
    assert "8x8x8" in text


@pytest.mark.parametrize("argv,words", [
    (["export", "--size", "8x8"], ["8x8", "DxHxW"]),
    (["export", "--size", "6"], ["multiple", "at least 8"]),
    (["export", "--format", "onnx", "--size", "8x12"], ["DxHxW"]),
    (["benchmark", "--size", "8x8"], ["DxHxW"]),
    (["benchmark", "--spatial-dims", "3"], ["--spatial-dims"]),
    (["quantize", "--calibration", "{data}"], ["3-D", "int8", "2-D"]),
    (["stream", "--input", "{frames}"], ["stream segments 2-D frames", "3-D (volume) model",
                                         "use predict"]),
])
def test_refusals_are_one_line_and_write_nothing(ck, tmp_path, capsys, argv, words):
    from PIL import Image

    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(frames / "f0.png")
    subs = {"{data}": str(ck.parent / "data"), "{frames}": str(frames)}
    argv = [subs.get(a, a) for a in argv]
    out = tmp_path / ("o.pt2" if argv[0] == "export" else "o")
    tail = [] if argv[0] == "benchmark" else ["--out", str(out)]
    tail += [] if argv[0] == "quantize" else ["--device", "cpu"]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli.main([argv[0], "--checkpoint", str(ck), *argv[1:], *tail]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"raunet-fast {argv[0]}: error:"), err
    for w in words:
        assert w in err, (w, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before

"""``raunet-fast predict`` on generated data: masks for an ISIC-layout image folder equal the
reference model's own thresholded output at each image's size; the fused model gives the
same masks; BraTS cases become NIfTI label maps identical to evaluation's; overwriting is
refused unless asked for; every bad input is a one-line error."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from raunet_fast import cli
from raunet_fast.data import make_brats2021, make_isic2018
from raunet_fast.models import build_model

SIZE = 32  # network input size stored with the 2-D checkpoint
CONFIG = "predict_config.json"  # the resolved config every predict run writes next to its masks


def _image_tensor(path: Path, size: int = SIZE) -> tuple[torch.Tensor, tuple[int, int]]:
    """The documented 2-D preprocessing, written out here: RGB, / 255, antialiased bilinear
    resize to the training size."""
    arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                      antialias=True).clamp_(0, 1)
    return x[0], arr.shape[:2]


def _tiny_model(name: str, in_ch: int, out_ch: int, images: torch.Tensor, path: Path,
                prep: dict) -> torch.nn.Module:
    """A small untrained model with non-trivial BatchNorm statistics whose head bias is set so
    that about half of the pixels of ``images`` are foreground (masks with real boundaries)."""
    torch.manual_seed(0)
    model = build_model(name, in_channels=in_ch, out_channels=out_ch, base_channels=4, depth=3)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(images)
        model.eval()
        logits = model(images).transpose(0, 1).reshape(out_ch, -1)
        model.head.bias -= logits.median(1).values
    model.save_pretrained(path)
    (path / "preprocessing.json").write_text(json.dumps(prep))
    return model


@pytest.fixture(scope="module")
def isic_images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("isic")
    make_isic2018(root, 6, (40, 48), seed=3)  # 4 training images of varying size
    return root / "ISIC2018_Task1-2_Training_Input"


@pytest.fixture(scope="module")
def ck2d(isic_images, tmp_path_factory):
    images = torch.stack([_image_tensor(p)[0] for p in sorted(isic_images.glob("*.jpg"))])
    path = tmp_path_factory.mktemp("ck") / "best"
    model = _tiny_model("raunet", 3, 1, images, path,
                        {"dataset": "isic2018", "image_size": [SIZE, SIZE], "threshold": 0.5,
                         "output": "sigmoid per channel"})
    return path, model


@pytest.fixture(scope="module")
def brats_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats")
    make_brats2021(root, 3, (28, 30, 10), seed=4, spacing=(1.0, 1.0, 2.0))
    return root


def run(*argv: str) -> int:
    return cli.main(["predict", *argv, "--no-progress", "--device", "cpu"])


def one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("raunet-fast predict: error:"), err
    for w in words:
        assert w in err, (w, err)
    return err


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_isic_images_masks_match_the_reference_model(isic_images, ck2d, tmp_path, capsys):
    ck, model = ck2d
    out = tmp_path / "out"
    assert run("--checkpoint", str(ck), "--input", str(isic_images), "--out", str(out),
               "--batch-size", "3", "--probabilities") == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "wrote 8 files for 4 images" in line and "images/s" in line, line
    images = sorted(isic_images.glob("*.jpg"))  # LICENSE.txt / ATTRIBUTION.txt are skipped
    assert len(images) == 4
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{p.stem}{s}.png" for p in images for s in ("_mask", "_prob")] + [CONFIG])
    sizes = set()
    for p in images:
        x, (h, w) = _image_tensor(p)
        with torch.no_grad():
            logits = model(x[None])
        prob = torch.sigmoid(F.interpolate(logits, size=(h, w), mode="bilinear",
                                           align_corners=False))[0, 0]
        mask = read_png(out / f"{p.stem}_mask.png")
        assert mask.shape == (h, w) and mask.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == {0, 255}  # a real boundary in every image
        np.testing.assert_array_equal(mask == 255, (prob > 0.5).numpy(), err_msg=p.name)
        p8 = read_png(out / f"{p.stem}_prob.png").astype(int)
        assert p8.shape == (h, w) and np.abs(p8 - prob.numpy() * 255).max() <= 0.51
        sizes.add((h, w))
    assert len(sizes) > 1  # the images do have different sizes

    # the fused model (CPU fp32) gives the same masks, but for a few pixels on the boundary
    fused = tmp_path / "fused"
    assert run("--checkpoint", str(ck), "--input", str(isic_images), "--out", str(fused),
               "--fused") == 0
    assert "fused fp32" in capsys.readouterr().out
    assert sorted(p.name for p in fused.iterdir()) == sorted(
        [f"{p.stem}_mask.png" for p in images] + [CONFIG])
    assert json.loads((fused / CONFIG).read_text())["fused"] is True
    for p in images:
        a, b = read_png(out / f"{p.stem}_mask.png"), read_png(fused / f"{p.stem}_mask.png")
        assert a.shape == b.shape and (a != b).sum() <= 5, (p.name, int((a != b).sum()))


def test_single_image_file_softmax_and_grayscale(ck2d, tmp_path, capsys):
    ck, model = ck2d
    rng = np.random.default_rng(0)
    png = tmp_path / "odd size.png"
    Image.fromarray(rng.integers(0, 256, (27, 61, 3), dtype=np.uint8)).save(png)
    assert run("--checkpoint", str(ck), "--input", str(png), "--out", str(tmp_path / "o")) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == sorted([CONFIG, "odd size_mask.png"])
    assert read_png(tmp_path / "o" / "odd size_mask.png").shape == (27, 61)

    # a multi-class (softmax) checkpoint writes the label map; a grayscale one reads L images
    x, hw = _image_tensor(png)
    soft = tmp_path / "soft"
    smodel = _tiny_model("unet", 3, 3, x[None], soft,
                         {"dataset": "folder", "image_size": [SIZE, SIZE], "output": "softmax"})
    assert run("--checkpoint", str(soft), "--input", str(png), "--out", str(tmp_path / "s")) == 0
    with torch.no_grad():
        logits = F.interpolate(smodel(x[None]), size=hw, mode="bilinear", align_corners=False)
    labels = read_png(tmp_path / "s" / "odd size_mask.png")
    np.testing.assert_array_equal(labels, logits[0].argmax(0).numpy())
    assert set(np.unique(labels).tolist()) <= {0, 1, 2} and len(np.unique(labels)) > 1

    # --threshold means nothing for a label map: a one-line error, not silence
    assert run("--checkpoint", str(soft), "--input", str(png), "--out", str(tmp_path / "t"),
               "--threshold", "0.3") == 2
    assert "softmax" in capsys.readouterr().err
    # a preprocessing.json without the size: the message says what is missing
    (soft / "preprocessing.json").write_text(json.dumps({"dataset": "folder"}))
    assert run("--checkpoint", str(soft), "--input", str(png), "--out", str(tmp_path / "t")) == 2
    assert "image_size in its preprocessing.json" in capsys.readouterr().err

    gray = tmp_path / "gray.png"
    Image.fromarray(rng.integers(0, 256, (20, 22), dtype=np.uint8)).save(gray)
    g = tmp_path / "g"
    _tiny_model("unet", 1, 1, torch.rand(2, 1, SIZE, SIZE), g,
                {"dataset": "folder", "image_size": [SIZE, SIZE]})
    assert run("--checkpoint", str(g), "--input", str(gray), "--out", str(tmp_path / "go")) == 0
    assert read_png(tmp_path / "go" / "gray_mask.png").shape == (20, 22)
    capsys.readouterr()
    assert run("--checkpoint", str(g), "--input", str(png), "--out", str(tmp_path / "go2")) == 2
    one_line_error(capsys, "odd size.png", "grayscale")


def test_overwrite(isic_images, ck2d, tmp_path, capsys):
    ck, _ = ck2d
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["--checkpoint", str(ck), "--input", str(isic_images), "--out", str(out)]
    assert run(*args) == 0
    masks = sorted(out.glob("*_mask.png"))
    assert len(masks) == 4
    for m in masks:
        m.write_bytes(b"old")
    capsys.readouterr()
    assert run(*args) == 2
    one_line_error(capsys, "already holds 4", "--overwrite")
    assert all(m.read_bytes() == b"old" for m in masks)  # nothing touched
    # one existing output is enough to refuse the whole run
    for m in masks[1:]:
        m.unlink()
    assert run(*args, "--probabilities") == 2
    one_line_error(capsys, "already holds 1 of the 8")
    assert not list(out.glob("*_prob.png"))
    assert run(*args, "--overwrite", "--probabilities") == 0
    assert all(read_png(m).ndim == 2 for m in masks)
    assert (out / "notes.txt").read_text() == "mine"
    # masks written next to the images are not taken for images on the next run
    both = tmp_path / "both"
    shutil.copytree(isic_images, both)
    assert run("--checkpoint", str(ck), "--input", str(both), "--out", str(both)) == 0
    assert run("--checkpoint", str(ck), "--input", str(both), "--out", str(both),
               "--overwrite") == 0
    assert "for 4 images" in capsys.readouterr().out
    assert len(list(both.glob("*_mask*.png"))) == 4


def test_window_predicts_at_native_resolution(isic_images, ck2d, tmp_path, capsys):
    """--window: no resize; the masks equal the model's own sliding-window output at each
    image's resolution (the documented preprocessing written out here: RGB / 255)."""
    from raunet_fast.sliding_window import sliding_window_inference

    ck, model = ck2d
    out = tmp_path / "win"
    assert run("--checkpoint", str(ck), "--input", str(isic_images), "--out", str(out),
               "--window", "24", "--overlap", "0.5", "--batch-size", "3") == 0
    assert "wrote 4 files for 4 images" in capsys.readouterr().out
    for p in sorted(isic_images.glob("*.jpg")):
        arr = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0
        x = torch.from_numpy(arr).permute(2, 0, 1)[None]
        logits = sliding_window_inference(model, x, 24, overlap=0.5)
        mask = read_png(out / f"{p.stem}_mask.png")
        assert mask.shape == arr.shape[:2]
        np.testing.assert_array_equal(mask == 255, (torch.sigmoid(logits[0, 0]) > 0.5).numpy(),
                                      err_msg=p.name)
    # with flip TTA on top: the windows see the flip-averaged model
    from raunet_fast.tta import FlipTTA

    tta = tmp_path / "win-tta"
    assert run("--checkpoint", str(ck), "--input", str(isic_images), "--out", str(tta),
               "--window", "24", "--tta") == 0
    assert "flip TTA" in capsys.readouterr().out
    p = sorted(isic_images.glob("*.jpg"))[0]
    arr = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)[None]
    with torch.no_grad():
        logits = sliding_window_inference(FlipTTA(model), x, 24)
    np.testing.assert_array_equal(read_png(tta / f"{p.stem}_mask.png") == 255,
                                  (torch.sigmoid(logits[0, 0]) > 0.5).numpy())
    capsys.readouterr()
    assert run("--checkpoint", str(ck), "--input", str(isic_images), "--out", str(tmp_path / "o2"),
               "--window", "24", "--image-size", "32") == 2
    one_line_error(capsys, "--window", "--image-size")
    assert run("--checkpoint", str(ck), "--input", str(isic_images), "--out", str(tmp_path / "o3"),
               "--window", "24", "--overlap", "1") == 2
    one_line_error(capsys, "--overlap")
    assert run("--checkpoint", str(ck), "--input", str(isic_images), "--out", str(tmp_path / "o4"),
               "--overlap", "0.5") == 2
    one_line_error(capsys, "--overlap", "--window")


def test_ensemble_of_checkpoints(isic_images, ck2d, tmp_path, capsys):
    """--ensemble: the masks threshold the mean of the models' logits (computed here);
    a member trained otherwise (other image size) is refused in one line."""
    ck, model = ck2d
    images = torch.stack([_image_tensor(p)[0] for p in sorted(isic_images.glob("*.jpg"))])
    prep = json.loads((ck / "preprocessing.json").read_text())
    torch.manual_seed(1)
    other = build_model("raunet", in_channels=3, out_channels=1, base_channels=4, depth=3)
    other.train()
    with torch.no_grad():
        other(images)
    other.eval()
    ck2 = tmp_path / "ck2"
    other.save_pretrained(ck2)
    (ck2 / "preprocessing.json").write_text(json.dumps(prep))
    out = tmp_path / "ens"
    assert run("--checkpoint", str(ck), "--ensemble", str(ck2), "--input", str(isic_images),
               "--out", str(out)) == 0
    assert "ensemble of 2" in capsys.readouterr().out
    for p in sorted(isic_images.glob("*.jpg")):
        x, (h, w) = _image_tensor(p)
        with torch.no_grad():
            logits = (model(x[None]) + other(x[None])) / 2
        prob = torch.sigmoid(F.interpolate(logits, size=(h, w), mode="bilinear",
                                           align_corners=False))[0, 0]
        np.testing.assert_array_equal(read_png(out / f"{p.stem}_mask.png") == 255,
                                      (prob > 0.5).numpy(), err_msg=p.name)
    for key, value in (("image_size", [48, 48]), ("patch", [16, 16])):
        (ck2 / "preprocessing.json").write_text(json.dumps({**prep, key: value}))
        assert run("--checkpoint", str(ck), "--ensemble", str(ck2), "--input",
                   str(isic_images), "--out", str(tmp_path / "o")) == 2
        one_line_error(capsys, "--ensemble", repr(key))
    # scoring a split: the members must share it (one member's training cases would be
    # scored otherwise); predicting does not care
    from raunet_fast.engine import load_ensemble

    (ck2 / "preprocessing.json").write_text(json.dumps({**prep, "split_seed": 7}))
    assert len(load_ensemble(ck, [ck2], prep, model, torch.device("cpu"))) == 1
    with pytest.raises(ValueError, match="split_seed"):
        load_ensemble(ck, [ck2], prep, model, torch.device("cpu"), same_split=True)


def test_errors_are_one_line(isic_images, ck2d, brats_root, tmp_path, capsys):
    ck, _ = ck2d
    out = tmp_path / "out"

    def fails(*words, checkpoint=ck, input=isic_images, out=out, extra=()):
        capsys.readouterr()
        assert run("--checkpoint", str(checkpoint), "--input", str(input), "--out", str(out),
                   *extra) == 2
        return one_line_error(capsys, *words)

    fails("nope", "does not exist", checkpoint=tmp_path / "nope")
    (tmp_path / "empty-ck").mkdir()
    fails("config.json", checkpoint=tmp_path / "empty-ck")
    fails("--input", "missing", "does not exist", input=tmp_path / "missing")
    empty = tmp_path / "no-images"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    fails("holds no images", input=empty)
    fails("sub-folders", "ISIC2018_Task1-2_Training_Input", input=isic_images.parent)
    # a file that is not an image, and a JPEG cut short (fails only when decoded)
    bad = tmp_path / "bad"
    shutil.copytree(isic_images, bad)
    (bad / "ISIC_9999999.png").write_bytes(b"not a png at all")
    fails("cannot read image", "ISIC_9999999.png", input=bad)
    (bad / "ISIC_9999999.png").unlink()
    last = sorted(bad.glob("*.jpg"))[-1]
    data = last.read_bytes()
    last.write_bytes(data[:len(data) // 2])  # the header is intact: fails when decoded
    fails("cannot read image", last.name, "truncated", input=bad, out=tmp_path / "o-trunc")
    # channels the checkpoint does not take
    gray = tmp_path / "gray"
    gray.mkdir()
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(gray / "a.png")
    fails("a.png", "1 channel", "RGB", input=gray)
    # --out is a file (nothing written, the file kept)
    file = tmp_path / "a-file"
    file.write_text("keep")
    fails("a-file", "is a file", out=file)
    assert file.read_text() == "keep"
    # BraTS data for a 2-D checkpoint; a model that cannot be fused
    fails("BraTS", "2-D", input=brats_root)
    inst = tmp_path / "inst"
    build_model("unet", base_channels=4, depth=3, norm="instance").save_pretrained(inst)
    (inst / "preprocessing.json").write_text(json.dumps({"dataset": "isic2018",
                                                         "image_size": [SIZE, SIZE]}))
    fails("--fused", "norm", checkpoint=inst, extra=["--fused"])
    assert not out.exists()  # no error above created the output folder


def test_brats_cases(brats_root, tmp_path, capsys):
    from raunet_fast.data.brats import load_case

    cases = sorted(p for p in brats_root.iterdir() if p.is_dir())
    vol = torch.from_numpy(np.concatenate([load_case(c, with_seg=False)["image"] for c in cases])
                           .astype(np.float32))
    ck = tmp_path / "ck"
    _tiny_model("unet", 4, 3, vol[::3, :, 2:26, 3:27], ck,
                {"dataset": "brats2021", "crop": 24, "image_size": [16, 16], "threshold": 0.5})
    # evaluation's saved prediction of one case: predict must write the same label map
    ev = tmp_path / "ev"
    assert cli.main(["evaluate", "--checkpoint", str(ck), "--dataset", "brats2021",
                     "--data-root", str(brats_root), "--split", "val", "--out", str(ev),
                     "--save-predictions", "--no-progress", "--device", "cpu"]) == 0
    (saved,) = (ev / "predictions").iterdir()
    case = saved.name[:-len(".nii.gz")]

    out = tmp_path / "out"
    assert run("--checkpoint", str(ck), "--input", str(brats_root), "--out", str(out),
               "--batch-size", "4") == 0
    assert "wrote 3 segmentations for 3 cases" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{c.name}_pred_seg.nii.gz" for c in cases] + [CONFIG])
    for c in cases:
        img = nib.load(str(out / f"{c.name}_pred_seg.nii.gz"))
        flair = nib.load(str(c / f"{c.name}_flair.nii.gz"))
        seg = np.asanyarray(img.dataobj)
        assert seg.shape == (28, 30, 10) and seg.dtype == np.uint8
        np.testing.assert_array_equal(img.affine, flair.affine)
        assert img.header.get_zooms() == flair.header.get_zooms()
        assert set(np.unique(seg).tolist()) <= {0, 1, 2, 4}
    seg = np.asanyarray(nib.load(str(out / f"{case}_pred_seg.nii.gz")).dataobj)
    np.testing.assert_array_equal(seg, np.asanyarray(nib.load(str(saved)).dataobj))
    assert len(np.unique(seg)) > 1  # the comparison is not between two empty volumes

    # one case folder as --input, through the fused model
    one = tmp_path / "one"
    assert run("--checkpoint", str(ck), "--input", str(brats_root / case), "--out", str(one),
               "--fused") == 0
    fused = np.asanyarray(nib.load(str(one / f"{case}_pred_seg.nii.gz")).dataobj)
    assert (fused != seg).sum() <= 5
    # a case with a missing modality, and 2-D images for a BraTS checkpoint
    broken = tmp_path / "broken" / case
    shutil.copytree(brats_root / case, broken)
    (broken / f"{case}_t1ce.nii.gz").unlink()
    capsys.readouterr()
    assert run("--checkpoint", str(ck), "--input", str(broken), "--out", str(tmp_path / "o2")) == 2
    one_line_error(capsys, f"{case}_t1ce.nii.gz", "does not exist")
    assert run("--checkpoint", str(ck), "--input", str(brats_root), "--out", str(tmp_path / "o4"),
               "--probabilities") == 2
    one_line_error(capsys, "--probabilities")
    assert run("--checkpoint", str(ck), "--input", str(brats_root), "--out", str(tmp_path / "o5"),
               "--window", "16") == 2
    one_line_error(capsys, "--window", "2-D")
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(png)
    assert run("--checkpoint", str(ck), "--input", str(png), "--out", str(tmp_path / "o3")) == 2
    one_line_error(capsys, "BraTS")


def _folder_with_truncated_image(isic_images: Path, dest: Path) -> tuple[Path, Path]:
    """A copy of the images plus, second in order, a JPEG cut short after its header (it
    passes the header check and fails when decoded)."""
    shutil.copytree(isic_images, dest)
    first = sorted(dest.glob("*.jpg"))[0]
    broken = dest / f"{first.stem}b.jpg"
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(noise).save(broken, quality=95)
    data = broken.read_bytes()
    broken.write_bytes(data[:len(data) // 2])
    assert sorted(dest.glob("*.jpg"))[1] == broken
    return dest, broken


def test_broken_image_mid_run_keeps_what_was_written_and_resumes(isic_images, ck2d, tmp_path,
                                                                 capsys):
    ck, _ = ck2d
    folder, broken = _folder_with_truncated_image(isic_images, tmp_path / "in")
    out = tmp_path / "out"
    argv = ["--checkpoint", str(ck), "--input", str(folder), "--out", str(out),
            "--num-workers", "0", "--batch-size", "1"]
    assert run(*argv) == 2
    err = one_line_error(capsys, broken.name, "truncated", "masks of 1 images written",
                         "--skip-existing", "--skip-errors")
    first = sorted(folder.glob("*.jpg"))[0]
    assert sorted(p.name for p in out.glob("*.png")) == [f"{first.stem}_mask.png"], err
    kept = read_png(out / f"{first.stem}_mask.png")
    assert run(*argv) == 2  # a plain rerun refuses to replace the mask already there
    one_line_error(capsys, "--overwrite")
    # --skip-errors: every other image predicted, the broken one listed, exit code 2
    assert run(*argv, "--skip-existing", "--skip-errors") == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("raunet-fast predict: skipped:") and broken.name in lines[0]
    assert lines[1] == "raunet-fast predict: error: 1 input could not be read (listed above)"
    assert "1 image already done, skipped" in captured.out
    others = [p for p in sorted(folder.glob("*.jpg")) if p != broken]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{p.stem}_mask.png" for p in others)
    np.testing.assert_array_equal(read_png(out / f"{first.stem}_mask.png"), kept)
    # the outputs equal those of one clean run over the good images
    clean = tmp_path / "clean-in"
    clean.mkdir()
    for p in others:
        shutil.copy(p, clean / p.name)
    assert run("--checkpoint", str(ck), "--input", str(clean), "--out", str(tmp_path / "c")) == 0
    for p in others:
        np.testing.assert_array_equal(read_png(out / f"{p.stem}_mask.png"),
                                      read_png(tmp_path / "c" / f"{p.stem}_mask.png"))


def test_skip_errors_lists_bad_headers_before_predicting(isic_images, ck2d, tmp_path, capsys):
    ck, _ = ck2d
    folder = tmp_path / "in"
    shutil.copytree(isic_images, folder)
    (folder / "zero.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(folder / "gray.png")
    out = tmp_path / "out"
    assert run("--checkpoint", str(ck), "--input", str(folder), "--out", str(out),
               "--skip-errors") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4, err
    for name, line in zip(("gray.png", "text.jpg", "zero.png"), err[:3]):
        assert line.startswith("raunet-fast predict: skipped: ") and name in line, line
    assert "1 channel" in err[0]
    assert len(list(out.glob("*_mask.png"))) == len(list(isic_images.glob("*.jpg")))
    # --convert-channels: the grayscale image is predicted too (as 3 equal channels)
    assert run("--checkpoint", str(ck), "--input", str(folder), "--out", str(out),
               "--skip-errors", "--skip-existing", "--convert-channels") == 2
    assert (out / "gray_mask.png").is_file() and "2 inputs" in capsys.readouterr().err


def test_skip_existing_and_overwrite_exclude_each_other(isic_images, ck2d, tmp_path, capsys):
    ck, _ = ck2d
    assert run("--checkpoint", str(ck), "--input", str(isic_images), "--out",
               str(tmp_path / "o"), "--skip-existing", "--overwrite") == 2
    one_line_error(capsys, "--skip-existing", "--overwrite")


def test_window_is_rounded_up_to_the_network_multiple(isic_images, ck2d, tmp_path):
    from raunet_fast.config import PredictConfig
    from raunet_fast.engine import PredictionRun

    ck, model = ck2d
    assert model.size_multiple == 4  # depth 3
    run_ = PredictionRun(PredictConfig(checkpoint=str(ck), input=str(isic_images),
                                       out=str(tmp_path / "o"), window=(7, 10), device="cpu"))
    with pytest.warns(UserWarning, match="--window 7x10 is not a multiple of 4.*using 8x12"):
        run_.setup()
    assert run_.window == (8, 12)

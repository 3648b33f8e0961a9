"""``raunet-fast stream`` on generated videos and folders: masks equal those ``predict``
writes for the same frames saved as PNG (an independent route: PyAV decodes the video
here, PIL reads the PNGs there); the overlay video has one frame per input frame (counted
by decoding it); bad inputs and a missing PyAV are one-line errors with exit code 2."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from raunet_fast import cli
from raunet_fast.models import build_model

H, W, FRAMES = 45, 67, 6  # odd frame sizes: windows overlap unevenly, the video pads to even
SIZE = 32


def write_video(path: Path, frames: list[np.ndarray], codec: str = "mpeg4") -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=25)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode(None))


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def smooth_frames(n: int, h: int, w: int, seed: int) -> list[np.ndarray]:
    """Frames with large bright and dark regions (masks with real boundaries) that move."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for i in range(n):
        cy, cx = h * (0.3 + 0.08 * i), w * (0.6 - 0.05 * i)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.25 * h) ** 2))
        rgb = 40 + 180 * blob[..., None] * np.array([1.0, 0.7, 0.5]) + rng.normal(0, 6, (h, w, 3))
        out.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny model with BatchNorm statistics of the frames, its head bias set so that about
    half of the pixels are foreground."""
    frames = smooth_frames(4, SIZE, SIZE, seed=1)
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    torch.manual_seed(0)
    model = build_model("raunet", in_channels=3, out_channels=1, base_channels=4, depth=3)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
        model.eval()
        model.head.bias -= model(x).median()
    path = tmp_path_factory.mktemp("ck") / "best"
    model.save_pretrained(path)
    (path / "preprocessing.json").write_text(json.dumps(
        {"dataset": "folder", "image_size": [SIZE, SIZE], "threshold": 0.5}))
    return path


@pytest.fixture(scope="module")
def gray_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    model = build_model("raunet", in_channels=1, out_channels=1, base_channels=4, depth=3)
    x = torch.from_numpy(np.stack(smooth_frames(4, SIZE, SIZE, seed=4))).float().mean(3) / 255
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x[:, None])
        model.eval()
        model.head.bias -= model(x[:, None]).median()
    path = tmp_path_factory.mktemp("ck") / "gray"
    model.save_pretrained(path)
    (path / "preprocessing.json").write_text(json.dumps(
        {"dataset": "folder", "patch": [SIZE, SIZE], "threshold": 0.5}))
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    write_video(path, smooth_frames(FRAMES, H, W, seed=2))
    return path


@pytest.fixture(scope="module")
def frames_as_png(video, tmp_path_factory) -> Path:
    """The video's frames decoded here and saved losslessly, named as stream names them."""
    folder = tmp_path_factory.mktemp("frames")
    for i, rgb in enumerate(decode(video)):
        Image.fromarray(rgb).save(folder / f"frame_{i:06d}.png")
    return folder


def stream(*argv: str) -> int:
    return cli.main(["stream", *argv, "--no-progress", "--device", "cpu"])


def predict(*argv: str) -> int:
    return cli.main(["predict", *argv, "--no-progress", "--device", "cpu"])


def masks_of(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for p in sorted(folder.glob("*_mask.png")):
        with Image.open(p) as im:
            out[p.name] = np.asarray(im)
    return out


def one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("raunet-fast stream: error:"), err
    for w in words:
        assert w in err, (w, err)
    return err


def test_video_masks_equal_predict_on_its_frames(checkpoint, video, frames_as_png, tmp_path,
                                                 capsys):
    out = tmp_path / "out"
    assert stream("--checkpoint", str(checkpoint), "--input", str(video), "--out", str(out),
                  "--masks", "--no-fused") == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"stream: {FRAMES} frames") and "0 dropped" in line, line
    assert predict("--checkpoint", str(checkpoint), "--input", str(frames_as_png),
                   "--out", str(tmp_path / "pred"), "--window", str(SIZE)) == 0
    got, want = masks_of(out / "masks"), masks_of(tmp_path / "pred")
    assert sorted(got) == sorted(want) and len(got) == FRAMES
    for name in want:
        assert got[name].shape == (H, W)
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    fg = np.mean([m.mean() / 255 for m in want.values()])
    assert 0.05 < fg < 0.95, fg  # the masks have boundaries: the comparison can fail
    overlay = decode(out / "clip_overlay.mp4")
    assert len(overlay) == FRAMES and overlay[0].shape == (H + 1, W + 1, 3)
    stats = json.loads((out / "stream_stats.json").read_text())
    assert stats["frames"] == FRAMES and stats["dropped"] == 0
    lat = stats["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"]


def test_resized_frames_and_the_fused_model(checkpoint, video, frames_as_png, tmp_path):
    """--image-size resizes as predict does (exact with the reference model); the fused fp32
    model agrees with it up to rounding (a few pixels at the threshold at most)."""
    ref, fused, pred = tmp_path / "ref", tmp_path / "fused", tmp_path / "pred"
    common = ("--checkpoint", str(checkpoint), "--input", str(video), "--masks", "--no-video",
              "--image-size", str(SIZE))
    assert stream(*common, "--out", str(ref), "--no-fused") == 0
    assert stream(*common, "--out", str(fused), "--dtype", "fp32") == 0
    assert predict("--checkpoint", str(checkpoint), "--input", str(frames_as_png),
                   "--out", str(pred), "--batch-size", "1") == 0
    want = masks_of(pred)
    assert len(want) == FRAMES and not (ref / "clip_overlay.mp4").exists()
    for name, m in masks_of(ref / "masks").items():
        np.testing.assert_array_equal(m, want[name], err_msg=name)
    for name, m in masks_of(fused / "masks").items():
        assert (m != want[name]).mean() < 0.01, name


def test_a_grayscale_model_gets_the_frames_luma(gray_checkpoint, video, frames_as_png,
                                                tmp_path):
    """predict --convert-channels reads the RGB PNG frames as luma: the same masks."""
    out, pred = tmp_path / "out", tmp_path / "pred"
    assert stream("--checkpoint", str(gray_checkpoint), "--input", str(video), "--out", str(out),
                  "--masks", "--no-video", "--no-fused") == 0
    assert predict("--checkpoint", str(gray_checkpoint), "--input", str(frames_as_png),
                   "--out", str(pred), "--convert-channels") == 0
    want = masks_of(pred)
    assert len(want) == FRAMES and 0.05 < np.mean([m.mean() / 255 for m in want.values()]) < 0.95
    for name, m in masks_of(out / "masks").items():
        np.testing.assert_array_equal(m, want[name], err_msg=name)


def test_folder_of_frames_in_natural_order(checkpoint, tmp_path):
    """Frames f1, f2, f10 play in that order (not f1, f10, f2); with --alpha 0 the overlay
    is the frame itself, so the decoded video's brightness shows the order."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for name, level in (("f1", 30), ("f10", 230), ("f2", 130)):
        Image.fromarray(np.full((H, W, 3), level, np.uint8)).save(folder / f"{name}.png")
    out = tmp_path / "out"
    assert stream("--checkpoint", str(checkpoint), "--input", str(folder), "--out", str(out),
                  "--masks", "--alpha", "0", "--fps", "10") == 0
    means = [f.mean() for f in decode(out / "frames_overlay.mp4")]
    assert len(means) == 3 and means[0] < 80 < means[1] < 180 < means[2], means
    assert sorted(p.name for p in (out / "masks").iterdir()) == \
        ["f10_mask.png", "f1_mask.png", "f2_mask.png"]


def test_realtime_counts_every_frame_once(checkpoint, video, tmp_path):
    out = tmp_path / "out"
    assert stream("--checkpoint", str(checkpoint), "--input", str(video), "--out", str(out),
                  "--realtime", "--masks") == 0
    stats = json.loads((out / "stream_stats.json").read_text())
    assert stats["frames"] + stats["dropped"] == FRAMES and stats["frames"] >= 1
    assert len(masks_of(out / "masks")) == stats["frames"]
    assert len(decode(out / "clip_overlay.mp4")) == stats["frames"]


@pytest.mark.parametrize("kind", ["zero-byte", "truncated", "not-a-video", "missing"])
def test_bad_video_files_are_one_line_errors(kind, checkpoint, video, tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    if kind == "zero-byte":
        bad.write_bytes(b"")
    elif kind == "truncated":  # an mp4 cut in half: its index (at the end) is gone
        whole = tmp_path / "whole.mp4"
        write_video(whole, smooth_frames(FRAMES, 46, 68, seed=3), codec="libx264")
        bad.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    elif kind == "not-a-video":
        bad.write_text("frame,label\n" * 50)
    out = tmp_path / "out"
    assert stream("--checkpoint", str(checkpoint), "--input", str(bad), "--out", str(out)) == 2
    one_line_error(capsys, str(bad))
    assert not out.exists() or not any(out.glob("*overlay*")), list(out.iterdir())


def test_a_missing_camera_is_a_one_line_error(checkpoint, tmp_path, capsys):
    device = tmp_path / "video97"  # no such capture device
    assert stream("--checkpoint", str(checkpoint), "--input", f"camera:{device}",
                  "--out", str(tmp_path / "out")) == 2
    one_line_error(capsys, "cannot read camera", str(device))


def test_missing_pyav_names_the_extra(checkpoint, video, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    assert stream("--checkpoint", str(checkpoint), "--input", str(video),
                  "--out", str(tmp_path / "out")) == 2
    one_line_error(capsys, 'pip install "raunet-fast[video]"')


def test_a_failing_frame_leaves_no_half_written_video(checkpoint, tmp_path, capsys):
    """Frames of two sizes cannot share a video: the error is one line, and neither the
    video nor its temporary file is left behind."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, (h, w) in enumerate([(H, W), (H, W), (H + 4, W)]):
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "out"
    assert stream("--checkpoint", str(checkpoint), "--input", str(folder), "--out", str(out)) == 2
    one_line_error(capsys, "share a size")
    assert [p.name for p in out.iterdir() if "overlay" in p.name] == []


def test_ctrl_c_finishes_the_frames_in_flight_and_closes_the_video(checkpoint, video, tmp_path,
                                                                   monkeypatch):
    """Ctrl-C (KeyboardInterrupt in the main thread) while frames are written: the run
    returns its numbers, and the video holds exactly the frames written."""
    import _thread

    from raunet_fast.stream import StreamRun, stream as stream_api

    write = StreamRun._write

    def interrupting(self, frame):
        if frame.index == 1:
            _thread.interrupt_main()
        return write(self, frame)

    monkeypatch.setattr(StreamRun, "_write", interrupting)
    out = tmp_path / "out"
    s = stream_api(checkpoint, video, out, masks=True, queue_size=1, device="cpu",
                   progress=False)
    assert s["interrupted"] and 2 <= s["frames"] <= FRAMES
    assert len(decode(out / "clip_overlay.mp4")) == s["frames"]
    assert len(masks_of(out / "masks")) == s["frames"]
    assert not list(out.glob(".*partial*"))

"""One image reader for every command: 16-bit scaling, channel rules, the pixel limit."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from raunet_fast.data import ImageMaskFolder
from raunet_fast.data.common import read_mask
from raunet_fast.io.images import (DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, check_image,
                                   max_image_pixels, read_image)


def _gray16(path, h=13, w=9, seed=0):
    values = np.random.default_rng(seed).integers(0, 65536, (h, w)).astype(np.uint16)
    values[0, 0], values[0, 1] = 0, 65535  # both ends of the range
    Image.fromarray(values).save(path)
    return values


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = _gray16(tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").mode.startswith("I")
    gray, full = read_image(tmp_path / "g.png", "L")
    expected = np.round(values.astype(np.float64) * 255 / 65535)
    assert full == (13, 9) and gray.dtype == np.uint8
    np.testing.assert_array_equal(gray, expected.astype(np.uint8))
    assert 0 < (gray == 255).mean() < 0.05  # not the all-white of PIL's convert("L")
    rgb, _ = read_image(tmp_path / "g.png", "RGB")
    np.testing.assert_array_equal(rgb, np.repeat(gray[..., None], 3, axis=2))


def test_16_bit_mask_is_binary(tmp_path):
    mask = np.zeros((10, 12), np.uint16)
    mask[2:5, 3:9] = 65535
    Image.fromarray(mask).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask > 0)


def test_channel_rule_is_one_message_for_check_and_read(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    _gray16(tmp_path / "g.png")
    for fn in (lambda p, ch: check_image(p, ch), lambda p, ch: read_image(p, "RGB" if ch == 3 else "L", convert=False)):
        with pytest.raises(ValueError, match="rgb.png has colour channels.*--convert-channels"):
            fn(tmp_path / "rgb.png", 1)
        with pytest.raises(ValueError, match="g.png has 1 channel.*--convert-channels"):
            fn(tmp_path / "g.png", 3)
    assert check_image(tmp_path / "rgb.png", 1, convert=True) == "RGB"
    assert read_image(tmp_path / "rgb.png", "L", convert=True)[0].shape == (8, 8)


def test_float_and_out_of_range_images_are_refused(tmp_path):
    Image.fromarray(np.ones((6, 7), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ValueError, match="f.tif holds floating-point pixels"):
        check_image(tmp_path / "f.tif", 1)
    Image.fromarray(np.full((6, 7), -5, np.int32)).save(tmp_path / "neg.tif")
    assert Image.open(tmp_path / "neg.tif").mode == "I"
    with pytest.raises(ValueError, match="cannot read image .*neg.tif: integer pixels in -5..-5"):
        read_image(tmp_path / "neg.tif", "L")


def _bomb(path, side=20000):
    """A tiny PNG whose header claims ``side x side`` pixels (1-bit, highly compressible)."""
    Image.new("1", (side, side)).save(path, optimize=True)


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    _bomb(path)
    assert path.stat().st_size < 1_000_000
    return path


def test_decompression_bomb_is_refused_with_the_limit(bomb, monkeypatch):
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    assert max_image_pixels() == DEFAULT_MAX_PIXELS
    with pytest.raises(ValueError, match=r"bomb.png has 400,000,000 pixels, over the limit of "
                                         r"178,956,970.*--max-image-pixels 400000000"):
        check_image(bomb, 3)
    with pytest.raises(ValueError, match="over the limit"):
        read_image(bomb, "L")


def test_a_lower_limit_is_checked_by_the_reader_itself(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(tmp_path / "small.png")
    monkeypatch.setenv(MAX_PIXELS_ENV, "1999")
    with pytest.raises(ValueError, match="small.png has 2,000 pixels, over the limit of 1,999"):
        read_image(tmp_path / "small.png", "L")
    monkeypatch.setenv(MAX_PIXELS_ENV, "2000")
    assert read_image(tmp_path / "small.png", "L")[0].shape == (40, 50)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match=f"{MAX_PIXELS_ENV} must be a positive integer"):
        read_image(tmp_path / "small.png", "L")


def test_raised_limit_reads_a_large_image(tmp_path, monkeypatch):
    path = tmp_path / "wide.png"
    Image.new("1", (19000, 10000)).save(path)  # 190 MP: over PIL's own error threshold
    with pytest.raises(ValueError, match="over the limit"):
        check_image(path, 1)
    monkeypatch.setenv(MAX_PIXELS_ENV, str(19000 * 10000))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    assert check_image(path, 1) == "1"


def test_folder_detects_grayscale_and_keeps_every_split_in_it(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(5):
        _gray16(tmp_path / "images" / f"c{i}.png", seed=i)
        Image.fromarray(np.zeros((13, 9), np.uint8)).save(tmp_path / "masks" / f"c{i}.png")
    ds = ImageMaskFolder(tmp_path, "all")
    assert ds.channels == 1
    x = ds[2]["image"]
    assert x.shape == (1, 13, 9) and 0.2 < float(x.mean()) < 0.8  # scaled, not saturated
    Image.fromarray(np.zeros((13, 9, 3), np.uint8)).save(tmp_path / "images" / "c3.png")
    with pytest.raises(ValueError, match="c3.png has colour channels"):
        ImageMaskFolder(tmp_path, "all")[3]
    with pytest.raises(ValueError, match="c0.png has 1 channel"):
        ImageMaskFolder(tmp_path, "all", channels=3)[0]
    assert ImageMaskFolder(tmp_path, "all", channels=3, convert_channels=True)[0]["image"].shape[0] == 3

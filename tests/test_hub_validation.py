"""from_pretrained refuses configs and weights that would build or load something wrong."""
from __future__ import annotations

import json
import resource

import pytest
import torch
from safetensors.torch import load_file, save_file

import raunet_fast
from raunet_fast import RAUNet
from raunet_fast.io.checkpoints import read_preprocessing, write_checkpoint


def saved(tmp_path, **kw):
    torch.manual_seed(0)
    model = RAUNet(in_channels=3, out_channels=1, base_channels=4, depth=3, **kw)
    model.save_pretrained(tmp_path / "ck")
    return tmp_path / "ck", model


def edit_config(ck, **changes):
    cfg = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**cfg, **changes}))


@pytest.mark.parametrize("changes, message", [
    ({"depth": 100}, "depth must be an integer in [2, 10]"),
    ({"base_channels": 200000}, "base_channels must be an integer in [2, 1024]"),
    ({"deep_supervision": "no"}, "deep_supervision must be true or false"),
    ({"in_channels": 3.0}, "in_channels must be an integer"),
    ({"norm": "layer"}, "norm must be one of"),
    ({"dropout": 1.5}, "dropout must be a number in [0, 1)"),
    ({"spatial_dims": 4}, "spatial_dims must be 2 (images) or 3 (volumes)"),
    ({"spatial_dims": True}, "spatial_dims must be 2 (images) or 3 (volumes)"),
    ({"spatial_dims": "3"}, "spatial_dims must be 2 (images) or 3 (volumes)"),
])
def test_bad_config_is_refused_before_building(tmp_path, changes, message):
    ck, _ = saved(tmp_path)
    edit_config(ck, **changes)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError) as e:
        raunet_fast.from_pretrained(ck)
    assert message in str(e.value) and "config.json" in str(e.value)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, grown_mb  # nothing of the implied model was allocated


def test_a_config_larger_than_its_weights_is_refused(tmp_path):
    ck, _ = saved(tmp_path)
    edit_config(ck, base_channels=64, depth=6)  # in range, far more values than the file has
    with pytest.raises(ValueError, match="needs at least"):
        raunet_fast.from_pretrained(ck)


def rewrite_tensor(ck, key, fn):
    path = ck / "model.safetensors"
    state = load_file(str(path))
    state[key] = fn(state[key])
    save_file(state, str(path))


@pytest.mark.parametrize("damage, message", [
    (lambda t: t.bool(), "is torch.bool"),
    (lambda t: t.to(torch.int32), "is torch.int32"),
    (lambda t: t.index_fill(0, torch.tensor([1]), float("nan")), "NaN / Inf"),
    (lambda t: t.index_fill(0, torch.tensor([0]), float("-inf")), "NaN / Inf"),
])
def test_damaged_weights_are_refused(tmp_path, damage, message):
    ck, model = saved(tmp_path)
    key = next(k for k, v in model.state_dict().items() if v.is_floating_point() and v.dim() == 4)
    rewrite_tensor(ck, key, damage)
    with pytest.raises(ValueError) as e:
        raunet_fast.from_pretrained(ck)
    assert message in str(e.value) and key in str(e.value)


def test_recorded_hash_catches_flipped_bytes(tmp_path):
    _, model = saved(tmp_path)
    ck = write_checkpoint(tmp_path, "run", model, {"epoch": 1}, {"dataset": "isic2018"})
    raunet_fast.from_pretrained(ck)  # intact: loads
    path = ck / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one bit of the last weight: still a valid, finite file
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        raunet_fast.from_pretrained(ck)


@pytest.mark.parametrize("prep, message", [
    ({"image_size": [0, -5]}, "image_size must be two sizes >= 1"),
    ({"image_size": "64"}, "image_size must be a list of integers"),
    ({"patch": [16]}, "patch must be two sizes or three sizes"),
    ({"patch": [16, 16, 16, 16]}, "patch must be two sizes or three sizes"),
    ({"crop": 0}, "crop must be an integer >= 1"),
    ({"threshold": 1.0}, "threshold must be in (0, 1)"),
    ({"threshold": "0.5"}, "threshold must be a number"),
    ({"dataset": "kits"}, "dataset must be one of"),
    ({"split_seed": 1.5}, "split_seed must be an integer"),
])
def test_bad_preprocessing_values_are_one_line_errors(tmp_path, prep, message):
    (tmp_path / "preprocessing.json").write_text(json.dumps(prep))
    with pytest.raises(ValueError) as e:
        read_preprocessing(tmp_path)
    assert message in str(e.value) and "preprocessing.json" in str(e.value)


def test_good_preprocessing_reads_back(tmp_path):
    prep = {"dataset": "folder", "image_size": [48, 64], "patch": None, "crop": None,
            "threshold": 0.4, "split_seed": 3}
    (tmp_path / "preprocessing.json").write_text(json.dumps(prep))
    assert read_preprocessing(tmp_path) == prep

"""One shared test base that every architecture of the family runs."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import raunet_fast
from raunet_fast import AttentionUNet, RAUNet, ResUNet, UNet
from raunet_fast.errors import InputTypeError

ALL = [UNet, AttentionUNet, ResUNet, RAUNet]
SMALL = dict(base_channels=4, depth=4)


def small(cls, **kw):
    return cls(**{**dict(in_channels=3, out_channels=2), **SMALL, **kw})


# ---------------------------------------------------------------- architecture facts
@pytest.mark.parametrize("cls,in_ch,out_ch,expected", [
    (UNet, 3, 1, 31_037_633),
    (AttentionUNet, 3, 1, 31_388_201),
    (RAUNet, 3, 1, 32_786_921),
    (RAUNet, 4, 3, 32_787_691),
])
def test_parameter_counts_match_design(cls, in_ch, out_ch, expected):
    with torch.device("meta"):
        model = cls(in_ch, out_ch)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_resunet_count_is_unet_plus_the_residual_shortcuts():
    """ResUNet = UNet + 1x1 projection shortcuts; RAUNet = AttentionUNet + the same
    shortcuts. So ResUNet - UNet == RAUNet - AttentionUNet (the README's 32,436,353)."""
    with torch.device("meta"):
        n = {cls.__name__: sum(p.numel() for p in cls(3, 1).parameters()) for cls in ALL}
    assert n["ResUNet"] - n["UNet"] == n["RAUNet"] - n["AttentionUNet"] > 0
    assert n["ResUNet"] == 32_436_353


def test_switches():
    assert (UNet.residual, UNet.attention) == (False, False)
    assert (AttentionUNet.residual, AttentionUNet.attention) == (False, True)
    assert (ResUNet.residual, ResUNet.attention) == (True, False)
    assert (RAUNet.residual, RAUNet.attention) == (True, True)
    with pytest.raises(ValueError, match="residual"):
        UNet(residual=True)


@pytest.mark.parametrize("cls", [UNet, AttentionUNet, RAUNet])
def test_default_model_odd_input_gives_same_size_logits(cls):
    model = cls(3, 1).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 97, 130))
    assert y.shape == (1, 1, 97, 130)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("hw", [(97, 130), (1, 1), (5, 3), (16, 16), (33, 8)])
def test_any_size(cls, hw):
    model = small(cls).eval()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 2, *hw)


@pytest.mark.parametrize("cls", ALL)
def test_crop_matches_manual_padding(cls):
    """Padding + crop is exactly running the padded image and cropping."""
    model = small(cls).eval()
    x = torch.randn(1, 3, 13, 21)
    padded = torch.nn.functional.pad(x, (0, 3, 0, 3))  # to 16 x 24, a multiple of 8
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded)[..., :13, :21], rtol=0, atol=0)


@pytest.mark.parametrize("cls", ALL)
def test_batch_items_are_independent_in_eval(cls):
    model = small(cls).eval()
    x = torch.randn(3, 3, 24, 24)
    with torch.no_grad():
        full = model(x)
        one = model(x[1:2])
    scale = full.abs().max().item()
    torch.testing.assert_close(full[1:2], one, rtol=1e-4, atol=1e-5 * scale)


# ---------------------------------------------------------------- training behaviour
@pytest.mark.parametrize("cls", ALL)
def test_gradients_reach_every_parameter(cls):
    model = small(cls, deep_supervision=True).train()
    outs = model(torch.randn(2, 3, 20, 28))
    loss = sum(o.float().square().mean() for o in outs)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


@pytest.mark.parametrize("cls", ALL)
def test_deep_supervision_outputs(cls):
    model = small(cls, deep_supervision=True, depth=5)
    x = torch.randn(2, 3, 50, 37)
    outs = model.train()(x)
    assert isinstance(outs, tuple) and len(outs) == 4  # main + levels 1..3
    for k, o in enumerate(outs):
        assert o.shape == (2, 2, -(-50 // 2 ** k), -(-37 // 2 ** k)), k
    with torch.no_grad():
        y = model.eval()(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 2, 50, 37)
    torch.testing.assert_close(y, model(x))


@pytest.mark.parametrize("cls", ALL)
def test_dropout_train_vs_eval(cls):
    x = torch.randn(2, 3, 16, 16)
    model = small(cls, dropout=0.5)
    assert any(isinstance(m, nn.Dropout2d) for m in model.modules())
    model.train()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert not torch.allclose(a, b), "dropout had no effect in train mode"
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    no_drop = small(cls, dropout=0.0)
    assert not any(isinstance(m, nn.Dropout2d) for m in no_drop.modules())


@pytest.mark.parametrize("norm", ["batch", "instance", "group"])
@pytest.mark.parametrize("cls", [UNet, RAUNet])
def test_norms_train_with_batch_one(cls, norm):
    model = small(cls, norm=norm, base_channels=6).train()
    y = model(torch.randn(1, 3, 32, 32))
    y.mean().backward()
    kinds = {type(m) for m in model.modules()
             if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm))}
    assert len(kinds) == 1, f"mixed norm types: {kinds}"


def test_reset_parameters_is_applied():
    model = small(RAUNet)
    conv = model.encoder[1].conv1.conv
    fan_out = conv.out_channels * 9
    std = conv.weight.std().item()
    # kaiming normal, fan_out mode: std = sqrt(2 / fan_out); default torch init is much smaller
    assert abs(std - (2 / fan_out) ** 0.5) < 0.35 * (2 / fan_out) ** 0.5
    assert (model.decoder[0].up.bias == 0).all()


# ---------------------------------------------------------------- attention maps
@pytest.mark.parametrize("cls", ALL)
def test_attention_maps(cls):
    model = small(cls, depth=4).eval()
    x = torch.randn(2, 3, 29, 40)
    with torch.no_grad():
        plain = model(x)
        out, alphas = model(x, return_attention=True)
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    if not cls.attention:
        assert alphas == []
        return
    assert len(alphas) == 3
    for k, a in enumerate(alphas):
        assert a.shape == (2, 1, -(-29 // 2 ** k), -(-40 // 2 ** k))
        assert ((a >= 0) & (a <= 1)).all()  # sigmoid output (may saturate in fp32)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("x,err,msg", [
    (torch.randn(3, 16, 16), ValueError, "4-D"),
    (torch.randn(1, 1, 3, 16, 16), ValueError, "4-D"),
    (torch.randn(1, 4, 16, 16), ValueError, "in_channels=3"),
    # InputTypeError (a TypeError): the CLI reports it as a user error, not a bug
    (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), InputTypeError, "floating"),
    (torch.zeros(1, 3, 16, 16, dtype=torch.int64), InputTypeError, "floating"),
    ([[1.0]], InputTypeError, "torch.Tensor"),
    (torch.randn(0, 3, 16, 16), ValueError, "empty"),
    (torch.randn(1, 3, 0, 16), ValueError, "empty"),
])
@pytest.mark.parametrize("cls", ALL)
def test_bad_input_is_named(cls, x, err, msg):
    model = small(cls).eval()
    with pytest.raises(err, match=msg):
        model(x)


@pytest.mark.parametrize("kw,msg", [
    (dict(norm="layer"), "norm"), (dict(depth=1), "depth"), (dict(in_channels=0), "in_channels"),
    (dict(dropout=1.5), "dropout"), (dict(base_channels=1), "base_channels"),
])
def test_bad_constructor_arguments(kw, msg):
    with pytest.raises(ValueError, match=msg):
        RAUNet(**kw)


# ---------------------------------------------------------------- save / load
@pytest.mark.parametrize("cls", ALL)
def test_save_load_round_trip(cls, tmp_path):
    model = small(cls, norm="group", dropout=0.1)
    model.train()(torch.randn(2, 3, 16, 16))  # a training-mode forward (dropout on) first
    model.eval()
    model.save_pretrained(tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["architecture"] == cls.__name__
    for loaded in (raunet_fast.from_pretrained(tmp_path / "ckpt"), cls.from_pretrained(tmp_path / "ckpt")):
        assert type(loaded) is cls
        assert loaded.config == model.config
        assert not loaded.training  # ready for inference, as a drop-in model should be
        x = torch.randn(1, 3, 19, 23)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_batchnorm_statistics_survive_round_trip(tmp_path):
    model = small(RAUNet)
    model.train()(torch.randn(4, 3, 16, 16) * 3 + 1)
    model.eval().save_pretrained(tmp_path)
    loaded = RAUNet.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.encoder[0].conv1.norm.num_batches_tracked.item() == 1


def test_deep_supervision_weights_load_without_aux_heads(tmp_path):
    model = small(RAUNet, deep_supervision=True).eval()
    model.save_pretrained(tmp_path)
    plain = RAUNet.from_pretrained(tmp_path, deep_supervision=False).eval()
    assert plain.aux_heads is None
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), rtol=0, atol=0)


def test_load_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        raunet_fast.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        raunet_fast.from_pretrained(tmp_path)

    small(RAUNet).save_pretrained(tmp_path / "ra")
    with pytest.raises(ValueError, match="holds a RAUNet, not a UNet"):
        UNet.from_pretrained(tmp_path / "ra")

    weights = tmp_path / "ra" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors"):
        raunet_fast.from_pretrained(tmp_path / "ra")
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        raunet_fast.from_pretrained(tmp_path / "ra")

    # weights of one architecture under the config of another: mismatched keys
    small(UNet).save_pretrained(tmp_path / "u")
    cfg = json.loads((tmp_path / "u" / "config.json").read_text())
    cfg["architecture"] = "RAUNet"
    (tmp_path / "u" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="missing keys"):
        raunet_fast.from_pretrained(tmp_path / "u")

    # right keys, wrong widths
    small(RAUNet, base_channels=4).save_pretrained(tmp_path / "w")
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    cfg["base_channels"] = 6
    (tmp_path / "w" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="wrong shape"):
        raunet_fast.from_pretrained(tmp_path / "w")

    (tmp_path / "w" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        raunet_fast.from_pretrained(tmp_path / "w")


def test_save_leaves_no_temporary_files(tmp_path):
    small(UNet).save_pretrained(tmp_path)
    small(UNet).save_pretrained(tmp_path)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


# ---------------------------------------------------------------- compile / export
def test_torch_compile_fullgraph_matches_eager():
    model = small(RAUNet, base_channels=4, depth=3).eval()
    x = torch.randn(1, 3, 20, 27)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cls", [UNet, RAUNet])
def test_torch_export(cls):
    model = small(cls).eval()
    x = torch.randn(1, 3, 20, 27)
    ep = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), model(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- package hygiene
def test_import_is_cheap_and_builds_nothing():
    code = ("import sys, raunet_fast; "
            "bad = [m for m in ('triton', 'torch.utils.cpp_extension', 'raunet_fast.ops.conv3x3.triton.launch', "
            "'raunet_fast.ops') if m in sys.modules]; "
            "assert not bad, bad; import raunet_fast.ops.conv3x3.triton; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_build_model_names():
    assert type(raunet_fast.build_model("attention-unet", **SMALL)) is AttentionUNet
    assert type(raunet_fast.build_model("RAUNet", **SMALL)) is RAUNet
    with pytest.raises(ValueError, match="unknown model"):
        raunet_fast.build_model("segformer")


# ---------------------------------------------------------------- volumes (spatial_dims=3)
SMALL3D = dict(base_channels=4, depth=3, spatial_dims=3)
VOLUME = (12, 16, 20)


def small3d(cls, **kw):
    return cls(**{**dict(in_channels=3, out_channels=2), **SMALL3D, **kw})


def count_by_formula(cls, in_ch, out_ch, base=64, depth=5, spatial_dims=2):
    """Parameters of the family, counted from the level widths (not from a model): a conv
    of kernel k has ``cin * cout * k**dims`` weights, every norm 2 * C affine values."""
    def cna(cin, cout, k):  # conv (no bias) + norm
        return cin * cout * k ** spatial_dims + 2 * cout

    def block(cin, cout):
        shortcut = cna(cin, cout, 1) if cls.residual and cin != cout else 0
        return cna(cin, cout, 3) + cna(cout, cout, 3) + shortcut

    widths = [base * 2 ** i for i in range(depth)]
    total = sum(block(in_ch if i == 0 else widths[i - 1], w) for i, w in enumerate(widths))
    for w in widths[:-1]:
        up = 2 * w * w * 2 ** spatial_dims + w
        gate = 2 * cna(w, w // 2, 1) + cna(w // 2, 1, 1) if cls.attention else 0
        total += up + gate + block(2 * w, w)
    return total + base * out_ch + out_ch


def test_formula_reproduces_the_pinned_2d_counts():
    assert count_by_formula(UNet, 3, 1) == 31_037_633
    assert count_by_formula(AttentionUNet, 3, 1) == 31_388_201
    assert count_by_formula(ResUNet, 3, 1) == 32_436_353
    assert count_by_formula(RAUNet, 3, 1) == 32_786_921


@pytest.mark.parametrize("cls,in_ch,out_ch,expected", [
    (UNet, 3, 1, 90_302_017),
    (AttentionUNet, 3, 1, 90_652_585),
    (ResUNet, 3, 1, 91_700_737),
    (RAUNet, 3, 1, 92_051_305),
    (RAUNet, 4, 3, 92_053_227),   # BraTS: 4 modalities -> 3 regions
])
def test_3d_parameter_counts_match_the_formula(cls, in_ch, out_ch, expected):
    assert count_by_formula(cls, in_ch, out_ch, spatial_dims=3) == expected
    with torch.device("meta"):
        model = cls(in_ch, out_ch, spatial_dims=3)
    assert sum(p.numel() for p in model.parameters()) == expected
    kinds = {type(m) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))}
    assert kinds == {nn.Conv3d}


@pytest.mark.parametrize("cls", ALL)
def test_3d_tiny_counts_match_the_formula(cls):
    model = small3d(cls)
    assert sum(p.numel() for p in model.parameters()) == \
        count_by_formula(cls, 3, 2, base=4, depth=3, spatial_dims=3)


@pytest.mark.parametrize("cls", ALL)
@pytest.mark.parametrize("dhw", [VOLUME, (5, 3, 7), (1, 1, 1), (13, 9, 6)])
def test_3d_any_size(cls, dhw):
    model = small3d(cls).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, *dhw))
    assert y.shape == (2, 2, *dhw) and torch.isfinite(y).all()


@pytest.mark.parametrize("cls", ALL)
def test_3d_crop_matches_manual_padding(cls):
    """An anisotropic volume: each axis padded at its end to a multiple of 4, then cropped."""
    model = small3d(cls).eval()
    x = torch.randn(1, 3, 3, 10, 7)
    padded = torch.nn.functional.pad(x, (0, 1, 0, 2, 0, 1))  # to 4 x 12 x 8
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(padded)[..., :3, :10, :7], rtol=0, atol=0)


@pytest.mark.parametrize("cls", [UNet, RAUNet])
def test_3d_batch_items_are_independent_in_eval(cls):
    model = small3d(cls).eval()
    x = torch.randn(3, 3, 5, 6, 7)
    with torch.no_grad():
        full, one = model(x), model(x[1:2])
    torch.testing.assert_close(full[1:2], one, rtol=1e-4, atol=1e-5 * full.abs().max().item())


@pytest.mark.parametrize("cls", ALL)
def test_3d_gradients_reach_every_parameter(cls):
    model = small3d(cls, deep_supervision=True, dropout=0.1).train()
    assert any(isinstance(m, nn.Dropout3d) for m in model.modules())
    outs = model(torch.randn(2, 3, 5, 9, 6))
    assert [tuple(o.shape) for o in outs] == [(2, 2, 5, 9, 6), (2, 2, 3, 5, 3)]
    sum(o.square().mean() for o in outs).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


@pytest.mark.parametrize("norm", ["batch", "instance", "group"])
def test_3d_norms_are_3d_and_train_with_batch_one(norm):
    model = small3d(RAUNet, norm=norm, base_channels=6).train()
    model(torch.randn(1, 3, 4, 8, 8)).mean().backward()
    kinds = {type(m) for m in model.modules()
             if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm,
                               nn.modules.instancenorm._InstanceNorm))}
    want = {"batch": nn.BatchNorm3d, "instance": nn.InstanceNorm3d, "group": nn.GroupNorm}[norm]
    assert kinds == {want}


def test_3d_attention_maps_are_per_voxel():
    model = small3d(RAUNet).eval()
    x = torch.randn(2, 3, 7, 9, 11)
    with torch.no_grad():
        out, alphas = model(x, return_attention=True)
        torch.testing.assert_close(out, model(x), rtol=0, atol=0)
    assert [tuple(a.shape) for a in alphas] == [(2, 1, 7, 9, 11), (2, 1, 4, 5, 6)]
    assert all(((a >= 0) & (a <= 1)).all() for a in alphas)


@pytest.mark.parametrize("x,msg", [
    (torch.randn(1, 3, 16, 16), "5-D input N x 3 x D x H x W"),
    (torch.randn(3, 8, 16, 16), "unsqueeze"),
    (torch.randn(1, 4, 8, 8, 8), "in_channels=3"),
    (torch.randn(1, 3, 0, 8, 8), "empty"),
])
def test_3d_bad_input_is_named(x, msg):
    with pytest.raises(ValueError, match=msg):
        small3d(UNet).eval()(x)


@pytest.mark.parametrize("dims", [1, 4, True, "3", 3.0])
def test_bad_spatial_dims(dims):
    with pytest.raises(ValueError, match="spatial_dims must be 2"):
        RAUNet(spatial_dims=dims)


@pytest.mark.parametrize("cls", ALL)
def test_3d_save_load_round_trip(cls, tmp_path):
    model = small3d(cls)
    model.train()(torch.randn(2, 3, 4, 8, 8))  # non-trivial BatchNorm statistics
    model.eval().save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["spatial_dims"] == 3
    loaded = raunet_fast.from_pretrained(tmp_path / "ckpt")
    assert type(loaded) is cls and loaded.spatial_dims == 3 and loaded.config == model.config
    x = torch.randn(1, 3, 5, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_old_config_without_spatial_dims_loads_as_2d(tmp_path):
    model = small(RAUNet).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config.pop("spatial_dims") == 2
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = raunet_fast.from_pretrained(tmp_path)
    assert loaded.spatial_dims == 2
    x = torch.randn(1, 3, 11, 13)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_3d_weights_under_a_2d_config_are_refused(tmp_path):
    small3d(RAUNet).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "spatial_dims": 2}))
    with pytest.raises(ValueError, match="wrong shape"):
        raunet_fast.from_pretrained(tmp_path)


def test_3d_summary_names_the_dimension_and_counts(capsys):
    from raunet_fast import cli
    from raunet_fast.summary import summarize

    model = small3d(RAUNet)
    s = summarize(model, (1, 3, *VOLUME))
    assert s.output_shape == (1, 2, *VOLUME)
    assert s.params == count_by_formula(RAUNet, 3, 2, base=4, depth=3, spatial_dims=3)
    text = s.format()
    assert "RAUNet (3-D)" in text and "N x C x D x H x W" in text
    assert "encoder 2             1 x 16 x 3 x 4 x 5" in text
    assert cli.main(["summary", "--base-channels", "4", "--depth", "3", "--in-channels", "3",
                     "--out-channels", "2", "--volume-size", "12x16x20"]) == 0
    out = capsys.readouterr().out
    assert f"parameters:            {s.params:,}" in out and "(3-D)" in out


@pytest.mark.slow  # ~15 s: inductor compiles the 3-D graph
def test_3d_torch_compile_fullgraph_matches_eager():
    model = small3d(RAUNet).eval()
    x = torch.randn(1, 3, 5, 9, 7)
    # static shapes: after the 2-D test compiled the same forward, dynamo would otherwise
    # recompile with symbolic sizes, which inductor's conv3d lowering of the padded input
    # (torch 2.13) rejects
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)

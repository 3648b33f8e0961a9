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

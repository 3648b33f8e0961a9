"""``raunet-fast export`` / raunet_fast.export: torch.export programs of the reference and the
fused model, saved, loaded and run against the eager model on fresh inputs."""
from __future__ import annotations

import pytest
import torch

from raunet_fast import cli
from raunet_fast.export import export_model, save_program
from raunet_fast.models import build_model


def _model():
    model = build_model("raunet", in_channels=3, out_channels=2, base_channels=4, depth=3)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics to fold
        model(torch.randn(2, 3, 16, 16))
    return model.eval()


@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])
def test_dynamic_program_matches_eager(fused, tmp_path):
    model = _model()
    assert model.size_multiple == 4
    path = save_program(export_model(model, size=(24, 32), fused=fused), tmp_path / "m.pt2")
    program = torch.export.load(str(path)).module()
    for shape in ((1, 3, 24, 32), (3, 3, 8, 44)):  # other batch; 8 = the smallest size
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = model(x)
            got = program(x)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    with pytest.raises((AssertionError, RuntimeError), match="[Gg]uard|size"):  # H % 4 != 0
        program(torch.randn(1, 3, 13, 32))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt2"]  # no temporary left behind


def test_static_program_and_bad_sizes(tmp_path):
    model = _model()
    program = export_model(model, size=(20, 20), batch=1, dynamic=False).module()
    x = torch.randn(1, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises((AssertionError, RuntimeError), match="[Gg]uard|size"):
        program(torch.randn(2, 3, 20, 20))
    with pytest.raises(ValueError, match="multiple of the model's size_multiple 4"):
        export_model(model, size=(18, 20))
    with pytest.raises(ValueError, match="at least 8"):
        export_model(model, size=(4, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_model(model, size=(8, 8), fused=True)  # the caller's model is left alone
    assert model.training is False and all(torch.equal(before[k], v)
                                           for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="fused=True"):
        export_model(model, size=(20, 20), dynamic=False, dtype=torch.bfloat16)


def test_cli(tmp_path, capsys):
    ck = tmp_path / "ck"
    _model().save_pretrained(ck)
    out = tmp_path / "dep" / "model.pt2"
    assert cli.main(["export", "--checkpoint", str(ck), "--out", str(out), "--size", "16",
                     "--fused"]) == 0
    msg = capsys.readouterr().out
    assert "fused model" in msg and "multiples of 4" in msg and out.is_file()
    x = torch.randn(2, 3, 8, 12)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.load(str(out)).module()(x), _load(ck)(x),
                                   rtol=1e-4, atol=1e-4)

    def fails(*argv, words=()):
        capsys.readouterr()
        assert cli.main(["export", "--checkpoint", str(ck), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("raunet-fast export: error:"), err
        for w in words:
            assert w in err, (w, err)

    fails("--out", str(out), words=["exists", "--overwrite"])
    fails("--out", str(tmp_path), words=["is a folder"])
    fails("--out", str(tmp_path / "b.pt2"), "--dtype", "bf16", words=["--fused"])
    fails("--out", str(tmp_path / "c.pt2"), "--size", "18", words=["multiple"])
    fails("--out", str(tmp_path / "c.pt2"), "--size", "4", words=["at least 8"])
    # a fresh process: `import raunet_fast.ops` is all a fused program needs to load
    import subprocess
    import sys

    code = (f"import torch, raunet_fast.ops; p = torch.export.load({str(out)!r}).module(); "
            f"print(tuple(p(torch.randn(1, 3, 8, 8)).shape))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "(1, 2, 8, 8)" in r.stdout, r.stderr[-2000:]
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() would create it
    assert cli.main(["export", "--checkpoint", str(ck), "--out", str(out), "--overwrite",
                     "--size", "16", "--static", "--batch", "2"]) == 0
    assert "2 x 3 x 16 x 16" in capsys.readouterr().out


def _load(ck):
    from raunet_fast.hub import from_pretrained

    return from_pretrained(ck).eval()

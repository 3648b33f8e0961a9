"""raunet_fast.runtime: the CPU allocator setting the CLI applies."""
from __future__ import annotations

import subprocess
import sys


def test_tune_cpu_allocator_applies_and_is_idempotent():
    # in a fresh interpreter: the setting is process-wide
    code = ("import torch; from raunet_fast.runtime import tune_cpu_allocator as t; "
            "a = t(); b = t(); x = torch.ones(80 * 2 ** 20 // 4); del x; "
            "y = torch.ones(80 * 2 ** 20 // 4); assert float(y.sum()) == y.numel(); "
            "print(a, b)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = r.stdout.split()
    assert a == b  # the same answer twice
    import platform
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert a == "True", "glibc found but mallopt not applied"


def test_cli_applies_it_unless_told_not_to(monkeypatch):
    import raunet_fast.runtime as rt
    from raunet_fast import cli

    calls = []
    monkeypatch.setattr(rt, "tune_cpu_allocator", lambda: calls.append(1) or True)
    cli.main(["summary", "--model", "unet", "--base-channels", "4", "--depth", "3",
              "--image-size", "32"])
    assert calls == [1]
    monkeypatch.setenv("RAUNET_CPU_ALLOCATOR", "default")
    cli.main(["summary", "--model", "unet", "--base-channels", "4", "--depth", "3",
              "--image-size", "32"])
    assert calls == [1]

"""Extension builds: one folder per build key, stale locks taken over, a time limit on
waiting for another builder, a line on stderr while building."""
from __future__ import annotations

import subprocess
import sys
import types

import pytest
import torch

from raunet_fast.ops import _backend, _build
from raunet_fast.ops._backend import BackendUnavailable, load_extension


@pytest.fixture
def fake_build(monkeypatch, tmp_path):
    """Extensions built into tmp_path by a stand-in for torch's cpp_extension.load that
    records its calls and, like torch, would wait forever on a leftover ``lock`` file."""
    from torch.utils import cpp_extension

    monkeypatch.setenv("RAUNET_EXTENSIONS_DIR", str(tmp_path / "ext"))
    (tmp_path / "src.cpp").write_text("int f() { return 1; }\n")
    monkeypatch.setattr(_backend, "csrc_dir", lambda: tmp_path)
    calls = []

    def load(name, sources, build_directory, **kw):
        folder = build_directory
        assert not (tmp_path / "ext" / folder / "lock").exists(), "would wait on a stale lock"
        (_build.Path(folder) / f"{name}.so").write_bytes(b"")
        calls.append(folder)
        return types.SimpleNamespace(name=name)

    monkeypatch.setattr(cpp_extension, "load", load)
    monkeypatch.setattr(_backend, "_ext_cache", {})
    return tmp_path, calls


def test_key_changes_with_sources_flags_and_torch(tmp_path, monkeypatch):
    src = tmp_path / "a.cpp"
    src.write_text("int a;")
    (tmp_path / "a.h").write_text("#pragma once")
    base = _build.build_key("x", [src], ["-O3"], False)
    assert base == _build.build_key("x", [src], ["-O3"], False)
    assert base != _build.build_key("x", [src], ["-O2"], False)
    assert base != _build.build_key("x", [src], ["-O3"], True)
    (tmp_path / "a.h").write_text("#pragma once\n// changed")
    changed_header = _build.build_key("x", [src], ["-O3"], False)
    assert changed_header != base
    monkeypatch.setattr(torch, "__version__", "0.0.0+other")
    assert _build.build_key("x", [src], ["-O3"], False) != changed_header


def test_stale_locks_are_taken_over_and_the_build_is_announced(fake_build, capsys):
    tmp_path, calls = fake_build
    key = _build.build_key("ext_a", [tmp_path / "src.cpp"], ["-O3", "-std=c++17", "-fopenmp"],
                           False)
    folder = _build.build_dir("ext_a", key)
    folder.mkdir(parents=True)
    (folder / "lock").write_text("")  # torch's lock of a build that was killed
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / ".raunet-build.lock").write_text(
        f'{{"pid": {dead.pid}, "host": "{_build_host()}", "command": "build ext_a"}}')
    load_extension("ext_a", ["src.cpp"], cuda=False)
    assert calls == [str(folder)]
    err = capsys.readouterr().err
    assert "building the ext_a extension" in err and "built ext_a in" in err
    assert not (folder / ".raunet-build.lock").exists() and not (folder / "lock").exists()
    _backend._ext_cache.clear()
    load_extension("ext_a", ["src.cpp"], cuda=False)  # built: found, nothing said
    assert "building" not in capsys.readouterr().err


def _build_host() -> str:
    import socket

    return socket.gethostname()


def test_a_live_builder_is_waited_for_only_up_to_the_limit(fake_build, monkeypatch):
    tmp_path, calls = fake_build
    monkeypatch.setenv("RAUNET_BUILD_TIMEOUT", "0.5")
    key = _build.build_key("ext_b", [tmp_path / "src.cpp"], ["-O3", "-std=c++17", "-fopenmp"],
                           False)
    folder = _build.build_dir("ext_b", key)
    folder.mkdir(parents=True)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (folder / ".raunet-build.lock").write_text(
            f'{{"pid": {alive.pid}, "host": "{_build_host()}", "command": "build ext_b"}}')
        with pytest.raises(BackendUnavailable, match=f"being built by pid {alive.pid}"):
            load_extension("ext_b", ["src.cpp"], cuda=False)
    finally:
        alive.kill()
        alive.wait()
    assert calls == []

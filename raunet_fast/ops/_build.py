"""Where and how the ``csrc/`` extensions are built: one folder per build key, a pid lock,
a time limit, a line on stderr while a build runs.

The build key hashes everything the binary depends on: the source files (and every header
in ``csrc/``), the compiler flags, torch's version and CUDA version, the Python version,
the machine and the install prefix. Two environments, or two versions of the sources,
never share a folder, and finding the built library there means no build is needed.
Folders live in ``$RAUNET_EXTENSIONS_DIR``, else ``$TORCH_EXTENSIONS_DIR/raunet_fast``, else
``~/.cache/raunet_fast/extensions``.

torch's own build lock (a file named ``lock`` in the folder) stays behind when a build is
killed, and every later build would wait for it forever. Builds here take a pid-stamped
lock first (:func:`raunet_fast.io.lock.file_lock`); whoever holds it knows that a leftover
``lock`` is stale and removes it. Waiting for another live builder is limited to
``$RAUNET_BUILD_TIMEOUT`` seconds (default 900).
"""
from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["build_key", "build_dir", "built_library", "build_guard"]

DEFAULT_TIMEOUT_S = 900.0


def build_key(name: str, paths: list[Path], flags: list[str], cuda: bool) -> str:
    """16 hex digits identifying one build of extension ``name``."""
    h = hashlib.sha256()
    headers = sorted(p for d in {p.parent for p in paths} if d.is_dir() for p in d.iterdir()
                     if p.suffix in (".h", ".cuh", ".hpp"))
    for p in [*paths, *headers]:  # a missing source is the compiler's error to report
        h.update(p.name.encode())
        h.update(p.read_bytes() if p.is_file() else b"<missing>")
    for part in (name, *flags, str(cuda), torch.__version__, str(torch.version.cuda),
                 sys.version, platform.machine(), sys.prefix):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def extensions_root() -> Path:
    if os.environ.get("RAUNET_EXTENSIONS_DIR"):
        return Path(os.environ["RAUNET_EXTENSIONS_DIR"])
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "raunet_fast"
    return Path.home() / ".cache" / "raunet_fast" / "extensions"


def build_dir(name: str, key: str) -> Path:
    return extensions_root() / f"{name}-{key}"


def built_library(folder: Path, name: str) -> bool:
    """Whether ``folder`` already holds the built library of ``name`` (no build needed)."""
    return (folder / f"{name}.so").is_file()


def _timeout_s() -> float:
    raw = os.environ.get("RAUNET_BUILD_TIMEOUT", "")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"RAUNET_BUILD_TIMEOUT must be a number of seconds, got {raw!r}") \
            from None


@contextmanager
def build_guard(folder: Path, name: str, quiet: bool = False):
    """Hold ``folder``'s build lock for the block (stale torch locks removed), and say on
    stderr that a build runs when the library is not there yet. Raises
    :class:`~raunet_fast.io.lock.LockHeld` when another live process builds for longer than
    the time limit."""
    from ..io.lock import file_lock

    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / ".raunet-build.lock", f"build {name}", wait_s=_timeout_s()):
        (folder / "lock").unlink(missing_ok=True)  # torch's: stale whenever we hold ours
        building = not built_library(folder, name)
        if building and not quiet:
            print(f"raunet-fast: building the {name} extension in {folder} (once per install "
                  f"and source version; 1-3 minutes on 2 cores) ...", file=sys.stderr,
                  flush=True)
        t0 = time.perf_counter()
        yield building
        if building and not quiet:
            print(f"raunet-fast: built {name} in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)

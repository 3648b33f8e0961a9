"""Backend selection and the JIT build of ``csrc/`` extensions, shared by every op.

Backends of an op:

* ``"torch"``  - reference math in PyTorch, any device.
* ``"triton"`` - the op's Triton kernels (``<op>/triton/``): CUDA tensors, or CPU
  tensors when ``TRITON_INTERPRET=1`` was set before triton was first imported (the
  interpreter; that is how CPU tests run kernels).
* ``"cuda"``   - C++/CUDA extension from ``csrc/`` (CUDA tensors), built with ninja at
  first use.
* ``"cpp"``    - the same ``csrc/`` math built as a CPU extension (g++ + OpenMP).
* ``"auto"``   - best available for the tensor's device.

Nothing here builds or imports anything at import time. A failed build is remembered
(never retried in the same process) and reported with the compiler's error.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

BACKENDS = ("auto", "torch", "triton", "cuda", "cpp")


class BackendUnavailable(RuntimeError):
    """A requested backend cannot run here; the message says why."""


def eager_direct(*tensors) -> bool:
    """Whether an op may run its implementation directly instead of through its
    ``torch.library`` custom op (whose dispatch costs ~20-40 us of host time per call, more
    than a small kernel: the batch-1 network is host-bound in eager mode).

    True only in plain eager inference: not while ``torch.compile`` / ``torch.export`` or
    ``torch.jit`` trace, no ``TorchDispatchMode`` or ``TorchFunctionMode`` active (``with
    torch.device(...)`` is one), no ``torch.func`` transform (vmap, grad, jvp) and no
    forward-mode AD level, every tensor a plain CPU or CUDA ``torch.Tensor`` or
    ``nn.Parameter`` (no fake, meta or subclass tensors), and no tensor that would need
    autograd. Otherwise the op is called and behaves exactly as registered. (Under the
    profiler the direct call is recorded under the op's name, see :func:`run_direct`.)
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    if (_get_current_dispatch_mode() is not None or torch._C._is_torch_function_mode_enabled()
            or torch._C._are_functorch_transforms_active()
            or torch.autograd.forward_ad._current_level >= 0):
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        # is_cpu / is_cuda, not t.device.type: building a torch.device costs ~0.4 us a tensor
        if type(t) not in _PLAIN or not (t.is_cuda or t.is_cpu):
            return False
        if grad and t.requires_grad:
            return False
    return True


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def run_direct(name: str, impl, args):
    """``impl(*args)``, recorded as ``raunet_fast::<name>`` when the profiler runs (the
    registered op would show under that name; the direct call must not vanish from traces)."""
    if torch.autograd.profiler._is_profiler_enabled:
        with torch.profiler.record_function(f"raunet_fast::{name}"):
            return impl(*args)
    return impl(*args)


def check_backend_name(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def triton_interpreting() -> bool:
    """Whether Triton runs in its interpreter (``TRITON_INTERPRET``, which Triton reads)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_unavailable_reason(device: torch.device) -> str | None:
    """``None`` when Triton can run on ``device``, else why not."""
    if not triton_installed():
        return "triton is not installed (pip install 'raunet-fast[triton]')"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if triton_interpreting():
            return None
        return ("triton runs CPU tensors only in its interpreter: set TRITON_INTERPRET=1 "
                "before importing triton (slow; for testing)")
    return f"triton does not support {device.type} tensors"


# ------------------------------------------------------------------ csrc extensions
def csrc_dir() -> Path:
    """Folder holding the C++/CUDA sources (package data, or the repo's csrc/ when editable)."""
    here = Path(__file__).resolve().parent.parent
    for cand in (here / "csrc", here.parent / "csrc"):
        if cand.is_dir() and any(cand.glob("*.h")):
            return cand
    raise BackendUnavailable(f"csrc sources not found next to {here}; broken installation")


_ext_lock = threading.Lock()
_ext_cache: dict[str, ModuleType | BackendUnavailable] = {}


def load_extension(name: str, sources: list[str], cuda: bool, quiet: bool = False) -> ModuleType:
    """Build (once per build key, see :mod:`raunet_fast.ops._build`) and import a ``csrc/``
    extension.

    ``sources`` are file names inside :func:`csrc_dir`. ``cuda=False`` builds a CPU
    extension with OpenMP. Honours ``MAX_JOBS``. Raises :class:`BackendUnavailable` with the
    compiler error on failure, or when another process has been building it for longer
    than the time limit, and remembers the failure for this process.
    """
    with _ext_lock:
        hit = _ext_cache.get(name)
        if isinstance(hit, BackendUnavailable):
            raise hit
        if hit is None:
            try:
                hit = _build_and_import(name, sources, cuda, quiet)
            except BackendUnavailable as e:
                hit = e
            _ext_cache[name] = hit
        if isinstance(hit, BackendUnavailable):
            raise hit
        return hit


def _build_and_import(name: str, sources: list[str], cuda: bool, quiet: bool) -> ModuleType:
    from torch.utils import cpp_extension

    from ..io.lock import LockHeld
    from ._build import build_dir, build_guard, build_key

    if cuda and cpp_extension.CUDA_HOME is None:
        raise BackendUnavailable(f"cannot build {name}: no CUDA toolkit (nvcc) found")
    root = csrc_dir()
    paths = [root / s for s in sources]
    cflags = ["-O3", "-std=c++17", "-fopenmp"]
    cuda_flags = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"] if cuda else None
    folder = build_dir(name, build_key(name, paths, cflags + (cuda_flags or []), cuda))
    try:
        with build_guard(folder, name, quiet):
            return cpp_extension.load(
                name=name, sources=[str(p) for p in paths], extra_include_paths=[str(root)],
                extra_cflags=cflags, extra_ldflags=["-fopenmp"], extra_cuda_cflags=cuda_flags,
                with_cuda=cuda, build_directory=str(folder), verbose=False)
    except LockHeld as e:
        raise BackendUnavailable(f"the {name} extension is being built by pid "
                                 f"{e.owner.get('pid')} ({e.path}) for longer than the time "
                                 f"limit (RAUNET_BUILD_TIMEOUT)") from e
    except Exception as e:  # compiler errors come as RuntimeError / CalledProcessError
        msg = str(e)
        raise BackendUnavailable(f"building the {name} extension failed: "
                                 f"{msg[-2000:] if len(msg) > 2000 else msg}") from e


def warn_fallback(op: str, wanted: str, used: str, why: str) -> None:
    warnings.warn(f"{op}: backend {wanted!r} unavailable ({why}); using {used!r}",
                  RuntimeWarning, stacklevel=3)


def first_that_runs(op: str, chain: list[str], run, args: tuple):
    """``run(name, *args)`` for the first backend of ``chain`` that is available, warning
    (:func:`warn_fallback`) at each step down; the last backend's error propagates."""
    for i, name in enumerate(chain):
        try:
            return run(name, *args)
        except BackendUnavailable as e:
            if i + 1 == len(chain):
                raise
            warn_fallback(op, name, chain[i + 1], str(e))
    raise AssertionError("unreachable")

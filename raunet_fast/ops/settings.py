"""The ``RAUNET_*`` environment variables of the ops, read in one place.

:data:`settings` reads every variable the first time one of its attributes is used (so a
script may still set them after ``import raunet_fast.ops``, before the first op call) and
never again unless :meth:`Settings.reload` is called. A value it cannot use gives a
warning and the default. Code and tests change a setting by assigning the attribute
(``monkeypatch.setattr(settings, "autotune", False)``). The table of every variable is
in docs/environment.md.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

__all__ = ["Settings", "SettingsView", "settings", "VARIABLES"]


def _flag(default: bool) -> Callable[[str], bool]:
    """On unless the value is ``0``; a value other than 0 / 1 warns and counts as on."""
    def parse(value: str) -> bool:
        if value not in ("0", "1"):
            warnings.warn(f"expected 0 or 1, got {value!r}: taken as 1", stacklevel=5)
        return value != "0"
    parse.default = default
    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"not one of {', '.join(c or repr(c) for c in choices)}")
        return value
    parse.default = choices[0]
    return parse


def _index(value: str) -> Optional[int]:
    if value == "":
        return None
    if not value.isdigit():
        raise ValueError("expected an index (0, 1, ...)")
    return int(value)


_index.default = None


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, the :class:`Settings` attribute it sets, and
    the parser (raises ``ValueError`` for a value it cannot use)."""
    env: str
    attr: str
    parse: Callable[[str], Any]
    help: str

    @property
    def default(self) -> Any:
        return self.parse.default


#: Every variable :data:`settings` reads.
VARIABLES: tuple[Variable, ...] = (
    Variable("RAUNET_CONV_AUTO", "conv_auto", _choice("tune", "triton", "cudnn", "cudnn-pad"),
             "conv3x3 'auto' on CUDA: time the candidates per layer, or always take one"),
    Variable("RAUNET_CONV_CUDNN_FUSION", "conv_cudnn_fusion", _flag(True),
             "conv3x3 'cuda'/'auto': cuDNN's runtime-fused conv + bias (+ add) + ReLU"),
    Variable("RAUNET_CONV_TMA", "conv_tma", _choice("auto", "off", "interpret"),
             "conv3x3 Triton TMA kernel on sm_90; 'interpret': also in the interpreter"),
    Variable("RAUNET_FAST_AUTOTUNE", "autotune", _flag(True),
             "time the Triton configs of each layer shape once on CUDA (0: default config)"),
    Variable("RAUNET_FAST_AUTOTUNE_VERBOSE", "autotune_verbose", _flag(False),
             "print every timing the autotuner takes"),
    Variable("RAUNET_GATE_CPU_ISA", "gate_cpu_isa", _choice("", "generic", "avx2", "avx512"),
             "attention gate 'cpp' micro kernel ('' : the best the CPU has)"),
    Variable("RAUNET_GATE_CUDA_TENSOR_CORES", "gate_cuda_tensor_cores", _flag(True),
             "attention gate 'cuda' half / bf16 on tensor cores (WMMA, sm_80+)"),
    Variable("RAUNET_GATE_TRITON_CONFIG", "gate_triton_config", _index,
             "attention gate Triton: pin entry i of its CONFIGS instead of autotuning"),
)
_BY_ATTR = {v.attr: v for v in VARIABLES}


class Settings:
    """The parsed variables as attributes (``conv_auto``, ``autotune``, ... see
    :data:`VARIABLES`), loaded on first use."""

    def __getattr__(self, name: str) -> Any:
        # only called for attributes not set yet: load every variable once
        if name in _BY_ATTR and not self.__dict__.get("_loaded", False):
            self.reload()
            return self.__dict__[name]
        raise AttributeError(f"{type(self).__name__!r} has no setting {name!r}")

    def reload(self, environ: Optional[Mapping[str, str]] = None) -> "Settings":
        """Read every variable again from ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ
        for var in VARIABLES:
            setattr(self, var.attr, _parse(var, env.get(var.env)))
        self._loaded = True
        return self

    def as_dict(self) -> dict[str, Any]:
        return {v.attr: getattr(self, v.attr) for v in VARIABLES}


def _parse(var: Variable, value: Optional[str]) -> Any:
    if value is None:
        return var.default
    try:
        return var.parse(value)
    except ValueError as e:
        warnings.warn(f"{var.env}={value!r}: {e}; using {var.default!r}", stacklevel=4)
        return var.default


#: The one :class:`Settings` object.
settings = Settings()


class SettingsView(MutableMapping):
    """A one-key dict backed by a setting: ``view[key]`` reads and writes
    ``settings.<attr>``. Kept for the module dicts that held these values before
    (``TMA["mode"]``, ``AUTO_PICK["mode"]``, ``CUDNN_FUSION["enabled"]``, ...)."""

    def __init__(self, key: str, attr: str, owner: Settings = settings):
        self._key, self._attr, self._owner = key, attr, owner

    def __getitem__(self, key: str) -> Any:
        if key != self._key:
            raise KeyError(key)
        return getattr(self._owner, self._attr)

    def __setitem__(self, key: str, value: Any) -> None:
        if key != self._key:
            raise KeyError(key)
        setattr(self._owner, self._attr, value)

    def __delitem__(self, key: str) -> None:
        raise TypeError("a setting cannot be deleted")

    def __iter__(self):
        return iter((self._key,))

    def __len__(self) -> int:
        return 1

    def __repr__(self) -> str:
        return f"{{{self._key!r}: {self[self._key]!r}}}"

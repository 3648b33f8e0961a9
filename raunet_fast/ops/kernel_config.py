"""One schema for the Triton kernel configs of every op: :class:`KernelConfig`.

A config is a GEMM tile: ``block_m`` rows (output pixels), ``block_n`` columns (output
channels of the conv; the largest chunk of the gate's F intermediate channels), ``block_k``
reduction chunk (the conv's K chunk; the largest chunk of the gate's x / g channels), plus
``num_warps`` / ``num_stages`` and optional filters saying where the config is used.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Optional, Union

__all__ = ["KernelConfig"]

# the attention gate's former dict keys -> fields (configs were dicts before)
_GATE_KEYS = {"BLOCK_P": "block_m", "MAX_BLOCK_F": "block_n", "MAX_BLOCK_K": "block_k"}
_CONV_ORDER = ("block_m", "block_n", "block_k", "num_warps", "num_stages")


@dataclass(frozen=True)
class KernelConfig:
    """A Triton launch config (frozen: hashable, usable as a cache value and test id).

    Args:
        block_m, block_n, block_k: the tile (module doc).
        num_warps, num_stages: Triton's launch options.
        dtypes: input dtype names it is used for (``None``: every dtype).
        max_channels: used only while every input channel count is <= this.
        stream: streaming cache hints (loads ``evict_first``, stores ``.cs``).
        concat: whether the gate's concatenating variant uses it (``True``, ``False``, or
            the dtype names it does for).
    """
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int = 1
    dtypes: Optional[tuple[str, ...]] = None
    max_channels: Optional[int] = None
    stream: bool = False
    concat: Union[bool, tuple[str, ...]] = True

    @classmethod
    def coerce(cls, cfg: Any) -> "KernelConfig":
        """``cfg`` as a KernelConfig: one already, a conv tuple ``(block_m, block_n,
        block_k, num_warps[, num_stages])`` or a gate dict (``BLOCK_P``, ``MAX_BLOCK_K``,
        ``MAX_BLOCK_F``, ``num_warps``, ``num_stages``, ...), the former spellings."""
        if isinstance(cfg, cls):
            return cfg
        if isinstance(cfg, tuple):
            return cls(**dict(zip(_CONV_ORDER, cfg)))
        kw = {_GATE_KEYS.get(k, k): v for k, v in dict(cfg).items()}
        return cls(**kw)

    @property
    def tile(self) -> tuple[int, int, int, int, int]:
        """``(block_m, block_n, block_k, num_warps, num_stages)``."""
        return (self.block_m, self.block_n, self.block_k, self.num_warps, self.num_stages)

    def with_(self, **changes: Any) -> "KernelConfig":
        return replace(self, **changes)

    def uses_dtype(self, name: str) -> bool:
        return self.dtypes is None or name in self.dtypes

    # read access by the former gate dict keys (``cfg["BLOCK_P"]``, ``cfg.get("stream")``)
    def __getitem__(self, key: str) -> Any:
        name = _GATE_KEYS.get(key, key)
        if name not in {f.name for f in fields(self)}:
            raise KeyError(key)
        return getattr(self, name)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            value = self[key]
        except KeyError:
            return default
        return default if value is None else value

    def __str__(self) -> str:
        extra = "".join(f" {f.name}={getattr(self, f.name)}" for f in fields(self)[5:]
                        if getattr(self, f.name) != f.default)
        return (f"m{self.block_m} n{self.block_n} k{self.block_k} w{self.num_warps} "
                f"s{self.num_stages}{extra}")

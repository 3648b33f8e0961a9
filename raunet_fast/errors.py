"""Exception types shared by the package."""
from __future__ import annotations


class InputTypeError(TypeError):
    """A value of the wrong type was passed in (a list where an array is needed, an integer
    tensor where a float one is): a mistake in the caller's input, not a bug in the package.
    The ``raunet-fast`` CLI reports it as a one-line error; other TypeErrors are bugs and
    keep their traceback."""


class MissingExtra(ImportError):
    """An optional dependency is not installed: the message names the extra that brings it.
    The CLI reports it as one line."""


def require(module: str, extra: str, what: str):
    """Import and return ``module``, or raise :class:`MissingExtra` saying that ``what``
    needs ``pip install "raunet-fast[<extra>]"``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(f"{what} needs the {module} package: pip install "
                           f"\"raunet-fast[{extra}]\" ({e})") from None

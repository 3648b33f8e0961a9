"""Exception types shared by the package."""
from __future__ import annotations


class InputTypeError(TypeError):
    """A value of the wrong type was passed in (a list where an array is needed, an integer
    tensor where a float one is): a mistake in the caller's input, not a bug in the package.
    The ``raunet-fast`` CLI reports it as a one-line error; other TypeErrors are bugs and
    keep their traceback."""

"""Triton kernel of the attention gate: :mod:`.kernel` (the ``@triton.jit`` code),
:mod:`.configs` (its configs as data) and :mod:`.launch` (the launcher). Importing this
package imports nothing; its modules import triton.
"""

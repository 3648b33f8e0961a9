"""Triton kernels (installed as ``raunet_fast.kernels``).

Each module holds one fused operation, bottom to top: the ``@triton.jit`` kernel, then a
plain launcher that allocates the output and picks the config. Kernels know nothing of
models; :mod:`raunet_fast.ops` joins them to the network. Importing this package does not
import triton: each kernel module does, on first use.
"""

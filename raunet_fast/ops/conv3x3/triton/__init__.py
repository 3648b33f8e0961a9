"""Triton kernels of ``conv3x3_fused``, one file per kernel family:

* :mod:`.implicit_gemm` - the pointer-based implicit-GEMM kernel (any layout);
* :mod:`.small_k`       - the flat-K kernel for narrow inputs;
* :mod:`.tma`           - the sm_90 TMA + wgmma kernel;
* :mod:`.configs`       - their configs (:class:`~raunet_fast.ops.kernel_config.KernelConfig`)
  and candidate rules;
* :mod:`.launch`        - the launchers and :func:`~.launch.conv3x3_fused_forward`.

Importing this package imports nothing; its modules import triton.
"""

"""Triton kernels of dfkd_fast (installed as ``dfkd_fast.kernels``).

Only ``@triton.jit`` functions and their launchers live here; validation, op registration and autograd are in
``dfkd_fast.ops``. Importing this package does not import triton: each kernel module does, on first use.
"""

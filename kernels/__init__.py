"""Triton kernels of hthlight, importable as ``hthlight.kernels`` (see kernels/README.md).

Importing this package needs ``triton``; the kernels need a CUDA device (or the Triton
interpreter, ``TRITON_INTERPRET=1``, which runs them on CPU tensors for testing).
"""

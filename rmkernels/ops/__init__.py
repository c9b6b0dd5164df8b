"""Kernels: one file per op (Triton kernel or C++ extension binding, launcher, autograd wrapper)."""

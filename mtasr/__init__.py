"""Shared, Triton-free code for serving NeMo streaming multitalker ASR.

Everything under this package imports numpy (and onnxruntime where a graph runs),
never torch or nemo: it is the serving path.
"""

"""The array module ("xp") an array belongs to: numpy for host arrays, the device library (CuPy) for its arrays.

State that only the graphs and the decoder read lives in an array module the engine is built with; host code
passes index arrays and small decisions. These helpers are how code stays the same for either.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy as np


def array_module(x: Any) -> ModuleType:
    """numpy for numpy arrays and scalars, else the module of `x`'s type (a stand-in array type may name its module
    in an `array_module` class attribute)."""
    if isinstance(x, np.ndarray | np.generic):
        return np
    own = getattr(type(x), "array_module", None)
    return own if own is not None else sys.modules[type(x).__module__.split(".")[0]]


def on(xp: ModuleType, x: Any) -> Any:
    """A host array (indices, masks, small values) for use with arrays of module `xp`."""
    return x if xp is np else xp.asarray(x)


ROW_BLOCK = 8  # rows per matrix of a `row_product`


def row_product(xp: ModuleType, a: Any, w: Any) -> Any:
    """`a` (M, K) @ `w` (K, N) with each row's result independent of the other rows of `a`.

    A BLAS picks its kernel, and so its summation order, by the matrix shape (OpenBLAS: one row takes another path
    than two, and some shapes change path again at other row counts), so one row's last bit would depend on how many
    rows share the call: on the batch. Here the rows are cut into matrices of `ROW_BLOCK` rows (the last padded with
    zeros) multiplied as one stacked product, so the library always meets the same shape (numpy loops over the stack
    in C; CuPy makes it one batched GEMM)."""
    m, k = a.shape
    pad = -m % ROW_BLOCK
    if pad:
        a = xp.concatenate([a, xp.zeros((pad, k), dtype=a.dtype)])
    return (a.reshape(-1, ROW_BLOCK, k) @ w).reshape(-1, w.shape[1])[:m]

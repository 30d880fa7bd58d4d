"""The array module ("xp") an array belongs to: numpy for host arrays, the device library (CuPy) for its arrays.

State that only the graphs and the decoder read lives in an array module the engine is built with; host code
passes index arrays and small decisions. These two helpers are how code stays the same for either.
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

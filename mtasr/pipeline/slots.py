"""Streaming state in preallocated, batch-first pools indexed by slot (the way servers keep KV caches).

A pool holds one array per state field, shaped `(capacity, *row_shape)`; a session or speaker instance owns a
slot (a row index) from `acquire()` to `release()`. A step gathers its active rows into the graph's input batch
and scatters the graph's outputs back; nothing is concatenated per speaker. A field marked `device` lives in the
pool's array module `xp` (numpy on the CPU, CuPy where the graphs run on a GPU: those rows never cross to the
host); the other fields are host numpy arrays (what host code reads every step: lengths, counters, tokens).
Slot indices are host numpy arrays; they are moved to the device for device fields.
"""

from __future__ import annotations

import heapq
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from mtasr.profile import STATE_COPIES, stage


@dataclass(frozen=True)
class Field:
    """One state field: the shape of a row, its dtype, and the value a fresh row starts with."""

    shape: tuple[int, ...]
    dtype: Any
    fill: float | int = 0
    device: bool = False  # lives in the pool's array module (`xp`), not in host memory

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


class SlotPool:
    """Rows of state for many owners; grows by doubling when every slot is taken (rare: sized from the config).

    `copied_bytes` / `device_copied_bytes` count the bytes of host / device fields gathered (when a copy was needed)
    and scattered, for the benchmarks.
    """

    def __init__(self, fields: dict[str, Field], capacity: int = 8, xp: ModuleType = np) -> None:
        self.fields = dict(fields)
        self.xp = xp
        self.arrays: dict[str, Any] = {}
        self.capacity = 0
        self._free: list[int] = []
        self._lock = threading.Lock()  # a released session's finaliser may run on another thread
        self.copied_bytes = 0
        self.device_copied_bytes = 0
        self._grow(max(int(capacity), 1))

    def module(self, name: str) -> ModuleType:
        """The array module of field `name`."""
        return self.xp if self.fields[name].device else np

    def _index(self, name: str, slots: np.ndarray) -> Any:
        return slots if self.module(name) is np else self.xp.asarray(slots)

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        for name, f in self.fields.items():
            grown = self.module(name).zeros((capacity, *f.shape), dtype=f.dtype)  # untouched pages cost no memory
            if old:
                grown[:old] = self.arrays[name]
            self.arrays[name] = grown
        for slot in range(old, capacity):
            heapq.heappush(self._free, slot)
        self.capacity = capacity

    @property
    def in_use(self) -> int:
        return self.capacity - len(self._free)

    def acquire(self) -> int:
        """A free slot (the lowest, to keep live rows packed), its rows reset to the fields' start values."""
        with self._lock:
            if not self._free:
                self._grow(2 * self.capacity)
            slot = heapq.heappop(self._free)
        for name, f in self.fields.items():
            self.arrays[name][slot] = f.fill
        return slot

    def release(self, slot: int) -> None:
        with self._lock:
            heapq.heappush(self._free, slot)

    def row(self, name: str, slot: int) -> Any:
        """A view of one slot's row of `name` (writes go to the pool)."""
        return self.arrays[name][slot]

    def gather(self, name: str, slots: np.ndarray, length: int | None = None) -> Any:
        """Rows `slots` of `name` as one batch (first `length` entries of axis 1 when given).

        Whole rows of consecutive slots come back as a view of the pool (no copy); anything else is copied once.
        """
        with stage(STATE_COPIES):
            array = self.arrays[name]
            first = int(slots[0])
            whole = length is None or length == array.shape[1]
            if whole and np.array_equal(slots, np.arange(first, first + len(slots))):
                return array[first : first + len(slots)]
            index = self._index(name, slots)
            out = array[index] if whole else array[index, :length]
            self._count(name, out)
            return out

    def scatter(self, name: str, slots: np.ndarray, values: Any) -> None:
        """Write a batch back into rows `slots` of `name` (nothing is copied when `values` is those rows' view)."""
        with stage(STATE_COPIES):
            array = self.arrays[name]
            first = int(slots[0]) if len(slots) else 0
            if getattr(values, "base", None) is array and np.array_equal(slots, np.arange(first, first + len(slots))):
                if values.shape == array[first : first + len(slots)].shape and _same_start(values, array, first):
                    return  # written in place through a gathered view
            array[self._index(name, slots)] = values
            self._count(name, values)

    def _count(self, name: str, values: Any) -> None:
        if self.fields[name].device:
            self.device_copied_bytes += int(values.nbytes)
        else:
            self.copied_bytes += int(values.nbytes)


def _same_start(view: Any, array: Any, first: int) -> bool:
    """Whether `view` starts at row `first` of `array` (a view over those very rows)."""
    try:
        return view.__array_interface__["data"][0] == array[first:].__array_interface__["data"][0]
    except AttributeError:  # device arrays: compare their data pointers
        return bool(view.data.ptr == array[first:].data.ptr)

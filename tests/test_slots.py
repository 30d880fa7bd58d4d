"""State pools: rows are reset on acquire, reused after release, kept when the pool grows; gathers of
consecutive slots are views, others copies; a session's slots come back when it is closed or dropped."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from mtasr.pipeline import Engine, OrtRunner
from mtasr.pipeline.slots import Field, SlotPool


@pytest.fixture(scope="module")
def engine(tiny_parity):
    graphs = tiny_parity["work"] / "graphs"
    return Engine.from_folder(graphs, OrtRunner(graphs), capacity=2)


def _pool(capacity: int = 2) -> SlotPool:
    return SlotPool({"x": Field((3,), np.float32), "tok": Field((), np.int64, fill=7)}, capacity)


def test_acquire_resets_and_release_reuses_lowest_slot():
    pool = _pool()
    a, b = pool.acquire(), pool.acquire()
    assert (a, b) == (0, 1) and pool.in_use == 2
    pool.row("x", a)[:] = 5
    pool.arrays["tok"][a] = 1
    pool.release(a)
    assert pool.acquire() == a
    assert not pool.row("x", a).any() and pool.arrays["tok"][a] == 7


def test_pool_grows_keeping_rows():
    pool = _pool(capacity=1)
    a = pool.acquire()
    pool.row("x", a)[:] = 3
    b = pool.acquire()
    assert pool.capacity == 2 and b == 1
    assert (pool.row("x", a) == 3).all()


def test_gather_view_or_copy_and_scatter():
    pool = _pool(capacity=4)
    for _ in range(4):
        pool.acquire()
    pool.arrays["x"][:] = np.arange(12, dtype=np.float32).reshape(4, 3)
    view = pool.gather("x", np.array([1, 2]))
    assert np.shares_memory(view, pool.arrays["x"]) and pool.copied_bytes == 0
    copy = pool.gather("x", np.array([3, 0]))
    assert not np.shares_memory(copy, pool.arrays["x"]) and copy[0, 0] == 9 and pool.copied_bytes == 24
    assert pool.gather("x", np.array([0, 1]), length=2).shape == (2, 2)
    pool.scatter("x", np.array([3, 0]), np.zeros((2, 3), np.float32))
    assert not pool.arrays["x"][[0, 3]].any() and pool.arrays["x"][1, 0] == 3


def test_sessions_free_their_slots(engine):
    sessions = [engine.new_stream(f"s{i}") for i in range(3)]
    used = engine.diarizer.pool.in_use
    engine.push_audio(sessions[0], np.zeros(32000, np.float32), last=True)
    while sessions[0].pending:
        engine.step([sessions[0]])
    engine.close(sessions[0])
    assert engine.diarizer.pool.in_use == used - 1 and engine.asr.pool.in_use == 0
    del sessions[1]
    gc.collect()
    assert engine.diarizer.pool.in_use == used - 2

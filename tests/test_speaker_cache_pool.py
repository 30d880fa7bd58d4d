"""The served speaker-cache update (`mtasr.pipeline.diarizer_stage.update`: every session of a step at once, state in a
slot pool) equals NeMo's synchronous `streaming_update` run one session at a time (`mtasr.spkcache.sync`, itself
proven equal to NeMo in test_spkcache), bit for bit, through FIFO overflows and compressions, with sessions that
start at different steps, short last chunks, silence and tied predictions."""

from __future__ import annotations

import numpy as np
import pytest

from mtasr.pipeline.diarizer_stage import DI, SpeakerCachePool, update
from mtasr.spkcache import SpeakerCacheParams, init_streaming_state, streaming_update

EMB = 16


def _preds(rng: np.random.Generator, frames: int, n_spk: int, tied: bool) -> np.ndarray:
    p = rng.random((frames, n_spk)).astype(np.float32)
    p[rng.random(frames) < 0.3] *= np.float32(0.05)  # silent frames (the silence profile)
    if tied:  # a coarse grid: many exactly equal scores, finite ties across the compression's top-k boundaries
        p = np.round(p * 4) / 4
    return p.astype(np.float32)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("params", [
    SpeakerCacheParams(spkcache_len=188, fifo_len=188, spkcache_update_period=144),
    SpeakerCacheParams(spkcache_len=24, fifo_len=10, spkcache_update_period=6),  # pops larger than the period
], ids=["tutorial", "small"])
def test_pool_update_equals_streaming_update(params, tied, monkeypatch):
    import mtasr.pipeline.diarizer_stage as stage

    compressed_rows = []
    choice = stage.compression_choice
    monkeypatch.setattr(stage, "compression_choice", lambda p, preds: compressed_rows.append(len(preds)) or
                        choice(p, preds))
    rng = np.random.default_rng(5 + tied)
    n_sessions, steps, chunk = 6, 70, 14
    starts = [0, 0, 3, 9, 20, 41]  # sessions join at different steps
    pool = SpeakerCachePool(params, EMB, capacity=2)  # grows while sessions join
    slots = {}
    ref = {}
    for step in range(steps):
        live = [i for i in range(n_sessions) if starts[i] <= step]
        for i in live:
            if i not in slots:
                slots[i] = pool.acquire()
                ref[i] = init_streaming_state(params, 1, EMB)
        # a session's last chunk is short; one session ends early with it
        n_embs = np.array([chunk - 5 if (i == 3 and step == 50) else chunk for i in live], dtype=np.int64)
        live_slots = np.array([slots[i] for i in live], dtype=np.int64)
        cache_len = pool.arrays[DI.spkcache_lengths][live_slots].copy()
        fifo_len = pool.arrays[DI.fifo_lengths][live_slots].copy()
        total = cache_len + fifo_len + n_embs
        embs = rng.standard_normal((len(live), chunk, EMB)).astype(np.float32)
        preds = np.zeros((len(live), int(total.max()), params.n_spk), np.float32)
        for r in range(len(live)):
            preds[r, : total[r]] = _preds(rng, int(total[r]), params.n_spk, tied)
        got = update(params, pool, live_slots, cache_len, fifo_len, embs, preds, n_embs)
        for r, i in enumerate(live):
            st = ref[i]
            assert st.spkcache.shape[1] == cache_len[r] and st.fifo.shape[1] == fifo_len[r]
            ref[i], want = streaming_update(params, st, embs[r : r + 1, : n_embs[r]], preds[r : r + 1, : total[r]])
            np.testing.assert_array_equal(got[r, : n_embs[r]], want[0])
            s, new = slots[i], ref[i]
            n_cache, n_fifo = new.spkcache.shape[1], new.fifo.shape[1]
            assert pool.arrays[DI.spkcache_lengths][s] == n_cache and pool.arrays[DI.fifo_lengths][s] == n_fifo
            np.testing.assert_array_equal(pool.arrays[DI.spkcache][s, :n_cache], new.spkcache[0])
            np.testing.assert_array_equal(pool.arrays[DI.fifo][s, :n_fifo], new.fifo[0])
            np.testing.assert_array_equal(pool.arrays["mean_sil_emb"][s], new.mean_sil_emb[0])
            assert pool.arrays["n_sil_frames"][s] == new.n_sil_frames[0]
            assert bool(pool.arrays["compressed"][s]) == (new.spkcache_preds is not None)
            if new.spkcache_preds is not None:
                np.testing.assert_array_equal(pool.arrays["spkcache_preds"][s, :n_cache], new.spkcache_preds[0])
        if step == 50:  # session 3 ended with its short chunk
            pool.release(slots.pop(3))
            starts[3] = steps + 1
    # compressions happened, several sessions at once
    assert sum(compressed_rows) >= 2 * n_sessions and max(compressed_rows) > 1, compressed_rows

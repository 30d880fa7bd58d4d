"""NeMo's synchronous speaker-cache update (``init_streaming_state(async_streaming=False)``, ``streaming_update``),
the one NeMo's multitalker flow (``SpeakerTaggedASR``) runs: cache and FIFO are variable-length arrays that start
empty, the whole chunk is appended (no per-stream lengths), and the cache predictions only exist from the first
compression on, where they are taken from the *current* graph predictions of the cache frames (the asynchronous
update keeps the predictions the frames had when they left the FIFO). The two give different results.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtasr.spkcache.common import F32, SpeakerCacheParams, compress_spkcache, copy_or_none, deep_copy, silence_profile


@dataclass
class StreamingState:
    """Streaming state of NeMo's synchronous update (``async_streaming=False``) for equal-length streams.

    Cache and FIFO grow from 0 frames; ``spkcache_preds`` stays ``None`` until the first compression and
    ``fifo_preds`` until the first update, exactly like NeMo. Feed the graph ``spkcache_lengths = n_cache`` and
    ``fifo_lengths = n_fifo`` (see :meth:`lengths`).
    """

    spkcache: np.ndarray  # (B, n_cache, D) float32, n_cache in 0..spkcache_len
    spkcache_preds: np.ndarray | None  # (B, n_cache, n_spk) float32, None until the first compression
    fifo: np.ndarray  # (B, n_fifo, D) float32
    fifo_preds: np.ndarray | None  # (B, n_fifo, n_spk) float32, None until the first update
    mean_sil_emb: np.ndarray  # (B, D) float32
    n_sil_frames: np.ndarray  # (B,) int64

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """(B,) int64 ``spkcache_lengths`` and ``fifo_lengths`` to feed the diarizer graph."""
        batch_size = self.spkcache.shape[0]
        return (
            np.full((batch_size,), self.spkcache.shape[1], dtype=np.int64),
            np.full((batch_size,), self.fifo.shape[1], dtype=np.int64),
        )

    def copy(self) -> StreamingState:
        """Deep copy (all arrays copied)."""
        return deep_copy(self)


def init_streaming_state(params: SpeakerCacheParams, batch_size: int, emb_dim: int) -> StreamingState:
    """Empty state as ``init_streaming_state(async_streaming=False)`` (emb_dim = NeMo's ``fc_d_model``)."""
    return StreamingState(
        spkcache=np.zeros((batch_size, 0, emb_dim), dtype=F32),
        spkcache_preds=None,
        fifo=np.zeros((batch_size, 0, emb_dim), dtype=F32),
        fifo_preds=None,
        mean_sil_emb=np.zeros((batch_size, emb_dim), dtype=F32),
        n_sil_frames=np.zeros((batch_size,), dtype=np.int64),
    )


def streaming_update(
    params: SpeakerCacheParams,
    state: StreamingState,
    chunk_embs: np.ndarray,
    preds: np.ndarray,
    lc: int = 0,
    rc: int = 0,
) -> tuple[StreamingState, np.ndarray]:
    """One synchronous ``streaming_update`` step (eval mode); returns a new state (inputs untouched) and chunk preds.

    Args:
        params: cache parameters.
        state: previous state.
        chunk_embs: (B, lc + chunk + rc, D) pre-encoded chunk embeddings; all ``chunk`` frames are appended to
            the FIFO whatever their validity, as NeMo does.
        preds: (B, T, n_spk) graph sigmoid outputs for ``[spkcache, fifo, chunk_embs]``, masked beyond the valid
            frames with ``common.apply_mask_to_preds``. T >= n_cache + n_fifo; frames missing up to
            n_cache + n_fifo + lc + chunk (a graph that drops the chunk's invalid tail) count as masked (0), later
            ones are unused.
        lc: left-context frames at the start of the chunk; rc: right-context frames at its end.

    Returns:
        The new state and chunk predictions of shape (B, T_chunk - lc - rc, n_spk).
    """
    chunk_embs = np.asarray(chunk_embs, dtype=F32)
    preds = np.asarray(preds, dtype=F32)
    batch_size, n_in, emb_dim = chunk_embs.shape
    n_cache, n_fifo = state.spkcache.shape[1], state.fifo.shape[1]
    chunk_len = n_in - lc - rc
    chunk_start = n_cache + n_fifo + lc
    if preds.ndim != 3 or preds.shape[0] != batch_size or preds.shape[2] != params.n_spk:
        raise ValueError(f"preds shape {preds.shape} does not fit batch {batch_size} and n_spk {params.n_spk}")
    if chunk_len < 0 or preds.shape[1] < n_cache + n_fifo:
        raise ValueError(f"preds have {preds.shape[1]} frames, need {n_cache + n_fifo} + chunk (lc={lc}, rc={rc})")
    if preds.shape[1] < chunk_start + chunk_len:  # what NeMo's apply_mask_to_preds would have zeroed
        pad = np.zeros((batch_size, chunk_start + chunk_len - preds.shape[1], params.n_spk), dtype=F32)
        preds = np.concatenate([preds, pad], axis=1)

    chunk_preds = preds[:, chunk_start : chunk_start + chunk_len].copy()
    fifo = np.concatenate([state.fifo, chunk_embs[:, lc : lc + chunk_len]], axis=1)
    fifo_preds = np.concatenate([preds[:, n_cache : n_cache + n_fifo], chunk_preds], axis=1)
    spkcache, spkcache_preds = state.spkcache.copy(), copy_or_none(state.spkcache_preds)
    mean_sil_emb, n_sil_frames = state.mean_sil_emb.astype(F32), state.n_sil_frames.astype(np.int64)

    if n_fifo + chunk_len > params.fifo_len:  # FIFO overflow: move its oldest frames to the speaker cache
        pop_out_len = max(params.spkcache_update_period, chunk_len - params.fifo_len + n_fifo)
        pop_out_len = min(pop_out_len, n_fifo + chunk_len)
        pop_out_embs, pop_out_preds = fifo[:, :pop_out_len], fifo_preds[:, :pop_out_len]
        mean_sil_emb, n_sil_frames = silence_profile(params, mean_sil_emb, n_sil_frames, pop_out_embs, pop_out_preds)
        fifo, fifo_preds = fifo[:, pop_out_len:], fifo_preds[:, pop_out_len:]
        spkcache = np.concatenate([spkcache, pop_out_embs], axis=1)
        if spkcache_preds is not None:  # cache already compressed at least once
            spkcache_preds = np.concatenate([spkcache_preds, pop_out_preds], axis=1)
        if spkcache.shape[1] > params.spkcache_len:
            if spkcache_preds is None:  # first compression: the cache frames' current predictions
                spkcache_preds = np.concatenate([preds[:, :n_cache], pop_out_preds], axis=1)
            compressed = [
                compress_spkcache(params, spkcache[b], spkcache_preds[b], mean_sil_emb[b]) for b in range(batch_size)
            ]
            spkcache = np.stack([embs for embs, _ in compressed]).reshape(batch_size, -1, emb_dim)
            spkcache_preds = np.stack([p for _, p in compressed]).reshape(batch_size, -1, params.n_spk)

    new_state = StreamingState(
        spkcache=np.ascontiguousarray(spkcache),
        spkcache_preds=None if spkcache_preds is None else np.ascontiguousarray(spkcache_preds),
        fifo=np.ascontiguousarray(fifo),
        fifo_preds=np.ascontiguousarray(fifo_preds),
        mean_sil_emb=mean_sil_emb,
        n_sil_frames=n_sil_frames,
    )
    return new_state, chunk_preds


# ----------------------------------------------------------------------------------------------------------------

"""NeMo's asynchronous speaker-cache update (``init_streaming_state(async_streaming=True)``,
``streaming_update_async``): fixed-size cache and FIFO with per-stream lengths; the tutorial's standalone
diarizer (Step 1).

Only eval-mode behaviour is reproduced (no ``scores_add_rnd`` noise, no speaker permutation: the asynchronous
path never permutes, so NeMo's ``spk_perm`` stays ``None`` and is not kept here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtasr.spkcache.common import F32, SpeakerCacheParams, compress_spkcache, deep_copy, silence_profile


@dataclass
class AsyncStreamingState:
    """Streaming state of a batch of streams, as NeMo's async ``StreamingSortformerState``.

    ``fifo_preds`` is ``None`` until the first update, exactly like NeMo (it is rewritten from the fresh
    graph predictions on every update, so its previous value is never read).
    """

    spkcache: np.ndarray  # (B, spkcache_len, D) float32
    spkcache_lengths: np.ndarray  # (B,) int64
    spkcache_preds: np.ndarray  # (B, spkcache_len, n_spk) float32, zeros initially (as NeMo)
    fifo: np.ndarray  # (B, fifo_len, D) float32
    fifo_lengths: np.ndarray  # (B,) int64
    fifo_preds: np.ndarray | None  # (B, fifo_len, n_spk) float32, None initially (as NeMo)
    mean_sil_emb: np.ndarray  # (B, D) float32
    n_sil_frames: np.ndarray  # (B,) int64

    def copy(self) -> AsyncStreamingState:
        """Deep copy (all arrays copied)."""
        return deep_copy(self)


def init_streaming_state_async(params: SpeakerCacheParams, batch_size: int, emb_dim: int) -> AsyncStreamingState:
    """Zero state as ``init_streaming_state(async_streaming=True)`` (emb_dim = NeMo's ``fc_d_model``)."""
    return AsyncStreamingState(
        spkcache=np.zeros((batch_size, params.spkcache_len, emb_dim), dtype=F32),
        spkcache_lengths=np.zeros((batch_size,), dtype=np.int64),
        spkcache_preds=np.zeros((batch_size, params.spkcache_len, params.n_spk), dtype=F32),
        fifo=np.zeros((batch_size, params.fifo_len, emb_dim), dtype=F32),
        fifo_lengths=np.zeros((batch_size,), dtype=np.int64),
        fifo_preds=None,
        mean_sil_emb=np.zeros((batch_size, emb_dim), dtype=F32),
        n_sil_frames=np.zeros((batch_size,), dtype=np.int64),
    )


def streaming_update_async(
    params: SpeakerCacheParams,
    state: AsyncStreamingState,
    chunk_embs: np.ndarray,
    chunk_lengths: np.ndarray,
    preds: np.ndarray,
    lc: int = 0,
    rc: int = 0,
) -> tuple[AsyncStreamingState, np.ndarray]:
    """One ``streaming_update_async`` step; returns a new state (inputs untouched) and the chunk predictions.

    Args:
        params: cache parameters.
        state: previous state.
        chunk_embs: (B, lc + chunk + rc, D) pre-encoded chunk embeddings (after ``drop_extra_pre_encoded``).
        chunk_lengths: (B,) valid frames in ``chunk_embs`` (including the ``lc`` left-context frames).
        preds: (B, T, n_spk) graph sigmoid outputs for ``concat_and_pad([spkcache, fifo, chunk])``,
            masked with ``common.apply_mask_to_preds``.
        lc: left-context frames at the start of the chunk; rc: right-context frames at its end.

    Returns:
        The new state and chunk predictions of shape (B, T_chunk - lc - rc, n_spk).
    """
    chunk_embs = np.asarray(chunk_embs, dtype=F32)
    preds = np.asarray(preds, dtype=F32)
    chunk_lengths = np.asarray(chunk_lengths, dtype=np.int64)
    batch_size, _, emb_dim = chunk_embs.shape
    n_spk = preds.shape[2]
    if n_spk != params.n_spk:
        raise ValueError(f"preds have {n_spk} speakers, params.n_spk is {params.n_spk}")

    max_spkcache_len, max_fifo_len = state.spkcache.shape[1], state.fifo.shape[1]
    max_chunk_len = chunk_embs.shape[1] - lc - rc
    max_pop_out_len = min(max(params.spkcache_update_period, max_chunk_len), max_chunk_len + max_fifo_len)

    fresh_fifo_preds = np.zeros((batch_size, max_fifo_len, n_spk), dtype=F32)
    chunk_preds = np.zeros((batch_size, max_chunk_len, n_spk), dtype=F32)
    chunk_lens = np.clip(chunk_lengths - lc, 0, max_chunk_len)
    fifo = np.zeros((batch_size, max_fifo_len + max_chunk_len, emb_dim), dtype=F32)
    fifo_preds = np.zeros((batch_size, max_fifo_len + max_chunk_len, n_spk), dtype=F32)
    spkcache = np.zeros((batch_size, max_spkcache_len + max_pop_out_len, emb_dim), dtype=F32)
    spkcache_preds = np.zeros((batch_size, max_spkcache_len + max_pop_out_len, n_spk), dtype=F32)
    spkcache_lengths = state.spkcache_lengths.astype(np.int64, copy=True)
    fifo_lengths = state.fifo_lengths.astype(np.int64, copy=True)
    mean_sil_emb = state.mean_sil_emb.astype(F32, copy=True)
    n_sil_frames = state.n_sil_frames.astype(np.int64, copy=True)

    for b in range(batch_size):
        sc_len, f_len, c_len = int(spkcache_lengths[b]), int(fifo_lengths[b]), int(chunk_lens[b])
        # FIFO predictions are refreshed from this step's graph output; the chunk's are sliced after them.
        fresh_fifo_preds[b, :f_len] = preds[b, sc_len : sc_len + f_len]
        chunk_start = sc_len + f_len + lc
        chunk_preds[b, :c_len] = preds[b, chunk_start : chunk_start + c_len]
        spkcache[b, :sc_len] = state.spkcache[b, :sc_len]
        spkcache_preds[b, :sc_len] = state.spkcache_preds[b, :sc_len]
        fifo[b, :f_len] = state.fifo[b, :f_len]
        fifo_preds[b, :f_len] = fresh_fifo_preds[b, :f_len]

        # Append the chunk (without its left/right context) to the FIFO.
        fifo_lengths[b] += c_len
        fifo[b, f_len : f_len + c_len] = chunk_embs[b, lc : lc + c_len]
        fifo_preds[b, f_len : f_len + c_len] = chunk_preds[b, :c_len]
        if f_len + c_len <= max_fifo_len:
            continue

        # FIFO overflow: move its oldest pop_out_len frames to the speaker cache.
        pop_out_len = max(params.spkcache_update_period, max_chunk_len - max_fifo_len + f_len)
        pop_out_len = min(pop_out_len, f_len + c_len)
        spkcache_lengths[b] += pop_out_len
        pop_out_embs = fifo[b, :pop_out_len]
        pop_out_preds = fifo_preds[b, :pop_out_len]
        mean_sil_emb[b : b + 1], n_sil_frames[b : b + 1] = silence_profile(
            params, mean_sil_emb[b : b + 1], n_sil_frames[b : b + 1], pop_out_embs[None], pop_out_preds[None]
        )
        spkcache[b, sc_len : sc_len + pop_out_len] = pop_out_embs
        # NeMo's "already compressed once" test; cache preds are never negative, so it always holds in practice.
        if spkcache_preds[b, 0, 0] >= 0:
            spkcache_preds[b, sc_len : sc_len + pop_out_len] = pop_out_preds
        elif sc_len + pop_out_len > params.spkcache_len:
            spkcache_preds[b, :sc_len] = preds[b, :sc_len]
            spkcache_preds[b, sc_len : sc_len + pop_out_len] = pop_out_preds
        fifo_lengths[b] -= pop_out_len
        new_f_len = int(fifo_lengths[b])
        fifo[b, :new_f_len] = fifo[b, pop_out_len : pop_out_len + new_f_len].copy()
        fifo_preds[b, :new_f_len] = fifo_preds[b, pop_out_len : pop_out_len + new_f_len].copy()
        fifo[b, new_f_len:] = 0
        fifo_preds[b, new_f_len:] = 0

    new_spkcache = spkcache[:, : params.spkcache_len].copy()
    new_spkcache_preds = spkcache_preds[:, : params.spkcache_len].copy()
    for b in np.flatnonzero(spkcache_lengths > params.spkcache_len):
        new_spkcache[b], new_spkcache_preds[b] = compress_spkcache(
            params, spkcache[b], spkcache_preds[b], mean_sil_emb[b]
        )
        spkcache_lengths[b] = params.spkcache_len

    new_state = AsyncStreamingState(
        spkcache=new_spkcache,
        spkcache_lengths=spkcache_lengths,
        spkcache_preds=new_spkcache_preds,
        fifo=fifo[:, :max_fifo_len].copy(),
        fifo_lengths=fifo_lengths,
        fifo_preds=fifo_preds[:, :max_fifo_len].copy(),
        mean_sil_emb=mean_sil_emb,
        n_sil_frames=n_sil_frames,
    )
    return new_state, chunk_preds

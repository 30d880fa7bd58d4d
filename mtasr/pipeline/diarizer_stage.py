"""Stage 2: one diarizer step for many sessions, then their speaker-cache update (NeMo's synchronous
`streaming_update`, as `SpeakerTaggedASR` runs it), for all sessions of the step at once.

Speaker cache and FIFO live in a slot pool, one row each: the embeddings (and the silence embedding) in the pool's
array module, on the device where the diarizer graph runs; lengths and the cache's predictions on the host, where
every decision is taken. The update moves embeddings only by indexing (append, pop, the compression's choice), so
it is exact on any device; which frames to keep is decided on the host from the predictions
(`mtasr.spkcache.common.compression_choice`), with NeMo's CPU tie order. Per step and session it costs a few
indexed writes; a session whose FIFO overflows (one step in ~10) also moves its popped frames into the cache, and
a full cache is compressed (sessions of equal length together).
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from mtasr.pipeline.chunker import Chunk
from mtasr.pipeline.runner import GraphRunner, retried, run_graph
from mtasr.pipeline.slots import Field, SlotPool
from mtasr.profile import FEATURES, SPEAKER_CACHE, stage
from mtasr.spec import DiarizerInputs, DiarizerOutputs, ModelDims
from mtasr.spkcache import SpeakerCacheParams
from mtasr.spkcache.common import compressed_rows, compression_choice, silence_profile_rows
from mtasr.xp import on

F32, I64 = np.float32, np.int64
DI = DiarizerInputs.tensor_names()  # the cache and FIFO rows are the graph's inputs of those names
CACHE_PREDS, MEAN_SIL, N_SIL, COMPRESSED = "spkcache_preds", "mean_sil_emb", "n_sil_frames", "compressed"
# Rows at least this full go to the graph whole: at most a third more frames for no copy (steady state: the
# cache is full and the fullest FIFO of a batch nearly so).
WHOLE_ROWS = 0.75


class SpeakerCachePool(SlotPool):
    """Per-session speaker cache and FIFO: rows of the configured sizes with valid lengths beside them (beyond a
    row's length its contents are undefined: the graph reads only valid frames)."""

    def __init__(self, params: SpeakerCacheParams, emb_dim: int, capacity: int, xp: ModuleType = np) -> None:
        super().__init__({
            DI.spkcache: Field((params.spkcache_len, emb_dim), F32, device=True),
            CACHE_PREDS: Field((params.spkcache_len, params.n_spk), F32),
            DI.fifo: Field((params.fifo_len, emb_dim), F32, device=True),
            MEAN_SIL: Field((emb_dim,), F32, device=True),
            N_SIL: Field((), I64),
            DI.spkcache_lengths: Field((), I64),
            DI.fifo_lengths: Field((), I64),
            COMPRESSED: Field((), np.bool_),  # NeMo: spkcache_preds exist from the first compression on
        }, capacity, xp)

    def graph_rows(self, name: str, slots: np.ndarray, length: int):
        """Rows `slots` of cache or FIFO for the graph: their first `length` frames, or whole rows when that is most
        of a row (the extra frames are masked by the lengths, and consecutive slots then pass without a copy)."""
        room = self.fields[name].shape[0]
        return self.gather(name, slots, None if length >= WHOLE_ROWS * room else length)


class DiarizerStage:
    """Diarizer graph calls (one per distinct chunk length in the batch) and the speaker-cache update."""

    def __init__(self, params: SpeakerCacheParams, dims: ModelDims, runner: GraphRunner, graph: str,
                 capacity: int, xp: ModuleType = np) -> None:
        self.params = params
        self.runner = runner
        self.graph = graph
        self.pool = SpeakerCachePool(params, dims.diar_emb_dim, capacity, xp)

    def step(self, work: list[tuple[int, Chunk]], owners: list[str] | None = None,
             failed: dict[str, str] | None = None) -> list[np.ndarray | None]:
        """(diarizer slot, chunk) per session -> each session's chunk predictions (frames, n_spk), in order. When a
        group's graph call fails its sessions run one by one; a session that fails alone gets None and its reason
        in `failed` (under its `owners` entry)."""
        owners = owners or [str(slot) for slot, _ in work]
        failed = {} if failed is None else failed
        out: list[np.ndarray | None] = [None] * len(work)
        for length in sorted({chunk.length for _, chunk in work}):
            # sessions in slot order: consecutive slots with full caches are passed to the graph without a copy
            idx = sorted((i for i, (_, chunk) in enumerate(work) if chunk.length == length), key=lambda i: work[i][0])
            for part, graph in retried(idx, lambda items: self._graph([work[i] for i in items]),
                                       lambda i: owners[i], failed):
                try:
                    preds = self._update([work[i] for i in part], *graph)
                except Exception as exc:  # noqa: BLE001 - a failed update leaves these rows unknown: fail them
                    for i in part:
                        failed.setdefault(owners[i], f"{type(exc).__name__}: {exc}")
                    continue
                for i, p in zip(part, preds, strict=True):
                    out[i] = p
        return out

    def _graph(self, work: list[tuple[int, Chunk]]) -> tuple:
        """The diarizer graph on one group (no state changes)."""
        pool = self.pool
        slots = np.array([slot for slot, _ in work], dtype=I64)
        cache_len = pool.arrays[DI.spkcache_lengths][slots]
        fifo_len = pool.arrays[DI.fifo_lengths][slots]
        with stage(FEATURES):
            frames = max(chunk.features.shape[1] for _, chunk in work)
            features = pool.xp.zeros((len(work), frames, work[0][1].features.shape[0]), dtype=F32)
            for i, (_, chunk) in enumerate(work):
                features[i, : chunk.features.shape[1]] = chunk.features.T
        inputs = DiarizerInputs(
            chunk=features, chunk_lengths=np.array([chunk.length for _, chunk in work], dtype=I64),
            spkcache=pool.graph_rows(DI.spkcache, slots, int(cache_len.max())), spkcache_lengths=cache_len,
            fifo=pool.graph_rows(DI.fifo, slots, int(fifo_len.max())), fifo_lengths=fifo_len)
        return run_graph(self.runner, self.graph, inputs, DiarizerOutputs), slots, cache_len, fifo_len

    def _update(self, work: list[tuple[int, Chunk]], result: DiarizerOutputs, slots: np.ndarray,
                cache_len: np.ndarray, fifo_len: np.ndarray) -> list[np.ndarray]:
        with stage(SPEAKER_CACHE):
            n_embs = np.asarray(result.chunk_pre_encode_lengths, dtype=I64).reshape(-1)
            chunk_preds = update(self.params, self.pool, slots, cache_len, fifo_len, result.chunk_pre_encode_embs,
                                 np.asarray(result.spkcache_fifo_chunk_preds, dtype=F32), n_embs)
            return [chunk_preds[i, : n_embs[i]] for i in range(len(work))]


def _pad_frames(preds: np.ndarray, frames: int) -> np.ndarray:
    """`preds` with at least `frames` frames (missing ones are masked frames: zero)."""
    if preds.shape[1] >= frames:
        return preds
    return np.concatenate([preds, np.zeros((preds.shape[0], frames - preds.shape[1], preds.shape[2]), F32)], axis=1)


def update(params: SpeakerCacheParams, pool: SpeakerCachePool, slots: np.ndarray, cache_len: np.ndarray,
           fifo_len: np.ndarray, embs, preds: np.ndarray, n_embs: np.ndarray) -> np.ndarray:
    """NeMo's synchronous `streaming_update` (`mtasr.spkcache.sync`, lc = rc = 0) of the rows `slots` in place.

    `embs` (B, C, D) chunk embeddings (any array module), `preds` (B, T, n_spk) the graph's predictions for
    [cache, FIFO, chunk] of each row, `n_embs` (B,) valid chunk frames (all appended, as NeMo does). Returns the
    chunk predictions (B, max n_embs, n_spk), zero beyond each row's `n_embs`.
    """
    xp, a = pool.xp, pool.arrays
    batch = len(slots)
    width = int(n_embs.max()) if batch else 0
    start = cache_len + fifo_len
    preds = _pad_frames(preds, int(start.max()) + width if batch else 0)
    span = np.arange(width)
    valid = span < n_embs[:, None]
    chunk_preds = np.take_along_axis(preds, (start[:, None] + span)[:, :, None], axis=1) * valid[:, :, None]
    fifo_total = fifo_len + n_embs
    popping = fifo_total > params.fifo_len
    # The chunk joins the FIFO directly where it fits; an overflowing FIFO pops first (below).
    rows, cols = np.nonzero(valid & ~popping[:, None])
    a[DI.fifo][on(xp, slots[rows]), on(xp, fifo_len[rows] + cols)] = embs[on(xp, rows), on(xp, cols)]
    a[DI.fifo_lengths][slots[~popping]] = fifo_total[~popping]
    g = np.flatnonzero(popping)
    if g.size:
        _pop(params, pool, slots[g], cache_len[g], fifo_len[g], embs[on(xp, g)], n_embs[g], preds[g])
    return chunk_preds


def _pop(params: SpeakerCacheParams, pool: SpeakerCachePool, slots: np.ndarray, cache_len: np.ndarray,
         fifo_len: np.ndarray, embs, n_embs: np.ndarray, preds: np.ndarray) -> None:
    """FIFO overflow: the oldest frames of [FIFO, chunk] move to the speaker cache (silence profile first), the rest
    become the FIFO; a cache that outgrows its size is compressed. `preds` rows are the graph's predictions, whose
    frames [cache_len, cache_len + FIFO + chunk) are [FIFO, chunk]'s."""
    xp, a = pool.xp, pool.arrays
    total = fifo_len + n_embs
    pop = np.minimum(np.maximum(params.spkcache_update_period, n_embs - params.fifo_len + fifo_len), total)
    for n in np.unique(pop).tolist():  # the silence sum's order depends on the frame count: equal counts together
        g = np.flatnonzero(pop == n)
        s, fl = slots[g], fifo_len[g]
        pop_embs = _fifo_and_chunk(pool, s, fl, embs[on(xp, g)], np.arange(n))  # (G, n, D)
        left = total[g] - n
        keep = int(left.max())
        rest = _fifo_and_chunk(pool, s, fl, embs[on(xp, g)], n + np.arange(keep)) if keep else None
        pop_preds = np.take_along_axis(preds[g], (cache_len[g, None] + np.arange(n))[:, :, None], axis=1)
        a[MEAN_SIL][on(xp, s)], a[N_SIL][s] = silence_profile_rows(params, a[MEAN_SIL][on(xp, s)], a[N_SIL][s],
                                                                    pop_embs, pop_preds)
        if keep:
            a[DI.fifo][on(xp, s), :keep] = rest
        a[DI.fifo_lengths][s] = left
        _to_cache(params, pool, s, cache_len[g], pop_embs, pop_preds, preds[g])


def _fifo_and_chunk(pool: SpeakerCachePool, slots: np.ndarray, fifo_len: np.ndarray, embs, positions: np.ndarray):
    """Frames `positions` of each row's [FIFO (fifo_len frames), chunk embs] (G, len(positions), D)."""
    xp, fifo = pool.xp, pool.arrays[DI.fifo]
    pos = np.broadcast_to(positions, (len(slots), len(positions)))
    in_fifo = pos < fifo_len[:, None]
    from_fifo = fifo[on(xp, slots[:, None]), on(xp, np.minimum(pos, fifo.shape[1] - 1))]
    if in_fifo.all():
        return from_fifo
    rows = np.arange(len(slots))[:, None]
    from_chunk = embs[on(xp, rows), on(xp, np.clip(pos - fifo_len[:, None], 0, embs.shape[1] - 1))]
    return xp.where(on(xp, in_fifo)[:, :, None], from_fifo, from_chunk)


def _to_cache(params: SpeakerCacheParams, pool: SpeakerCachePool, slots: np.ndarray, cache_len: np.ndarray,
              pop_embs, pop_preds: np.ndarray, preds: np.ndarray) -> None:
    """Append popped frames to the cache; a cache beyond its size is compressed (rows of equal length together)."""
    xp, a = pool.xp, pool.arrays
    n = pop_preds.shape[1]
    total = cache_len + n
    compressed = a[COMPRESSED][slots]
    fits = total <= params.spkcache_len
    f = np.flatnonzero(fits)
    if f.size:
        a[DI.spkcache][on(xp, slots[f, None]), on(xp, cache_len[f, None] + np.arange(n))] = pop_embs[on(xp, f)]
        c = f[compressed[f]]  # NeMo: the cache's predictions exist from the first compression on
        a[CACHE_PREDS][slots[c, None], cache_len[c, None] + np.arange(n)] = pop_preds[c]
        a[DI.spkcache_lengths][slots[f]] = total[f]
    for m in np.unique(cache_len[~fits]).tolist():
        g = np.flatnonzero(~fits & (cache_len == m))
        s = slots[g]
        seq_embs = xp.concatenate([a[DI.spkcache][on(xp, s), :m], pop_embs[on(xp, g)]], axis=1)
        # the first compression takes the cache frames' current (graph) predictions, later ones the kept ones
        old = np.where(compressed[g][:, None, None], a[CACHE_PREDS][s, :m], preds[g, :m])
        seq_preds = np.concatenate([old, pop_preds[g]], axis=1)
        frame_idx, disabled = compression_choice(params, seq_preds)
        embs, kept = compressed_rows(seq_embs, seq_preds, a[MEAN_SIL][on(xp, s)], frame_idx, disabled)
        a[DI.spkcache][on(xp, s)] = embs
        a[CACHE_PREDS][s] = kept
        a[DI.spkcache_lengths][s] = params.spkcache_len
        a[COMPRESSED][s] = True

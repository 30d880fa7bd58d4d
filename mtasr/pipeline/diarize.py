"""Stage 2: one diarizer step for many sessions, then each session's speaker-cache update (NeMo's synchronous
`streaming_update`, as `SpeakerTaggedASR` runs it). Speaker cache and FIFO live in a slot pool, one row each."""

from __future__ import annotations

import numpy as np

from mtasr import spkcache
from mtasr.pipeline.chunker import Chunk
from mtasr.pipeline.runner import GraphRunner, run_graph
from mtasr.pipeline.slots import Field, SlotPool
from mtasr.spec import DiarizerInputs, DiarizerOutputs, ModelDims

F32, I64 = np.float32, np.int64
DI = DiarizerInputs.tensor_names()  # the cache and FIFO rows are the graph's inputs of those names


class SpeakerCachePool(SlotPool):
    """Per-session speaker cache and FIFO (fixed-size rows, valid lengths beside them; zero beyond the length)."""

    def __init__(self, params: spkcache.SpeakerCacheParams, emb_dim: int, capacity: int) -> None:
        super().__init__({
            DI.spkcache: Field((params.spkcache_len, emb_dim), F32),
            "spkcache_preds": Field((params.spkcache_len, params.n_spk), F32),
            DI.fifo: Field((params.fifo_len, emb_dim), F32),
            "mean_sil_emb": Field((emb_dim,), F32),
            "n_sil_frames": Field((), I64),
            DI.spkcache_lengths: Field((), I64),
            DI.fifo_lengths: Field((), I64),
            "compressed": Field((), np.bool_),  # NeMo: spkcache_preds exist from the first compression on
        }, capacity)

    def state(self, slot: int) -> spkcache.StreamingState:
        """The slot's state as NeMo's variable-length arrays (views of the pool, batch of one)."""
        a, n_cache, n_fifo = self.arrays, int(self.arrays[DI.spkcache_lengths][slot]), int(
            self.arrays[DI.fifo_lengths][slot])
        preds = a["spkcache_preds"][slot : slot + 1, :n_cache] if a["compressed"][slot] else None
        return spkcache.StreamingState(
            spkcache=a[DI.spkcache][slot : slot + 1, :n_cache], spkcache_preds=preds,
            fifo=a[DI.fifo][slot : slot + 1, :n_fifo], fifo_preds=None,  # recomputed from the graph every step
            mean_sil_emb=a["mean_sil_emb"][slot : slot + 1], n_sil_frames=a["n_sil_frames"][slot : slot + 1])

    def store(self, slot: int, state: spkcache.StreamingState) -> None:
        """Write an updated state back into the slot's rows (tails beyond the new lengths zeroed)."""
        a = self.arrays
        for name, length_name, value in ((DI.spkcache, DI.spkcache_lengths, state.spkcache[0]),
                                          (DI.fifo, DI.fifo_lengths, state.fifo[0])):
            n, old = value.shape[0], int(a[length_name][slot])
            a[name][slot, :n] = value
            a[name][slot, n:old] = 0
            a[length_name][slot] = n
            self.copied_bytes += int(value.nbytes)
        if state.spkcache_preds is not None:
            a["spkcache_preds"][slot, : state.spkcache_preds.shape[1]] = state.spkcache_preds[0]
            a["compressed"][slot] = True
        a["mean_sil_emb"][slot] = state.mean_sil_emb[0]
        a["n_sil_frames"][slot] = state.n_sil_frames[0]


class DiarizerStage:
    """Diarizer graph calls (one per distinct chunk length in the batch) and the speaker-cache update."""

    def __init__(self, params: spkcache.SpeakerCacheParams, dims: ModelDims, runner: GraphRunner, graph: str,
                 capacity: int) -> None:
        self.params = params
        self.runner = runner
        self.graph = graph
        self.pool = SpeakerCachePool(params, dims.diar_emb_dim, capacity)

    def step(self, work: list[tuple[int, Chunk]]) -> list[np.ndarray]:
        """(diarizer slot, chunk) per session -> each session's chunk predictions (frames, n_spk), in order."""
        out: list[np.ndarray | None] = [None] * len(work)
        for length in sorted({chunk.length for _, chunk in work}):
            # sessions in slot order: consecutive slots with full caches are passed to the graph without a copy
            idx = sorted((i for i, (_, chunk) in enumerate(work) if chunk.length == length), key=lambda i: work[i][0])
            for i, preds in zip(idx, self._step_group([work[i] for i in idx]), strict=True):
                out[i] = preds
        return out  # type: ignore[return-value]

    def _step_group(self, work: list[tuple[int, Chunk]]) -> list[np.ndarray]:
        slots = np.array([slot for slot, _ in work], dtype=np.int64)
        cache_len = self.pool.arrays[DI.spkcache_lengths][slots].copy()
        fifo_len = self.pool.arrays[DI.fifo_lengths][slots].copy()
        frames = max(chunk.features.shape[1] for _, chunk in work)
        features = np.zeros((len(work), frames, work[0][1].features.shape[0]), dtype=F32)
        for i, (_, chunk) in enumerate(work):
            features[i, : chunk.features.shape[1]] = chunk.features.T
        inputs = DiarizerInputs(
            chunk=features, chunk_lengths=np.array([chunk.length for _, chunk in work], dtype=I64),
            spkcache=self.pool.gather(DI.spkcache, slots, int(cache_len.max())), spkcache_lengths=cache_len,
            fifo=self.pool.gather(DI.fifo, slots, int(fifo_len.max())), fifo_lengths=fifo_len)
        result = run_graph(self.runner, self.graph, inputs, DiarizerOutputs)
        chunk_preds = []
        for i, slot in enumerate(slots.tolist()):
            n_embs = int(result.chunk_pre_encode_lengths[i])
            total = int(cache_len[i] + fifo_len[i]) + n_embs
            state, preds = spkcache.streaming_update(
                self.params, self.pool.state(slot), result.chunk_pre_encode_embs[i : i + 1, :n_embs],
                result.spkcache_fifo_chunk_preds[i : i + 1, :total])
            self.pool.store(slot, state)
            chunk_preds.append(preds[0])
        return chunk_preds

"""Streaming diarization for many streams: one diarizer graph call and one asynchronous speaker-cache update
(`streaming_update_async`, the tutorial's Step 1) per group of streams whose chunks have the same shape, state
in a slot pool. Streams look like the multitalker pipeline's to `SequenceManager` (same identity, ownership,
admission and expiry rules); their live segments are speaker turns, where a multitalker stream's are
utterances (both are `mtasr.pipeline.live_segments.LiveSegments`).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mtasr import spkcache
from mtasr.diarization.chunker import DiarChunk, DiarChunker
from mtasr.diarization.presets import DEFAULT_PRESET, DiarizationPreset, preset
from mtasr.diarization.turns import PostProcessing, TurnTracker
from mtasr.features import FeatureParams
from mtasr.manifest import Manifest
from mtasr.pipeline.chunker import queue_audio
from mtasr.pipeline.engine import StepOutput
from mtasr.pipeline.runner import GraphRunner, run_graph
from mtasr.pipeline.slots import Field, SlotPool
from mtasr.spec import FRAME_SEC, SAMPLE_RATE, SUBSAMPLING, TIMINGS, DiarizerInputs, DiarizerOutputs, ModelDims

F32, I64 = np.float32, np.int64


@dataclass(frozen=True)
class DiarizationConfig:
    """What a diarization stream needs besides the graph: the model's cache parameters with a latency preset."""

    dims: ModelDims
    spkcache: spkcache.SpeakerCacheParams
    preset: DiarizationPreset
    graph: str  # the standalone diarizer graph (no frames dropped after pre-encode)
    post: PostProcessing = field(default_factory=PostProcessing)

    @property
    def n_spk(self) -> int:
        return self.dims.n_spk

    @classmethod
    def from_manifest(cls, manifest: Manifest, preset_name: str = DEFAULT_PRESET, **options) -> DiarizationConfig:
        p = preset(preset_name)
        params = spkcache.SpeakerCacheParams.from_config({**manifest.diarizer.spkcache, **p.to_dict()})
        return cls(dims=manifest.dims, spkcache=params, preset=p, graph=manifest.diarizer.standalone_graph, **options)

    @classmethod
    def from_folder(cls, folder: str | Path, **kwargs) -> DiarizationConfig:
        return cls.from_manifest(Manifest.load(folder), **kwargs)


class AsyncCachePool(SlotPool):
    """Per-stream speaker cache and FIFO of the asynchronous update: fixed-size rows with lengths (NeMo's layout)."""

    def __init__(self, params: spkcache.SpeakerCacheParams, emb_dim: int, capacity: int) -> None:
        super().__init__({
            "spkcache": Field((params.spkcache_len, emb_dim), F32),
            "spkcache_lengths": Field((), I64),
            "spkcache_preds": Field((params.spkcache_len, params.n_spk), F32),
            "fifo": Field((params.fifo_len, emb_dim), F32),
            "fifo_lengths": Field((), I64),
            "fifo_preds": Field((params.fifo_len, params.n_spk), F32),  # rewritten every update, never read
            "mean_sil_emb": Field((emb_dim,), F32),
            "n_sil_frames": Field((), I64),
        }, capacity)

    def state(self, slots: np.ndarray) -> spkcache.AsyncStreamingState:
        return spkcache.AsyncStreamingState(**{name: self.gather(name, slots) for name in self.fields})

    def store(self, slots: np.ndarray, state: spkcache.AsyncStreamingState) -> None:
        for name in self.fields:
            self.scatter(name, slots, getattr(state, name))


@dataclass
class DiarStream:
    """One diarization stream (the attributes `SequenceManager` reads are those of `mtasr.pipeline.Stream`)."""

    session_id: str
    chunker: DiarChunker
    slot: int
    segments: TurnTracker  # speaker turns: final ones drained per reply, open ones as interim, all at the end
    timing: str = TIMINGS[0]
    speakers: dict[int, bool] = field(default_factory=dict)  # speakers seen active (for the occupancy gauge)
    pending: list[DiarChunk] = field(default_factory=list)
    keep_activity: bool = False  # keep every step's predictions (tools comparing with NeMo's total_preds)
    max_speakers: int = 0  # report only speakers 0..max_speakers-1 (0: all)
    activity: list[np.ndarray] = field(default_factory=list)  # every step's chunk predictions, when kept
    samples: int = 0
    closer: weakref.finalize | None = field(default=None, repr=False)

    @property
    def audio_seconds(self) -> float:
        return self.samples / SAMPLE_RATE

    def total_preds(self) -> np.ndarray:
        """NeMo's `total_preds` of this stream so far (frames, n_spk)."""
        n_spk = self.segments.n_spk
        return np.concatenate(self.activity) if self.activity else np.zeros((0, n_spk), F32)


class DiarizationEngine:
    """Batched streaming diarization over a slot pool sized for `capacity` streams (grows if needed)."""

    def __init__(self, config: DiarizationConfig, features: FeatureParams, runner: GraphRunner,
                 capacity: int = 8) -> None:
        self.cfg = config
        self.features = features
        self.runner = runner
        self.pool = AsyncCachePool(config.spkcache, config.dims.diar_emb_dim, capacity)

    @property
    def step_seconds(self) -> float:
        """The audio one step covers (its chunk): the real-time budget admission measures steps against."""
        return self.cfg.preset.chunk_len * FRAME_SEC

    def new_stream(self, session_id: str, timing: str = TIMINGS[0], keep_activity: bool = False,
                   max_speakers: int = 0) -> DiarStream:
        """A fresh stream; turns are in audio time whatever `timing` says (NeMo's ASR arithmetic has no meaning
        for a diarizer). `keep_activity`: keep every step's predictions (`total_preds`; served streams do not).
        `max_speakers` (>= 1): only the diarizer's first speakers are reported (activity and turns; 0: all)."""
        if not 0 <= max_speakers <= self.cfg.n_spk:
            raise ValueError(f"max_speakers must be in [0, {self.cfg.n_spk}] (0: no cap), got {max_speakers}")
        stream = DiarStream(session_id, DiarChunker(self.features, self.cfg.preset), self.pool.acquire(),
                            TurnTracker(self.cfg.n_spk, self.cfg.post, session_id), keep_activity=keep_activity,
                            max_speakers=max_speakers)
        stream.closer = weakref.finalize(stream, self.pool.release, stream.slot)
        return stream

    def close(self, stream: DiarStream) -> None:
        if stream.closer is not None:
            stream.closer()

    def push_audio(self, stream: DiarStream, samples: np.ndarray, last: bool = False) -> None:
        queue_audio(stream, samples, last)

    def step(self, streams: list[DiarStream]) -> list[StepOutput]:
        """The oldest pending chunk of each stream; one graph call + cache update per chunk shape."""
        work = [(s, s.pending.pop(0)) for s in streams if s.pending]
        groups: dict[tuple, list[tuple[DiarStream, DiarChunk]]] = {}
        for s, chunk in sorted(work, key=lambda w: w[0].slot):  # slot order: consecutive slots need no gather copy
            groups.setdefault(chunk.key, []).append((s, chunk))
        preds: dict[str, np.ndarray] = {}
        for group in groups.values():
            for (s, _), p in zip(group, self._step_group(group), strict=True):
                preds[s.session_id] = p
        outputs = []
        for s, _ in work:
            p = preds[s.session_id]
            if s.max_speakers:  # speakers beyond the stream's cap are not reported
                p = p.copy()
                p[:, s.max_speakers :] = 0.0
            if s.keep_activity:
                s.activity.append(p)
            s.speakers.update({int(k): True for k in np.flatnonzero(p.max(axis=0, initial=0.0) > 0.5)})
            s.segments.update(p)
            outputs.append(StepOutput(s.session_id, p, sorted(s.speakers)))
        return outputs

    def finish(self, stream: DiarStream) -> None:
        """After the last step of an ended stream: every turn is final."""
        stream.segments.update(np.zeros((0, self.cfg.n_spk), F32), last=True)

    def _step_group(self, group: list[tuple[DiarStream, DiarChunk]]) -> list[np.ndarray]:
        slots = np.array([s.slot for s, _ in group], dtype=I64)
        first = group[0][1]
        state = self.pool.state(slots)
        inputs = DiarizerInputs(
            chunk=np.stack([c.features for _, c in group]), chunk_lengths=np.array([c.length for _, c in group], I64),
            spkcache=state.spkcache, spkcache_lengths=state.spkcache_lengths, fifo=state.fifo,
            fifo_lengths=state.fifo_lengths)
        out = run_graph(self.runner, self.cfg.graph, inputs, DiarizerOutputs)
        lc, rc = round(first.left / SUBSAMPLING), math.ceil(first.right / SUBSAMPLING)
        new, chunk_preds = spkcache.streaming_update_async(
            self.cfg.spkcache, replace(state, fifo_preds=None), out.chunk_pre_encode_embs,
            out.chunk_pre_encode_lengths, out.spkcache_fifo_chunk_preds, lc=lc, rc=rc)
        self.pool.store(slots, new)
        return list(chunk_preds)



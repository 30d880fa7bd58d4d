"""One streaming step for many streams at once, NeMo's `SpeakerTaggedASR.perform_parallel_streaming_stt_spk`
(parallel mode, cache gating, `pad_and_drop_preencoded=True`) over stateless graphs. A chunk of audio flows:

1. `chunker`        audio -> log-mel `Chunk`s (per stream)
2. `diarizer_stage` diarizer step for all streams + speaker-cache update -> chunk speaker probabilities
3. `targets`        cache-gating window -> active speakers and their speaker targets
4. `transcribe`     ONE encoder call over every active speaker of every stream, then batched greedy RNNT
5. transcript       NeMo's segments (`transcript`) or audio-time words and utterances (`words`)

The engine owns the state pools (speaker cache per stream, encoder caches + decoder state per speaker
instance); a `Stream` holds its slots and its transcript. Slots are freed by `close` or when the stream is
garbage collected.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from mtasr import greedy
from mtasr.features import FeatureParams
from mtasr.manifest import Manifest
from mtasr.pipeline.chunker import Chunk, FeatureChunker, compute_features, queue_audio
from mtasr.pipeline.config import PipelineConfig
from mtasr.pipeline.diarizer_stage import DiarizerStage
from mtasr.pipeline.runner import GraphRunner
from mtasr.pipeline.targets import active_speakers, speaker_targets, update_window
from mtasr.pipeline.transcribe import AsrRow, SpeakerInstance, TranscribeStage
from mtasr.pipeline.transcript import Transcript
from mtasr.pipeline.words import LiveTranscript
from mtasr.profile import FEATURES, TARGETS, WORDS, stage
from mtasr.rnnt import ArrayRnnt, RnntMath, RnntWeights
from mtasr.spec import SAMPLE_RATE, TIMINGS


@dataclass
class _Slots:
    """The pool rows a stream holds (kept apart from the stream so its finaliser does not keep it alive)."""

    diarizer: int
    speakers: list[int] = field(default_factory=list)


@dataclass
class Stream:
    """One stream: its chunker, pool slots, cache-gating window and transcript; dropped as a whole at the end."""

    session_id: str  # the `session_id` its SegLST segments carry
    chunker: FeatureChunker
    slots: _Slots
    window: np.ndarray  # (frames, n_spk) latest diarizer probabilities (the cache-gating window)
    transcript: Transcript  # NeMo's arithmetic, kept when timing is "nemo"
    segments: LiveTranscript  # audio-time utterances (final ones sent once, interim tails), timing "audio"
    timing: str = TIMINGS[0]
    keep_hypotheses: bool = False  # else the tokens already in final segments are dropped
    max_speakers: int = 0  # speaker instances the stream may run (speakers 0..max_speakers-1); 0: no cap
    speakers: dict[int, SpeakerInstance] = field(default_factory=dict)
    offset: float = 0.0  # start time of the next chunk as NeMo counts it
    steps: int = 0
    pending: list[Chunk] = field(default_factory=list)  # chunks cut but not yet processed
    samples: int = 0  # audio received
    closer: weakref.finalize | None = field(default=None, repr=False)  # frees the slots once

    @property
    def audio_seconds(self) -> float:
        return self.samples / SAMPLE_RATE


@dataclass
class StepOutput:
    """What one step produced for one stream; `error` set: its processing failed this step (the stream's state
    is unreliable now: end it), the other streams of the step went on."""

    session_id: str
    activity: np.ndarray  # (frames, n_spk) diarizer probabilities of this step's frames
    active_speakers: list[int]
    error: str | None = None


def _failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Engine:
    """The served pipeline: stages over state pools sized for `capacity` streams (they grow if needed)."""

    def __init__(self, config: PipelineConfig, features: FeatureParams, runner: GraphRunner, rnnt: RnntMath,
                 capacity: int = 8) -> None:
        self.cfg = config
        self.features = features
        self.params = config.spkcache
        self.diarizer = DiarizerStage(self.params, config.dims, runner, config.graphs["diarizer"], capacity, rnnt.xp)
        self.asr = TranscribeStage(config, config.dims, runner, rnnt, capacity * self.params.n_spk)
        self.xp = rnnt.xp  # the array module of device-side state and arithmetic

    @classmethod
    def from_folder(cls, folder: str | Path, runner: GraphRunner, config: PipelineConfig | None = None,
                    capacity: int = 8, xp: ModuleType = np, **config_options) -> Engine:
        """The engine of an exported folder (or a repository's orchestrator version folder): its pipeline config
        (`config`, or `PipelineConfig.from_manifest` with `config_options`), feature parameters and RNNT decoder
        weights; the decoder's arithmetic and the device-side state in array module `xp`."""
        manifest = Manifest.load(folder)
        config = config or PipelineConfig.from_manifest(manifest, **config_options)
        weights = RnntWeights.load(Path(folder) / manifest.features.rnnt_weights)
        return cls(config, FeatureParams.load(Path(folder) / manifest.features.asr), runner, ArrayRnnt(weights, xp),
                   capacity)

    # ------------------------------------------------------------------------------------------ streams
    def new_stream(self, session_id: str, timing: str = TIMINGS[0], keep_hypotheses: bool = False,
                   max_speakers: int = 0) -> Stream:
        """A fresh stream; `timing` picks the transcript it keeps ("audio" or NeMo's "nemo" arithmetic). A served
        stream keeps only the part of each speaker's hypothesis not yet in final segments; `keep_hypotheses`
        keeps all of it (tools that compare whole hypotheses). `max_speakers` (>= 1) lets only the diarizer's first
        speakers run an ASR instance (0: all of them, NeMo's behaviour)."""
        if timing not in TIMINGS:
            raise ValueError(f"unknown timing {timing!r}; use one of {TIMINGS}")
        if not 0 <= max_speakers <= self.cfg.n_spk:
            raise ValueError(f"max_speakers must be in [0, {self.cfg.n_spk}] (0: no cap), got {max_speakers}")
        slots = _Slots(self.diarizer.pool.acquire())
        stream = Stream(
            session_id=session_id,
            chunker=FeatureChunker(self.features, self.cfg.geometry, self.xp),
            slots=slots,
            window=np.zeros((0, self.params.n_spk), dtype=np.float32),
            transcript=Transcript(self.cfg.frame_len_sec, self.cfg.sent_break_sec),
            segments=LiveTranscript(self.cfg.vocabulary, self.cfg.frame_len_sec, self.cfg.nframes_per_chunk,
                                    self.cfg.pause_sec),
            timing=timing,
            keep_hypotheses=keep_hypotheses,
            max_speakers=max_speakers,
        )
        stream.closer = weakref.finalize(stream, self._release, slots)
        return stream

    def close(self, stream: Stream) -> None:
        """Free the stream's pool rows now (also done when it is garbage collected)."""
        if stream.closer is not None:
            stream.closer()

    def _release(self, slots: _Slots) -> None:
        self.diarizer.pool.release(slots.diarizer)
        for slot in slots.speakers:
            self.asr.pool.release(slot)
        slots.speakers.clear()

    def _speaker(self, stream: Stream, spk: int) -> SpeakerInstance:
        if spk not in stream.speakers:
            stream.speakers[spk] = instance = self.asr.new_instance()
            stream.slots.speakers.append(instance.slot)
        return stream.speakers[spk]

    def push_audio(self, stream: Stream, samples: np.ndarray, last: bool = False) -> None:
        """Stage 1: buffer audio; complete chunks queue up in `stream.pending`."""
        with stage(FEATURES):
            queue_audio(stream, samples, last)

    # ------------------------------------------------------------------------------------------- a step
    def step(self, streams: list[Stream]) -> list[StepOutput]:
        """Process the oldest pending chunk of each stream (all in one batched pass).

        A failure stays with its stream: a graph call that fails for a group is retried row by row, an exception
        in one stream's own processing (targets, words) ends only that stream's step; either way that stream's
        output carries the `error` and the others go on."""
        work = [(s, s.pending.pop(0)) for s in streams if s.pending]
        if not work:
            return []
        failed: dict[str, str] = {}
        with stage(FEATURES):
            compute_features(self.features, [s.chunker for s, chunk in work if chunk.features is None], self.xp)
        chunk_preds = self.diarizer.step([(s.slots.diarizer, chunk) for s, chunk in work],
                                         owners=[s.session_id for s, _ in work], failed=failed)
        outputs, rows = [], []
        with stage(TARGETS):
            for (stream, chunk), preds in zip(work, chunk_preds, strict=True):
                if stream.session_id in failed:
                    continue
                try:
                    stream_rows, active = self._targets(stream, chunk, preds)
                    rows.extend(stream_rows)
                    outputs.append(StepOutput(stream.session_id, preds, active))
                except Exception as exc:  # noqa: BLE001 - one stream's fault must not end its batch-mates'
                    failed[stream.session_id] = _failure(exc)
        if rows:
            self.asr.step(rows, failed)
        with stage(WORDS):
            for stream, _ in work:
                if stream.session_id in failed:
                    continue
                try:
                    self._transcript(stream)
                except Exception as exc:  # noqa: BLE001 - as above
                    failed[stream.session_id] = _failure(exc)
        done = [out for out in outputs if out.session_id not in failed]
        empty = np.zeros((0, self.cfg.n_spk), dtype=np.float32)
        return done + [StepOutput(sid, empty, [], error) for sid, error in failed.items()]

    def _active(self, stream: Stream) -> list[int]:
        active = active_speakers(self.cfg, stream.window)
        return [s for s in active if s < stream.max_speakers] if stream.max_speakers else active

    def _targets(self, stream: Stream, chunk: Chunk, preds: np.ndarray) -> tuple[list[AsrRow], list[int]]:
        """Stage 3 for one stream: its gating window, active speakers and their encoder rows."""
        stream.window = update_window(self.cfg, stream.window, preds)
        active = self._active(stream)
        rows = []
        for t in speaker_targets(self.cfg, stream.window, active):
            for j in range(t.speaker + 1):  # NeMo adds every speaker index up to the new one
                self._speaker(stream, j)
            rows.append(AsrRow(stream.speakers[t.speaker], chunk, t, stream.steps, stream.session_id))
        return rows, active

    def _transcript(self, stream: Stream) -> None:
        stream.steps += 1
        if stream.timing == "audio":
            self._update_words(stream)
        elif self._active(stream):  # NeMo returns before updating transcripts and offset when nobody is active
            hyps = {spk: (greedy.tokens_to_text(inst.tokens, self.cfg.vocabulary), inst.frame_indices)
                    for spk, inst in sorted(stream.speakers.items()) if inst.started}
            stream.transcript.update(hyps, stream.offset)
            stream.offset += self.cfg.nframes_per_chunk * self.cfg.frame_len_sec

    def finish(self, stream: Stream) -> None:
        """After the last step of an ended stream: every utterance becomes final (NeMo's transcript has no
        such step)."""
        if stream.timing == "audio":
            with stage(WORDS):
                self._update_words(stream, last=True)

    def _update_words(self, stream: Stream, last: bool = False) -> None:
        decoded = min(stream.steps * self.cfg.nframes_per_chunk * self.cfg.frame_len_sec, stream.audio_seconds)
        hyps = {spk: (inst.tokens, inst.frame_indices, inst.runs)
                for spk, inst in stream.speakers.items() if inst.started}
        stream.segments.update(hyps, decoded, stream.audio_seconds, stream.session_id, last=last)
        if not stream.keep_hypotheses:
            for spk in hyps:  # the hypothesis before the open utterance is in final segments: keep only the rest
                stream.speakers[spk].drop_tokens(stream.segments.release(spk))

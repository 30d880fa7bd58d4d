"""Stages 4 and 5: ONE encoder call over every active speaker instance of every session, then batched greedy
RNNT decoding (`mtasr.rnnt`). Encoder caches and decoder state live in a slot pool, one row per speaker instance:
the encoder caches and the LSTM state in the pool's array module (on the device where the graphs run there), the
last label and the decoded-frame count on the host."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from mtasr.masking import mask_features
from mtasr.pipeline.chunker import Chunk
from mtasr.pipeline.config import PipelineConfig
from mtasr.pipeline.runner import GraphRunner, retried, run_graph
from mtasr.pipeline.slots import Field, SlotPool
from mtasr.pipeline.targets import SpeakerTargets, encoder_targets
from mtasr.profile import FEATURES, TARGETS, stage
from mtasr.rnnt import DecoderState, RnntMath, greedy_decode
from mtasr.spec import (
    NEXT_SUFFIX,
    EncoderInputs,
    EncoderOutputs,
    ModelDims,
    carried_state,
)

ENCODER_STATE = carried_state(EncoderInputs, EncoderOutputs)
DECODER_STATE = ("last_token", "h", "c", "frames")  # the fields of mtasr.rnnt.DecoderState
DEVICE_STATE = {"h", "c", *ENCODER_STATE} - {"cache_last_channel_len"}  # what only the graphs and the decoder read


@dataclass
class SpeakerInstance:
    """One speaker's ASR instance in a session: its pool slot and its hypothesis so far."""

    slot: int
    tokens: list[int] = field(default_factory=list)
    frame_indices: list[int] = field(default_factory=list)
    started: bool = False  # has run once (NeMo: its hypothesis is no longer None)
    runs: list[tuple[int, int]] = field(default_factory=list)  # (session step, frames decoded before it)

    def drop_tokens(self, count: int) -> None:
        """Forget the first `count` tokens (already in final segments) and the runs no kept token needs (the last
        run stays: later tokens map through it or newer ones). Audio timing only: NeMo's timing mode rebuilds its
        text from the whole hypothesis every step."""
        if count <= 0:
            return
        del self.tokens[:count]
        del self.frame_indices[:count]
        first = self.frame_indices[0] if self.frame_indices else None
        keep = len(self.runs) - 1
        if first is not None:
            keep = bisect.bisect_right([before for _, before in self.runs], first) - 1
        del self.runs[: max(keep, 0)]


@dataclass(frozen=True)
class AsrRow:
    """One row of this step's encoder batch."""

    instance: SpeakerInstance
    chunk: Chunk
    targets: SpeakerTargets
    step: int  # the session's step index
    owner: str = ""  # the session's id (whose step fails if this row's does)


class SpeakerPool(SlotPool):
    """Encoder caches and greedy-decoder state of every speaker instance of every session."""

    def __init__(self, dims: ModelDims, blank_id: int, capacity: int, xp: ModuleType = np) -> None:
        specs = {t.name: t for t in EncoderInputs.specs(dims)}
        encoder = {name: Field(specs[name].shape[1:], specs[name].dtype, device=name in DEVICE_STATE)
                   for name in ENCODER_STATE}
        lstm = (dims.pred_layers, dims.pred_hidden)
        decoder = dict(zip(DECODER_STATE, (Field((), np.int64, blank_id), Field(lstm, np.float32, device=True),
                                           Field(lstm, np.float32, device=True), Field((), np.int64)), strict=True))
        super().__init__({**encoder, **decoder}, capacity, xp)


class TranscribeStage:
    """Batched encoder + greedy decoding over speaker instances held in a `SpeakerPool`."""

    def __init__(self, cfg: PipelineConfig, dims: ModelDims, runner: GraphRunner, rnnt: RnntMath,
                 capacity: int) -> None:
        self.cfg = cfg
        self.runner = runner
        self.rnnt = rnnt
        self.pool = SpeakerPool(dims, cfg.blank_id, capacity, rnnt.xp)

    def new_instance(self) -> SpeakerInstance:
        return SpeakerInstance(self.pool.acquire())

    def step(self, rows: list[AsrRow], failed: dict[str, str] | None = None) -> None:
        """Run every row; one encoder call per distinct chunk length (only a stream's last chunk is short). When a
        group's encoder call fails its rows run one by one; a row that fails alone fails its session (`failed`:
        session id -> reason; a session already there is skipped)."""
        failed = {} if failed is None else failed
        for length in sorted({r.chunk.length for r in rows}):
            # rows in slot order: when the active slots form a run, the pool's rows are the batch (no gather copy)
            group = sorted((r for r in rows if r.chunk.length == length and r.owner not in failed),
                           key=lambda r: r.instance.slot)
            for part in retried(group, self._encode, lambda r: r.owner, failed):
                rows_, out = part
                try:
                    self._decode(rows_, out)
                except Exception as exc:  # noqa: BLE001 - state after a failed decode is unknown: fail those rows
                    for r in rows_:
                        failed.setdefault(r.owner, f"{type(exc).__name__}: {exc}")

    def _encode(self, rows: list[AsrRow]) -> EncoderOutputs:
        cfg, pool = self.cfg, self.pool
        slots = np.array([r.instance.slot for r in rows], dtype=np.int64)
        with stage(FEATURES):
            frames = max(r.chunk.features.shape[1] for r in rows)
            signal = pool.xp.zeros((len(rows), rows[0].chunk.features.shape[0], frames), dtype=np.float32)
            for i, r in enumerate(rows):
                f = r.chunk.features[None]
                f = mask_features(f, r.targets.targets[None]) if cfg.masked_asr else f
                signal[i, :, : f.shape[2]] = f[0]
        lengths = np.array([r.chunk.length for r in rows], dtype=np.int64)
        with stage(TARGETS):
            spk, bg = encoder_targets(cfg, [r.targets for r in rows],
                                      int(cfg.geometry.encoder_frames(lengths).max()))
        inputs = EncoderInputs(audio_signal=signal, length=lengths, spk_targets=spk, bg_spk_targets=bg,
                               **{name: pool.gather(name, slots) for name in ENCODER_STATE})
        return run_graph(self.runner, cfg.graphs["encoder"], inputs, EncoderOutputs)

    def _decode(self, rows: list[AsrRow], out: EncoderOutputs) -> None:
        """The encoder's new caches into the pool, then greedy decoding of its output."""
        cfg, pool = self.cfg, self.pool
        slots = np.array([r.instance.slot for r in rows], dtype=np.int64)
        decoded_before = pool.arrays["frames"][slots]
        for r, before in zip(rows, decoded_before.tolist(), strict=True):
            r.instance.runs.append((r.step, int(before)))
        for name in ENCODER_STATE:
            pool.scatter(name, slots, getattr(out, name + NEXT_SUFFIX))
        state = DecoderState(**{name: pool.gather(name, slots) for name in DECODER_STATE})
        emitted = greedy_decode(self.rnnt, out.encoded, out.encoded_len, state, cfg.blank_id, cfg.max_symbols,
                                window=cfg.decoder_window)
        for name in DECODER_STATE:
            pool.scatter(name, slots, getattr(state, name))
        for r, (tokens, frames) in zip(rows, emitted.per_row(len(rows)), strict=True):
            r.instance.tokens.extend(tokens)
            r.instance.frame_indices.extend(frames)
            r.instance.started = True


"""Stages 4 and 5: ONE encoder call over every active speaker instance of every session, then batched greedy
RNNT decoding. Encoder caches and decoder state live in a slot pool, one row per speaker instance."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mtasr import greedy
from mtasr.masking import mask_features
from mtasr.pipeline.chunker import Chunk
from mtasr.pipeline.config import PipelineConfig
from mtasr.pipeline.runner import GraphRunner, run_graph
from mtasr.pipeline.slots import Field, SlotPool
from mtasr.pipeline.targets import SpeakerTargets, encoder_targets
from mtasr.spec import (
    NEXT_SUFFIX,
    DecoderJointInputs,
    DecoderJointOutputs,
    EncoderInputs,
    EncoderOutputs,
    ModelDims,
    carried_state,
)

ENCODER_STATE = carried_state(EncoderInputs, EncoderOutputs)
DECODER_STATE = ("last_token", "h", "c", "frames")  # the array fields of greedy.DecoderState


@dataclass
class SpeakerInstance:
    """One speaker's ASR instance in a session: its pool slot and its hypothesis so far."""

    slot: int
    tokens: list[int] = field(default_factory=list)
    frame_indices: list[int] = field(default_factory=list)
    started: bool = False  # has run once (NeMo: its hypothesis is no longer None)
    runs: list[tuple[int, int]] = field(default_factory=list)  # (session step, frames decoded before it)


@dataclass(frozen=True)
class AsrRow:
    """One row of this step's encoder batch."""

    instance: SpeakerInstance
    chunk: Chunk
    targets: SpeakerTargets
    step: int  # the session's step index


class SpeakerPool(SlotPool):
    """Encoder caches and greedy-decoder state of every speaker instance of every session."""

    def __init__(self, dims: ModelDims, blank_id: int, capacity: int) -> None:
        specs = {t.name: t for t in EncoderInputs.specs(dims)}
        encoder = {name: Field(specs[name].shape[1:], specs[name].dtype)
                   for name in ENCODER_STATE}
        lstm = (dims.pred_layers, dims.pred_hidden)
        decoder = dict(zip(DECODER_STATE, (Field((), np.int64, blank_id), Field(lstm, np.float32),
                                           Field(lstm, np.float32), Field((), np.int64)), strict=True))
        super().__init__({**encoder, **decoder}, capacity)


class TranscribeStage:
    """Batched encoder + greedy decoding over speaker instances held in a `SpeakerPool`."""

    def __init__(self, cfg: PipelineConfig, dims: ModelDims, runner: GraphRunner, capacity: int) -> None:
        self.cfg = cfg
        self.runner = runner
        self.pool = SpeakerPool(dims, cfg.blank_id, capacity)

    def new_instance(self) -> SpeakerInstance:
        return SpeakerInstance(self.pool.acquire())

    def step(self, rows: list[AsrRow]) -> None:
        """Run every row; one encoder call per distinct chunk length (only a stream's last chunk is short)."""
        for length in sorted({r.chunk.length for r in rows}):
            # rows in slot order: when the active slots form a run, the pool's rows are the batch (no gather copy)
            self._step_group(sorted((r for r in rows if r.chunk.length == length), key=lambda r: r.instance.slot))

    def _step_group(self, rows: list[AsrRow]) -> None:
        cfg, pool = self.cfg, self.pool
        slots = np.array([r.instance.slot for r in rows], dtype=np.int64)
        frames = max(r.chunk.features.shape[1] for r in rows)
        signal = np.zeros((len(rows), rows[0].chunk.features.shape[0], frames), dtype=np.float32)
        for i, r in enumerate(rows):
            f = r.chunk.features[None]
            f = mask_features(f, r.targets.targets[None]) if cfg.masked_asr else f
            signal[i, :, : f.shape[2]] = f[0]
        lengths = np.array([r.chunk.length for r in rows], dtype=np.int64)
        spk, bg = encoder_targets(cfg, [r.targets for r in rows], int(cfg.geometry.encoder_frames(lengths).max()))
        decoded_before = pool.arrays["frames"][slots]
        for r, before in zip(rows, decoded_before.tolist(), strict=True):
            r.instance.runs.append((r.step, int(before)))
        inputs = EncoderInputs(audio_signal=signal, length=lengths, spk_targets=spk, bg_spk_targets=bg,
                               **{name: pool.gather(name, slots) for name in ENCODER_STATE})
        out = run_graph(self.runner, cfg.graphs["encoder"], inputs, EncoderOutputs)
        for name in ENCODER_STATE:
            pool.scatter(name, slots, getattr(out, name + NEXT_SUFFIX))
        state = greedy.DecoderState(**{name: pool.gather(name, slots) for name in DECODER_STATE},
                                    tokens=[r.instance.tokens for r in rows],
                                    frame_indices=[r.instance.frame_indices for r in rows])
        greedy.greedy_decode(self._decoder_step, out.encoded, out.encoded_len, state, cfg.blank_id, cfg.max_symbols,
                             window=cfg.decoder_window)
        for name in DECODER_STATE:
            pool.scatter(name, slots, getattr(state, name))
        for r in rows:
            r.instance.started = True

    def _decoder_step(self, frame, targets, h, c):
        out = run_graph(self.runner, self.cfg.graphs["decoder_joint"],
                        DecoderJointInputs(encoder_frame=frame, targets=targets, h_in=h, c_in=c), DecoderJointOutputs)
        return out.logits, out.h_out, out.c_out

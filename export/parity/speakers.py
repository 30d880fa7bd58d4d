"""`make parity`'s 8-speaker check: the speaker count comes from the checkpoint, end to end.

A random-init tiny Streaming Sortformer with 8 outputs (calibrated so that most of its speakers talk) is paired
with the parity run's multitalker ASR, both are exported, and NeMo's own `SpeakerTaggedASR` flow
(`max_num_of_spks=8`, as `mtasr-reference` runs it) and the in-process served pipeline (`mtasr.pipeline` on ONNX
Runtime) stream the same audio. Every token and its frame must be equal, each speaker must run in the same steps,
the audio-time SegLSTs must be equal and the diarizer activity within 1e-4; at least `MIN_ACTIVE` speakers must
really be active. Its figure is the parity line's `speakers8=<equal tokens>/<tokens>`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from export import builders
from export.exporter import configure_diarizer_streaming, export_all
from export.loading import load_asr, load_diarizer
from export.reference import Reference
from mtasr.audio import synth_conversation
from mtasr.manifest import Manifest
from mtasr.pipeline import Engine, OrtRunner, PipelineConfig
from mtasr.pipeline.engine import Stream

N_SPK = 8
MIN_ACTIVE = 5  # speakers whose sigmoid exceeds 0.5 somewhere
PRESET = (70, 13)
TOLERANCE = 1e-4
SECONDS = 12.0  # 11 steps at [70,13]; the speaker cache (8 speakers) is compared with NeMo in tests/test_spkcache.py
# Fraction of the calibration audio's frames on which each speaker's sigmoid is made to exceed 0.5.
ACTIVE_FRACTIONS = np.linspace(0.15, 0.5, N_SPK)
# The sigmoid head's gain: random weights barely move the logits from frame to frame (5-95 % range ~1 at gain 8),
# a larger gain spreads them so that few frames sit near the 0.5 threshold, where 1e-6 would flip a decision.
HEAD_GAIN = 32.0
PIECE = 2560  # samples per pushed audio piece (160 ms)


def speakers8_audio(seconds: float = SECONDS) -> np.ndarray:
    """The audio of the check (six synthetic voices), also streamed by the 8-speaker end-to-end test."""
    return synth_conversation(seconds, n_speakers=6, seed=8)


@dataclass
class SpeakersCheck:
    """The outcome: equal tokens / tokens, speakers active, details and failures."""

    same: int = 0
    total: int = 0
    active: int = 0
    details: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def flow_logits(diar, asr, audio: np.ndarray) -> np.ndarray:
    """(frames, n_spk) pre-sigmoid outputs of `diar` driven as the multitalker flow drives it: the ASR's chunks
    (`pad_and_drop_preencoded`), NeMo's synchronous speaker-cache update."""
    from nemo.collections.asr.parts.utils.streaming_utils import CacheAwareStreamingAudioBuffer

    asr.preprocessor.featurizer.dither = 0.0
    with torch.no_grad():
        feats, n = asr.preprocessor(input_signal=torch.from_numpy(audio)[None], length=torch.tensor([audio.size]))
    buf = CacheAwareStreamingAudioBuffer(model=asr, online_normalization=False, pad_and_drop_preencoded=True)
    buf.append_processed_signal(feats[:, :, : int(n[0])])
    sm = diar.sortformer_modules
    diar.async_streaming = False
    state = sm.init_streaming_state(batch_size=1, async_streaming=False, device=torch.device("cpu"))
    total = torch.zeros((1, 0, sm.n_spk))
    drop = int(asr.encoder.streaming_cfg.drop_extra_pre_encoded)
    with torch.no_grad():
        for chunk, lengths in buf:
            state, total = diar.forward_streaming_step(
                processed_signal=chunk.transpose(1, 2), processed_signal_length=lengths, streaming_state=state,
                total_preds=total, drop_extra_pre_encoded=drop)
    return torch.logit(total[0].double(), eps=1e-12).numpy()


def build_diarizer8(asr, audio: np.ndarray, size: str = "tiny", seed: int = 0):
    """A random-init Sortformer with 8 outputs whose speakers take turns on `audio`.

    Random weights leave some of the 8 sigmoids below 0.5 on every frame. So after scaling the head by
    `HEAD_GAIN`, the flow is run once and each speaker's output bias is lowered by the (1 - f_k) quantile of its
    logits over the frames: speaker k then exceeds 0.5 on about f_k of them (`ACTIVE_FRACTIONS`, 15 % to 50 %).
    The speaker cache then evolves differently, so the fractions are approximate; the check counts the speakers
    that are really active in NeMo's run and fails below `MIN_ACTIVE`.
    """
    diar = builders.build_diarizer(size, seed, n_spk=N_SPK)
    builders.make_diarizer_decisive(diar, HEAD_GAIN)
    configure_diarizer_streaming(diar, chunk_left_context=0)
    logits = flow_logits(diar, asr, audio)
    shift = np.array([np.quantile(logits[:, k], 1.0 - f) for k, f in enumerate(ACTIVE_FRACTIONS)])
    with torch.no_grad():
        diar.sortformer_modules.single_hidden_to_spks.bias.sub_(torch.from_numpy(shift).float())
    return diar


def run_pipeline(graphs: Path, audio: np.ndarray, session_id: str,
                 precision: str = "fp32") -> tuple[Stream, np.ndarray]:
    """Our engine on `audio` (timing audio, kernel mode, [70,13]) with the graphs of `precision`: the stream and
    the diarizer activity of every step."""
    cfg = PipelineConfig.from_folder(graphs, preset=f"{PRESET[0]}_{PRESET[1]}", masked_asr=False,
                                     precision=precision)
    engine = Engine.from_folder(graphs, OrtRunner(graphs), cfg)
    stream = engine.new_stream(session_id, timing="audio", keep_hypotheses=True)
    activity = []
    for pos in range(0, audio.size, PIECE):
        engine.push_audio(stream, audio[pos : pos + PIECE], last=pos + PIECE >= audio.size)
        while stream.pending:
            activity += [out.activity for out in engine.step([stream])]
    engine.finish(stream)
    return stream, np.concatenate(activity)


def check(work: Path, asr_nemo: Path, size: str = "tiny", seconds: float = SECONDS) -> SpeakersCheck:
    """Build, save and export the 8-speaker diarizer with the ASR at `asr_nemo` into `work`, then compare NeMo's
    flow and ours on `speakers8_audio`."""
    out = SpeakersCheck()
    t0 = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    audio = speakers8_audio(seconds)
    diar_nemo = work / "diarizer.nemo"
    build_diarizer8(load_asr(str(asr_nemo)), audio, size).save_to(str(diar_nemo))
    diar, asr = load_diarizer(str(diar_nemo)), load_asr(str(asr_nemo))
    graphs = work / "graphs"
    export_all(diar, asr, graphs, presets=[PRESET], sources={"diarizer": str(diar_nemo), "asr": str(asr_nemo)})
    del diar, asr

    ref = Reference(str(diar_nemo), str(asr_nemo), PRESET, masked_asr=False)
    want = ref.transcribe(audio, "speakers8", timing="audio")
    stream, activity = run_pipeline(graphs, audio, "speakers8")
    got = stream.segments.seglst()

    out.active = int((ref.diar_preds > 0.5).any(axis=0).sum())
    ours = {spk: (st.tokens, st.frame_indices, [step for step, _ in st.runs])
            for spk, st in stream.speakers.items() if st.started}
    nemo = {spk: (tokens, frames, [step for step, _ in runs])
            for spk, (tokens, frames, runs) in ref.hypotheses.items()}
    for spk in sorted(set(ours) | set(nemo)):
        g_tok, g_frm, g_runs = ours.get(spk, ([], [], []))
        w_tok, w_frm, w_runs = nemo.get(spk, ([], [], []))
        pairs = list(zip(g_tok, g_frm, strict=True)), list(zip(w_tok, w_frm, strict=True))
        out.same += sum(a == b for a, b in zip(*pairs, strict=False))
        out.total += max(len(pairs[0]), len(pairs[1]))
        if g_runs != w_runs:
            out.failures.append(f"speakers8: speaker {spk} ran in steps {g_runs}, NeMo {w_runs}")
    diar_max_abs = float(np.abs(activity - ref.diar_preds).max()) if activity.shape == ref.diar_preds.shape else None
    speakers = sorted({s["speaker"] for s in want})
    out.details = {"speakers8_active": out.active, "speakers8_transcribed": speakers,
                   "speakers8_diarizer": diar_max_abs, "speakers8_segments": len(want),
                   "speakers8_tokens": f"{out.same}/{out.total}",
                   "speakers8_seconds": round(time.perf_counter() - t0, 1)}
    if (n_spk := Manifest.load(graphs).dims.n_spk) != N_SPK:
        out.failures.append(f"speakers8: the export recorded n_spk={n_spk}, not {N_SPK}")
    if diar_max_abs is None or diar_max_abs > TOLERANCE:
        out.failures.append(f"speakers8: diarizer activity {activity.shape} differs from NeMo's "
                            f"{ref.diar_preds.shape} by {diar_max_abs}")
    if got != want:
        out.failures.append("speakers8: the pipeline's SegLST differs from NeMo's")
    if out.active < MIN_ACTIVE:
        out.failures.append(f"speakers8: only {out.active} speakers active (< {MIN_ACTIVE})")
    if out.same != out.total or out.total == 0:
        out.failures.append(f"speakers8: tokens {out.same}/{out.total}")
    return out

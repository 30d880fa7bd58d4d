"""The Triton-free pipeline (onnxruntime + numpy) against NeMo's own `SpeakerTaggedASR` flow, end to end."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_same_seglst

from mtasr.audio import synth_conversation
from mtasr.pipeline import Engine, OrtRunner, PipelineConfig


def _engine(work, preset: str, masked: bool) -> Engine:
    graphs = work / "graphs"
    cfg = PipelineConfig.from_folder(graphs, preset=preset, masked_asr=masked)
    return Engine.from_folder(graphs, OrtRunner(graphs), cfg)


def _stream(engine: Engine, audio: np.ndarray, piece: int, session_id: str = "s") -> list[dict]:
    s = engine.new_stream(session_id, timing="nemo")
    for pos in range(0, len(audio), piece):
        engine.push_audio(s, audio[pos : pos + piece], last=pos + piece >= len(audio))
        while s.pending:
            engine.step([s])
    return s.transcript.final(session_id)


@pytest.fixture(scope="module")
def reference_cache():
    return {}


def _reference(tiny_parity, cache, preset: str, masked: bool, audio: np.ndarray, key: str,
               timing: str = "nemo") -> list[dict]:
    from export.reference import Reference

    nemo = tiny_parity["work"] / "nemo"
    if (preset, masked) not in cache:
        ctx = tuple(int(x) for x in preset.split("_"))
        cache[(preset, masked)] = Reference(str(nemo / "diarizer.nemo"), str(nemo / "asr.nemo"), ctx, masked)
    return cache[(preset, masked)].transcribe(audio, key, timing)


@pytest.mark.parametrize(("preset", "masked", "seconds"), [
    ("70_13", False, 16.0), ("70_13", True, 16.0), ("70_0", False, 4.0), ("70_0", True, 4.0)])
def test_pipeline_equals_nemo(tiny_parity, reference_cache, preset, masked, seconds):
    audio = synth_conversation(seconds, n_speakers=3, seed=3)
    want = _reference(tiny_parity, reference_cache, preset, masked, audio, "session")
    got = _stream(_engine(tiny_parity["work"], preset, masked), audio, 2560, "session")
    assert want, "the reference produced no segments: the comparison would be vacuous"
    assert len({s["speaker"] for s in want}) >= 2
    assert_same_seglst(got, want)


def test_chunk_size_does_not_matter(tiny_parity):
    audio = synth_conversation(8.0, n_speakers=2, seed=5)
    engine = _engine(tiny_parity["work"], "70_13", False)
    outs = [_stream(engine, audio, piece) for piece in (320, 2560, 16000)]  # 20 ms, 160 ms, 1 s
    assert outs[0] and outs[0] == outs[1] == outs[2]


def test_sessions_batched_together_equal_alone(tiny_parity):
    engine = _engine(tiny_parity["work"], "70_13", False)
    audios = [synth_conversation(6.0 + i, n_speakers=2 + i % 2, seed=10 + i) for i in range(4)]
    alone = [_stream(engine, a, 4000, f"s{i}") for i, a in enumerate(audios)]
    sessions = [engine.new_stream(f"s{i}", timing="nemo") for i in range(len(audios))]
    for s, a in zip(sessions, audios, strict=True):
        engine.push_audio(s, a, last=True)
    batches = 0
    while any(s.pending for s in sessions):
        engine.step(sessions)
        batches += 1
    together = [s.transcript.final(s.session_id) for s in sessions]
    assert together == alone
    assert batches < sum(len(a) for a in audios) // 17920  # sessions really shared steps


def _stream_audio_time(engine: Engine, audio: np.ndarray, piece: int, session_id: str = "s"):
    """Audio-time output: the final segments in the order they were released, their union at END, and the
    interim tails seen on the way."""
    s = engine.new_stream(session_id)
    released, interims = [], []
    for pos in range(0, len(audio), piece):
        engine.push_audio(s, audio[pos : pos + piece], last=pos + piece >= len(audio))
        while s.pending:
            engine.step([s])
        released += s.segments.drain()
        interims += s.segments.interim_segments()
    engine.finish(s)
    released += s.segments.drain()
    return released, s.segments.seglst(), interims


@pytest.mark.parametrize(("preset", "masked"), [("70_13", False), ("70_13", True), ("70_0", False)])
def test_audio_timing_equals_nemo_mapped(tiny_parity, reference_cache, preset, masked):
    """Audio-time words and utterances: NeMo's own hypotheses mapped to audio time the same way give the same
    SegLST; nothing ends after the audio; each final segment is released once and never changes."""
    seconds = 16.0 if preset == "70_13" else 4.0
    audio = synth_conversation(seconds, n_speakers=3, seed=3)
    want = _reference(tiny_parity, reference_cache, preset, masked, audio, "session", timing="audio")
    released, got, interims = _stream_audio_time(_engine(tiny_parity["work"], preset, masked), audio, 2560, "session")
    assert want and len({s["speaker"] for s in want}) >= 2
    assert got == want
    assert sorted(released, key=lambda x: (x["start_time"], x["speaker"])) == got  # each final sent exactly once
    for seg in got:
        assert seg["end_time"] <= seconds + 1e-9 and seg["start_time"] <= seg["end_time"]
        assert len(seg["word_times"]) == len(seg["words"].split())
        assert seg["start_time"] == seg["word_times"][0][0] and seg["end_time"] == seg["word_times"][-1][1]
    # a speaker's utterances are separated by at least the pause; NeMo's arithmetic ran past the audio's end
    for spk in {s["speaker"] for s in got}:
        mine = [s for s in got if s["speaker"] == spk]
        assert all(b["start_time"] - a["end_time"] >= 0.6 - 1e-9 for a, b in zip(mine, mine[1:], strict=False))
    assert interims, "no interim tail was ever shown"


def test_audio_timing_chunk_size_does_not_matter(tiny_parity):
    audio = synth_conversation(8.0, n_speakers=2, seed=5)
    engine = _engine(tiny_parity["work"], "70_13", False)
    outs = [_stream_audio_time(engine, audio, piece)[1] for piece in (320, 2560, 16000)]
    assert outs[0] and outs[0] == outs[1] == outs[2]

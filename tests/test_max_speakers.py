"""A session's `max_speakers` cap: only the diarizer's first speakers run an ASR instance and appear in the
transcript; without it (the default) every speaker the diarizer finds runs, as in NeMo (tiny graphs, in process)."""

from __future__ import annotations

import numpy as np
import pytest

from mtasr.audio import read_audio
from mtasr.pipeline import Engine, OrtRunner
from tests.conftest import ROOT


def _transcribe(engine: Engine, audio: np.ndarray, max_speakers: int) -> tuple[set[str], int]:
    s = engine.new_stream("s", max_speakers=max_speakers)
    for k in range(0, len(audio), 2560):
        engine.push_audio(s, audio[k : k + 2560], last=k + 2560 >= len(audio))
        while s.pending:
            engine.step([s])
    engine.finish(s)
    speakers = {seg["speaker"] for seg in s.segments.seglst()}
    instances = len(s.speakers)
    engine.close(s)
    return speakers, instances


def test_the_cap_limits_speaker_instances(tiny_graphs):
    engine = Engine.from_folder(tiny_graphs, OrtRunner(tiny_graphs), preset="70_13")
    audio = read_audio(ROOT / "tests" / "data" / "three_speakers.flac")
    free, free_instances = _transcribe(engine, audio, 0)
    assert free_instances >= 2, "the sample must make the tiny diarizer find two speakers at least"
    cap = free_instances - 1
    capped, capped_instances = _transcribe(engine, audio, cap)
    assert capped_instances <= cap < free_instances
    assert capped <= {f"speaker_{i}" for i in range(cap)} and capped
    with pytest.raises(ValueError, match="max_speakers"):
        engine.new_stream("bad", max_speakers=engine.cfg.n_spk + 1)

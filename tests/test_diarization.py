"""The streaming diarization service (the tutorial's Step 1) equals NeMo's own streaming diarization: speaker
activity and speaker turns, in process and through a real tritonserver, for every latency preset; turns handed
out as final never change; sessions batched together equal each alone."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from client.stream import stream_audio
from mtasr.audio import read_audio
from mtasr.diarization import PRESETS, DiarizationConfig, DiarizationEngine
from mtasr.diarization.turns import PostProcessing, TurnTracker, turns
from mtasr.features import FeatureParams
from mtasr.pipeline import OrtRunner
from mtasr.spec import DIARIZATION

DATA = Path(__file__).resolve().parent / "data"
SAMPLES = ("two_speakers_overlap", "three_speakers", "long_three_speakers")  # the last one is 63 s
ACTIVITY_TOL = 1e-4
POSTS = {"nemo_default": PostProcessing(), "padded_filtered": PostProcessing(0.6, 0.4, 0.1, 0.15, 0.2, 0.3)}


@pytest.fixture(scope="module")
def reference(tiny_parity):
    from export.diarization_reference import DiarizationReference

    cache: dict = {}

    def get(preset: str, post: PostProcessing = POSTS["nemo_default"]) -> DiarizationReference:
        if (preset, post) not in cache:
            cache[preset, post] = DiarizationReference(str(tiny_parity["work"] / "nemo" / "diarizer.nemo"), preset,
                                                       post)
        return cache[preset, post]

    return get


def _engine(tiny_parity, preset: str, post: PostProcessing = POSTS["nemo_default"]) -> DiarizationEngine:
    graphs = tiny_parity["work"] / "graphs"
    cfg = DiarizationConfig.from_folder(graphs, preset_name=preset, post=post)
    return DiarizationEngine(cfg, FeatureParams.load(graphs / "features_diarizer.npz"), OrtRunner(graphs), capacity=2)


def _stream(engine: DiarizationEngine, sessions: dict[str, np.ndarray], seed: int = 0) -> dict[str, tuple]:
    """Push every session's audio in random pieces, stepping all sessions together; (activity, drained, seglst)."""
    rng = np.random.default_rng(seed)
    live = {name: engine.new_stream(name, keep_activity=True) for name in sessions}
    pos = dict.fromkeys(sessions, 0)
    drained: dict[str, list] = {name: [] for name in sessions}
    while any(pos[n] < len(a) for n, a in sessions.items()):
        for name, audio in sessions.items():
            if pos[name] < len(audio):
                n = int(rng.integers(300, 9000))
                engine.push_audio(live[name], audio[pos[name] : pos[name] + n], last=pos[name] + n >= len(audio))
                pos[name] += n
        while any(s.pending for s in live.values()):
            engine.step(list(live.values()))
        for name, s in live.items():
            drained[name] += s.segments.drain()
    out = {}
    for name, s in live.items():
        engine.finish(s)
        drained[name] += s.segments.drain()
        out[name] = (s.total_preds(), sorted(drained[name], key=lambda g: (g["start_time"], g["speaker"])),
                     s.segments.seglst())
        engine.close(s)
    assert engine.pool.in_use == 0
    return out


@pytest.mark.parametrize("preset", list(PRESETS))
def test_in_process_equals_nemo(tiny_parity, reference, preset):
    """All committed samples streamed together in random pieces: NeMo's activity (1e-4) and turns (exact); the
    turns handed out as final during the stream are exactly NeMo's turns."""
    audios = {name: read_audio(DATA / f"{name}.flac") for name in SAMPLES}
    got = _stream(_engine(tiny_parity, preset), audios)
    for name, audio in audios.items():
        want = reference(preset).diarize(audio, name)
        activity, drained, seglst = got[name]
        assert activity.shape == want.activity.shape, name
        assert float(np.abs(activity - want.activity).max()) <= ACTIVITY_TOL, name
        assert want.turns and seglst == want.turns, name
        assert drained == want.turns, f"{name}: a final turn changed after it was sent"


def test_post_processing_equals_nemo_and_finals_never_change():
    """NeMo's `ts_vad_post_processing` on random activity vs ours offline, and fed frame by frame: each turn
    handed out as final is one of the final turns."""
    import torch
    from nemo.collections.asr.parts.utils.vad_utils import ts_vad_post_processing
    from omegaconf import OmegaConf

    rng = np.random.default_rng(3)
    for post in POSTS.values():
        for trial in range(20):
            raw = rng.random((int(rng.integers(5, 400)), 2)).astype(np.float32)
            probs = np.clip(np.cumsum(raw - 0.5, axis=0) * 0.3 + 0.5, 0, 1).astype(np.float32)  # runs of speech
            for spk in range(2):
                want = ts_vad_post_processing(torch.from_numpy(probs[:, spk]), OmegaConf.structured(post), 8)
                want_turns = [(round(s, 2), round(e, 2)) for s, e in want.tolist()]
                assert turns(probs[:, spk], post) == want_turns, (post, trial, spk)
            tracker = TurnTracker(2, post, "s")
            sent = []
            for t in range(probs.shape[0]):
                tracker.update(probs[t : t + 1])
                sent += tracker.drain()
            tracker.update(probs[:0], last=True)
            sent += tracker.drain()
            assert sorted(sent, key=lambda g: (g["start_time"], g["speaker"])) == tracker.seglst(), (post, trial)


@pytest.fixture(scope="module")
def served(default_server):
    return default_server  # the default repository serves the diarization model too (tests/conftest.py)


def test_served_equals_nemo(served, reference):
    """Through a real tritonserver, three sessions at once (the 63 s one among them): turns exactly NeMo's,
    activity within 1e-4, interim turns only while a speaker may still be talking."""
    audios = {name: read_audio(DATA / f"{name}.flac") for name in SAMPLES}
    results: dict = {}

    def run(name: str) -> None:
        results[name] = stream_audio(served.grpc_url, audios[name], session_id=name, chunk_ms=320,
                                     model=DIARIZATION)

    threads = [threading.Thread(target=run, args=(n,)) for n in audios]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, audio in audios.items():
        want = reference("low").diarize(audio, name)
        got = results[name]
        assert got.seglst == want.turns, name
        assert got.activity.shape == want.activity.shape, name
        assert float(np.abs(got.activity - want.activity).max()) <= ACTIVITY_TOL, name


def test_client_diarize_task(served, reference, tmp_path):
    """`mtasr-client --task diarize`: NeMo's turns as SegLST and RTTM, the activity PNG; word formats refused."""
    from conftest import run_cli

    name = "two_speakers_overlap"
    proc = run_cli("client", str(DATA / f"{name}.flac"), "--out", str(tmp_path), "--url", served.grpc_url,
                   "--task", "diarize", "--no-color")
    assert proc.returncode == 0, proc.stderr
    want = reference("low").diarize(read_audio(DATA / f"{name}.flac"), name).turns
    assert json.loads((tmp_path / f"{name}.seglst.json").read_text()) == want
    rttm = (tmp_path / f"{name}.rttm").read_text().splitlines()
    assert [line.split()[7] for line in rttm] == [t["speaker"] for t in want]
    assert (tmp_path / f"{name}.png").stat().st_size > 0
    assert f"{len(want)} turns" in proc.stdout
    bad = run_cli("client", str(DATA / f"{name}.flac"), "--out", str(tmp_path), "--url", served.grpc_url,
                  "--task", "diarize", "--format", "words")
    assert bad.returncode == 2 and "speaker turns only" in bad.stderr

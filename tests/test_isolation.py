"""A failure stays with its session: a graph call that fails for a batch is retried row by row and every session
still equals its solo run; an exception in one session's own processing ends that session's step only, and its
batch-mates equal their solo runs (in process, tiny graphs)."""

from __future__ import annotations

import numpy as np
import pytest

from mtasr.audio import read_audio
from mtasr.pipeline import Engine, OrtRunner
from tests.conftest import ROOT

PIECE = 2560  # 160 ms
N_SESSIONS = 8


class BatchFault:
    """A runner whose calls with more than one row fail for the named graph role (a fault of the batch, not of any
    one row): the stage must retry the rows one by one."""

    def __init__(self, inner, graph: str) -> None:
        self.inner, self.graph, self.failures = inner, graph, 0

    def __call__(self, graph, feeds, outputs):
        rows = len(next(iter(feeds.values())))
        if graph == self.graph and rows > 1:
            self.failures += 1
            raise RuntimeError(f"{graph}: injected batch fault ({rows} rows)")
        return self.inner(graph, feeds, outputs)


def _audios() -> list[np.ndarray]:
    base = read_audio(ROOT / "tests" / "data" / "two_speakers_overlap.flac")[: 16000 * 6]
    return [np.roll(base, 4000 * i) for i in range(N_SESSIONS)]  # different content per session


def _run(engine: Engine, audios: list[np.ndarray], first: int = 0) -> dict[str, tuple]:
    """Every session streamed in lockstep (ids s<first>, s<first + 1>, ...); (final segments, activity) per session
    id, or the error of a failed one."""
    sessions = {f"s{first + i}": engine.new_stream(f"s{first + i}") for i in range(len(audios))}
    audio_of = dict(zip(sessions, audios, strict=True))
    errors: dict[str, str] = {}
    activity: dict[str, list] = {sid: [] for sid in sessions}
    n_pieces = -(-len(audios[0]) // PIECE)
    for k in range(n_pieces):
        for sid, s in sessions.items():
            if sid not in errors:
                engine.push_audio(s, audio_of[sid][k * PIECE : (k + 1) * PIECE], last=k == n_pieces - 1)
        while live := [s for sid, s in sessions.items() if s.pending and sid not in errors]:
            for out in engine.step(live):
                if out.error:
                    errors[out.session_id] = out.error
                else:
                    activity[out.session_id].append(out.activity)
    result: dict[str, tuple] = {}
    for sid, s in sessions.items():
        if sid in errors:
            result[sid] = ("error", errors[sid])
        else:
            engine.finish(s)
            result[sid] = (s.segments.seglst(), np.concatenate(activity[sid]))
        engine.close(s)
    return result


@pytest.fixture(scope="module")
def solo(tiny_graphs):
    engine = Engine.from_folder(tiny_graphs, OrtRunner(tiny_graphs), preset="70_13")
    return {f"s{i}": _run(engine, [a], first=i)[f"s{i}"] for i, a in enumerate(_audios())}


def _assert_equal_solo(got: tuple, want: tuple, sid: str) -> None:
    assert got[0] == want[0], f"{sid}: segments differ from its solo run"
    np.testing.assert_allclose(got[1], want[1], atol=1e-5, err_msg=sid)


@pytest.mark.parametrize("role", ["diarizer", "encoder_70_13"])
def test_a_failing_batch_call_is_retried_row_by_row(tiny_graphs, solo, role):
    runner = BatchFault(OrtRunner(tiny_graphs), role)
    engine = Engine.from_folder(tiny_graphs, runner, preset="70_13")
    got = _run(engine, _audios())
    assert runner.failures > 0
    for sid, want in solo.items():
        _assert_equal_solo(got[sid], want, sid)


def test_one_sessions_fault_ends_only_that_session(tiny_graphs, solo, monkeypatch):
    engine = Engine.from_folder(tiny_graphs, OrtRunner(tiny_graphs), preset="70_13")
    words = engine._update_words
    calls = {"n": 0}

    def faulty(session, last=False):  # session s3's word building fails at its 3rd step
        if session.session_id == "s3":
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyError("injected fault in s3's words")
        return words(session, last)

    monkeypatch.setattr(engine, "_update_words", faulty)
    got = _run(engine, _audios())
    assert got["s3"][0] == "error" and "injected fault" in got["s3"][1]
    for sid, want in solo.items():
        if sid != "s3":
            _assert_equal_solo(got[sid], want, sid)
    assert engine.diarizer.pool.in_use == 0 and engine.asr.pool.in_use == 0

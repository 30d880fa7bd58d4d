"""Sequence lifecycle and bad input, Triton-free: clear errors, other sequences untouched, state freed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from mtasr.audio import synth_conversation
from mtasr.pipeline import Engine, OrtRunner, PipelineConfig
from mtasr.pipeline.metrics import (
    ACTIVE_SESSIONS,
    REASON_LABEL,
    REQUESTS_REFUSED,
    SESSIONS_EXPIRED,
    SESSIONS_STARTED,
    MetricDef,
    MetricKind,
    ServingMetrics,
)
from mtasr.pipeline.sequences import AudioRequest, SequenceManager
from mtasr.pipeline.sessions import ErrorCode, SessionPolicy


class DictSink:
    """An in-memory sink: `values[(name, labels)]` (histograms keep their observations in a list)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, tuple], float | list[float]] = {}

    @staticmethod
    def _key(metric: MetricDef, labels: dict[str, str] | None) -> tuple[str, tuple]:
        return metric.name, tuple(sorted((labels or {}).items()))

    def set(self, metric: MetricDef, value: float, labels: dict[str, str] | None = None) -> None:
        self.values[self._key(metric, labels)] = value

    def increment(self, metric: MetricDef, value: float = 1.0, labels: dict[str, str] | None = None) -> None:
        key = self._key(metric, labels)
        self.values[key] = self.values.get(key, 0.0) + value

    def observe(self, metric: MetricDef, value: float) -> None:
        self.values.setdefault(self._key(metric, None), []).append(value)

    def declare(self, metric: MetricDef) -> None:
        self.values.setdefault(self._key(metric, None), [] if metric.kind is MetricKind.HISTOGRAM else 0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def engine(tiny_parity):
    graphs = tiny_parity["work"] / "graphs"
    cfg = PipelineConfig.from_folder(graphs, preset="70_13")
    return Engine.from_folder(graphs, OrtRunner(graphs), cfg)


def _key(corrid: int) -> str:
    return f"key-of-session-{corrid:06d}"


def _req(corrid, audio=None, start=False, end=False, int16=None, key: str | None = "owner"):
    """A request of `corrid` carrying its owner's key (`key="owner"`), another key, or none (`key=None`)."""
    return AudioRequest(corrid=corrid, start=start, end=end, audio=audio, audio_int16=int16,
                        session_key=_key(corrid) if key == "owner" else key)


def _stream_all(manager, corrid, audio, piece=2560):
    replies = []
    for pos in range(0, len(audio), piece):
        replies += manager.handle([_req(corrid, audio[None, pos : pos + piece], start=pos == 0,
                                        end=pos + piece >= len(audio))])
    return replies


def test_full_sequence_and_state_freed(engine):
    m = SequenceManager(engine)
    audio = synth_conversation(6.0, 2, seed=1)
    replies = _stream_all(m, 7, audio)
    assert all(r.error is None for r in replies)
    assert replies[-1].final and replies[-1].transcript
    assert sum(r.activity.shape[0] for r in replies) == round(6.0 / 0.08)  # every 80 ms frame reported once
    assert not m.live  # freed at END


@pytest.mark.parametrize(("request_", "message"), [
    (_req(1, np.zeros((1, 160), np.float64)), "'audio' must be FP32"),
    (_req(1, np.zeros((2, 160), np.float32)), "one row of samples"),
    (_req(1, np.zeros((1, 0), np.float32)), "empty audio piece"),
    (_req(1, np.array([[0.1, np.nan]], np.float32)), "NaN or Inf"),
    (_req(1, np.array([[0.1, np.inf]], np.float32)), "NaN or Inf"),
    (_req(1, np.zeros((1, 32001), np.float32)), "over 2 s"),
    (_req(1), "exactly one of"),
    (_req(1, np.zeros((1, 160), np.float32), int16=np.zeros((1, 160), np.int16)), "exactly one of"),
    (_req(99, np.zeros((1, 160), np.float32)), "sequence 99 is not open for this client"),
    (_req(1, np.zeros((1, 160), np.float32), key="someone-else-1234567"), "sequence 1 is not open for this client"),
    (_req(1, np.zeros((1, 160), np.float32), key=None), "sequence 1 is not open for this client"),
    (_req(1, np.zeros((1, 160), np.float32), start=True, key="someone-else-1234567"), "already live"),
    (_req(98, np.zeros((1, 160), np.float32), start=True, key=None), "no session key"),
    (_req(98, np.zeros((1, 160), np.float32), start=True, key="short"), "malformed session key"),
])
def test_bad_requests_leave_other_sequences_untouched(engine, request_, message):
    m = SequenceManager(engine)
    audio = synth_conversation(4.0, 2, seed=2)
    alone = _stream_all(SequenceManager(engine), 5, audio)[-1].transcript
    m.handle([_req(1, np.zeros((1, 1600), np.float32), start=True)])
    out = []
    for pos in range(0, len(audio), 8000):
        batch = [_req(5, audio[None, pos : pos + 8000], start=pos == 0, end=pos + 8000 >= len(audio)), request_]
        r = m.handle(batch)
        assert r[1].error and message in r[1].error
        out.append(r[0])
    assert all(r.error is None for r in out)
    assert out[-1].transcript == alone


def test_request_after_end_and_int16(engine):
    m = SequenceManager(engine)
    audio = synth_conversation(2.0, 2, seed=3)
    pcm = (audio * 32767).astype(np.int16)
    r = m.handle([_req(3, start=True, end=True, int16=pcm[None])])[0]
    assert r.error is None and r.final
    r = m.handle([_req(3, np.zeros((1, 160), np.float32))])[0]
    assert "not open" in r.error


def test_idle_timeout_frees_state(engine):
    clock, sink = Clock(), DictSink()
    m = SequenceManager(engine, SessionPolicy(idle_timeout_s=5.0), clock=clock, events=ServingMetrics(sink))
    m.handle([_req(11, np.zeros((1, 1600), np.float32), start=True)])
    assert 11 in m.live
    clock.now = 6.0
    m.handle([_req(12, np.zeros((1, 1600), np.float32), start=True)])
    assert 11 not in m.live and 12 in m.live
    r = m.handle([_req(11, np.zeros((1, 160), np.float32))])[0]
    assert "not open" in r.error and r.error_code is ErrorCode.NOT_FOUND
    assert sink.values[(SESSIONS_EXPIRED.name, ())] == 1
    assert sink.values[(REQUESTS_REFUSED.name, ((REASON_LABEL, "not_owner"),))] == 1
    clock.now = 6.0 + 4.9  # a session whose request is in the batch is never expired by that batch
    assert m.handle([_req(12, np.zeros((1, 160), np.float32))])[0].error is None


def test_a_slow_step_is_not_the_clients_silence(engine):
    """The idle clock restarts when a request is answered: a step longer than the idle timeout (a loaded server, a
    graph's first call) does not let the reaper drop the session it just served."""
    clock = Clock()
    real_step = engine.step

    def slow_step(sessions):
        clock.now += 6.0  # the step takes longer than the 5 s idle timeout
        return real_step(sessions)

    m = SequenceManager(engine, SessionPolicy(idle_timeout_s=5.0), clock=clock)
    engine.step = slow_step
    try:
        assert m.handle([_req(13, np.zeros((1, 17920), np.float32), start=True)])[0].error is None
    finally:
        del engine.step
    assert clock.now >= 6.0 and m.expire_idle() == []  # the reaper's pass right after the reply
    assert m.handle([_req(13, np.zeros((1, 160), np.float32))])[0].error is None


def test_reaper_frees_idle_sessions_without_a_request(engine):
    """Expiry is eager: a background pass frees abandoned state; nothing else has to arrive."""
    sink = DictSink()
    m = SequenceManager(engine, SessionPolicy(idle_timeout_s=0.3, reap_period_s=0.05), events=ServingMetrics(sink))
    m.handle([_req(i, np.zeros((1, 1600), np.float32), start=True) for i in (31, 32)])
    assert sink.values[(ACTIVE_SESSIONS.name, ())] == 2
    m.start_reaper()
    try:
        deadline = time.monotonic() + 5
        while m.live and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        m.close()
    assert not m.live and sink.values[(SESSIONS_EXPIRED.name, ())] == 2
    assert sink.values[(ACTIVE_SESSIONS.name, ())] == 0


def test_admission_cap_and_ownership(engine):
    sink = DictSink()
    m = SequenceManager(engine, SessionPolicy(max_sessions=2), events=ServingMetrics(sink))
    piece = np.zeros((1, 1600), np.float32)
    assert [r.error for r in m.handle([_req(1, piece, start=True), _req(2, piece, start=True)])] == [None, None]
    full = m.handle([_req(3, piece, start=True)])[0]
    assert full.error == "server full (2 sessions): try again later" and full.error_code is ErrorCode.UNAVAILABLE
    assert 3 not in m.live  # a refused START holds nothing
    dup = m.handle([_req(1, piece, start=True)])[0]  # the owner itself cannot reset a live session
    assert dup.error_code is ErrorCode.ALREADY_EXISTS
    stolen = m.handle([_req(2, piece, end=True, key=_key(1))])[0]
    assert stolen.error_code is ErrorCode.NOT_FOUND and 2 in m.live  # another client's END does not end it
    assert m.handle([_req(2, piece, end=True)])[0].final and 2 not in m.live
    assert m.handle([_req(3, piece, start=True)])[0].error is None  # a slot was freed by END
    assert sink.values[(REQUESTS_REFUSED.name, ((REASON_LABEL, "full"),))] == 1
    assert sink.values[(REQUESTS_REFUSED.name, ((REASON_LABEL, "duplicate_start"),))] == 1
    assert sink.values[(SESSIONS_STARTED.name, ())] == 3


def test_batcher_filler_requests_are_ignored(engine):
    m = SequenceManager(engine)
    r = m.handle([AudioRequest(corrid=0, start=False, end=False, ready=False)])[0]
    assert r.error is None and not m.live


class FailingRunner:
    """ONNX Runtime, or an error on every call while `failing` is set."""

    def __init__(self, runner) -> None:
        self.runner, self.failing = runner, False

    def __call__(self, graph, feeds, outputs):
        if self.failing:
            raise RuntimeError("encoder: batch too large")
        return self.runner(graph, feeds, outputs)


def test_failing_graph_call_drops_only_its_sequences(tiny_parity):
    """A graph error (e.g. an overloaded server) answers the batch with errors and frees those sequences,
    instead of raising out of the Triton model."""
    graphs = tiny_parity["work"] / "graphs"
    runner = FailingRunner(OrtRunner(graphs))
    engine = Engine.from_folder(graphs, runner, preset="70_13")
    m = SequenceManager(engine)
    m.handle([_req(21, np.zeros((1, 1600), np.float32), start=True)])
    runner.failing = True
    try:
        r = m.handle([_req(22, np.zeros((1, 32000), np.float32), start=True)])[0]
    finally:
        runner.failing = False
    assert "internal error, sequence 22 dropped: RuntimeError: encoder: batch too large" == r.error
    assert 22 not in m.live and 21 in m.live
    assert engine.diarizer.pool.in_use == 1, "the dropped sequence's slots are freed"
    assert m.handle([_req(21, np.zeros((1, 1600), np.float32), end=True)])[0].error is None
    assert engine.diarizer.pool.in_use == 0 and engine.asr.pool.in_use == 0


def _reply_bytes(engine, timing: str, audio: np.ndarray, piece: int = 2560) -> list[int]:
    m = SequenceManager(engine, timing=timing)
    sizes = []
    for pos in range(0, len(audio), piece):
        r = m.handle([_req(61, audio[None, pos : pos + piece], start=pos == 0, end=pos + piece >= len(audio))])[0]
        assert r.error is None
        sizes.append(len(r.segments_json()) + len(r.interim_json()) + len(r.transcript_json()))
    return sizes[:-1]  # the END reply carries the whole SegLST (audio timing) by design


def test_reply_size_stays_flat_in_audio_timing(engine):
    """Audio timing sends each final segment once plus the open tails: replies do not grow with the session.
    NeMo timing re-sends the whole transcript every time: they do. The same 10 s conversation (+ 1.5 s of
    silence) six times over; mean bytes per reply in the 2nd and the 6th repetition."""
    clip = np.concatenate([synth_conversation(10.0, 3, seed=8), np.zeros(24000, np.float32)])
    per = len(clip) // 2560

    def repetitions(timing: str) -> tuple[float, float]:
        sizes = _reply_bytes(engine, timing, np.tile(clip, 6))
        return float(np.mean(sizes[per : 2 * per])), float(np.mean(sizes[5 * per : 6 * per]))

    audio_t, nemo_t = repetitions("audio"), repetitions("nemo")
    print(f"mean bytes per reply, 2nd vs 6th repetition: audio {audio_t}, nemo {nemo_t}")
    assert nemo_t[1] > 2 * nemo_t[0]  # the growth this test would catch
    assert audio_t[1] < 1.5 * audio_t[0] + 100

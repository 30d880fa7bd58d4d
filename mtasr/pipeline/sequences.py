"""Streaming sequences over the engine: START/END/CORRID handling, ownership, admission, validation, scheduling,
idle expiry, replies.

Triton-free. Requests arrive through `submit(request, respond)` from any thread (the Triton model's `execute`)
and are answered through `respond`, once each. One engine thread (`start()`) runs the schedule:

1. take what was submitted; push each session's next request (one per session per round, in request order);
2. ONE `engine.step` over every session with a pending chunk, whichever executes their requests came in;
3. answer each request once all the chunks it completed are stepped (a request that completes no chunk is
   answered as soon as the ones before it are); repeat, taking new submissions between steps.

Admission (count cap and measured capacity) and ownership are decided at `submit`, so a refusal never waits for a
step. `handle(requests)` is the synchronous form (benchmarks, tests): submit all, run the schedule until every one
is answered. Nothing on the request path is O(live sessions): idle sessions wait in an `IdleClock`, occupancy is
counted as it changes, and the heap is trimmed by the reaper.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mtasr.audio import synth_conversation
from mtasr.jsonio import dumps
from mtasr.pipeline.capacity import Admission, StepCostModel
from mtasr.pipeline.engine import Engine, Stream
from mtasr.pipeline.live_segments import LiveSegments
from mtasr.pipeline.runner import release_free_memory
from mtasr.pipeline.sessions import (
    ErrorCode,
    IdleClock,
    Reaper,
    RefusalReason,
    RequestError,
    SessionEvents,
    SessionPolicy,
    key_digest,
    log,
    same_owner,
)
from mtasr.pipeline.words import SegmentList
from mtasr.spec import FRAME_SEC, MAX_CHUNK_SECONDS, SAMPLE_RATE, TIMINGS


@dataclass
class AudioRequest:
    """One request of a sequence, as the sequence batcher delivers it."""

    corrid: int
    start: bool
    end: bool
    audio: np.ndarray | None = None  # float32 samples, or None
    audio_int16: np.ndarray | None = None
    session_key: str | None = None  # the client's per-session secret (forwarded header)
    timing: str | None = None  # START only: "audio" | "nemo" (None: the server's default)
    max_speakers: str | int | None = None  # START only: cap on the session's speaker instances (None/0: none)
    ready: bool = True  # False: a batcher's filler request (no client waits for it); answered empty, not counted


@dataclass
class Reply:
    """The answer to one request: an error, or segments, transcript and activity, and the session's status."""

    error: str | None = None
    error_code: ErrorCode | None = None
    segments: list[dict] = field(default_factory=list)  # final since the last reply (nemo: changed since)
    interim: list[dict] = field(default_factory=list)  # each speaker's unstable tail (nemo: none)
    transcript: list[dict] = field(default_factory=list)  # whole session at END (nemo: in every reply)
    # frames x speakers (the diarizer's count); the manager's replies always carry its columns, even with no frames
    activity: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    final: bool = False
    lag_s: float = 0.0  # how far the session was behind real time when this reply was sent
    audio_s: float = 0.0  # audio of the session received so far

    @classmethod
    def refusal(cls, exc: RequestError) -> Reply:
        return cls(error=str(exc), error_code=exc.code)

    def segments_json(self) -> bytes:
        return dumps(self.segments)

    def interim_json(self) -> bytes:
        return self.interim.json() if isinstance(self.interim, SegmentList) else dumps(self.interim)

    def transcript_json(self) -> bytes:
        return dumps(self.transcript)

    def status_json(self) -> bytes:
        return dumps({"lag_s": round(self.lag_s, 3), "audio_s": round(self.audio_s, 3)})


Respond = Callable[[Reply], None]
HANDLE_TIMEOUT_S = 600.0  # `handle` beside a running engine thread gives up (RuntimeError) after this


@dataclass
class _Pending:
    """A submitted request waiting for its turn in its session."""

    request: AudioRequest
    respond: Respond
    arrived: float
    samples: np.ndarray | None = None
    error: RequestError | None = None  # refused in its turn (a live session's bad request leaves it untouched)


@dataclass
class _Live:
    """A session the manager admitted: its owner, its queue of requests, its engine stream (opened by the
    engine thread at its START's turn)."""

    corrid: int
    owner: bytes  # SHA-256 of the session key
    timing: str
    anchor: float  # real-time origin: the START's arrival minus the audio it carried
    max_speakers: int = 0  # the START's cap on speaker instances (0: none)
    stream: Stream | None = None
    queue: deque[_Pending] = field(default_factory=deque)
    current: _Pending | None = None  # pushed, waiting for its chunks to be stepped
    frames: list[np.ndarray] = field(default_factory=list)  # activity of the current request's steps
    speakers: int = 0  # speaker instances, as counted in the occupancy gauge
    stepped: int = 0  # chunks stepped (how full its state is: the step cost model)
    scheduled: bool = False  # in the engine's ready list
    ended: bool = False
    sent: dict[tuple, dict] = field(default_factory=dict)  # timing nemo: (speaker, start) -> segment last sent


def samples_of(req: AudioRequest) -> np.ndarray:
    """Validated float32 samples of a request (raises RequestError)."""
    given = [a for a in (req.audio, req.audio_int16) if a is not None]
    if len(given) != 1:
        raise RequestError("send exactly one of 'audio' (FP32) or 'audio_int16' (INT16)")
    x = np.asarray(given[0])
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 1:
        raise RequestError(f"audio must be one row of samples, got shape {list(given[0].shape)}")
    if req.audio_int16 is not None:
        if x.dtype != np.int16:
            raise RequestError(f"'audio_int16' must be INT16, got {x.dtype}")
        x = x.astype(np.float32) / 32768.0
    elif x.dtype != np.float32:
        raise RequestError(f"'audio' must be FP32, got {x.dtype}")
    if x.size > MAX_CHUNK_SECONDS * SAMPLE_RATE:
        raise RequestError(f"audio piece of {x.size} samples is over {MAX_CHUNK_SECONDS:g} s at {SAMPLE_RATE} Hz")
    if x.size == 0 and not req.end:
        raise RequestError("empty audio piece (only the END request may be empty)")
    if not np.all(np.isfinite(x)):
        raise RequestError("audio contains NaN or Inf samples")
    return x


def state_fill_seconds(engine) -> float:
    """Audio a session processes before its speaker cache and FIFO are full (its steps cost the most from then)."""
    p = engine.cfg.spkcache
    return (p.spkcache_len + p.fifo_len) * FRAME_SEC


def step_seconds(engine) -> float:
    """The audio one step of `engine` covers: the real-time budget of a step (multitalker: the preset's chunk,
    1.12 s at [70,13]; diarization: its latency preset's chunk)."""
    own = getattr(engine, "step_seconds", None)
    if own is not None:
        return float(own)
    return engine.cfg.nframes_per_chunk * engine.cfg.frame_len_sec


class _Collector:
    """Replies of one `handle` call, by position; `done` is set when all are in."""

    def __init__(self, n: int) -> None:
        self.replies: list[Reply | None] = [None] * n
        self.missing = n
        self.done = threading.Event()
        if not n:
            self.done.set()
        self._lock = threading.Lock()

    def responder(self, i: int) -> Respond:
        def respond(reply: Reply) -> None:
            with self._lock:
                if self.replies[i] is None:
                    self.missing -= 1
                self.replies[i] = reply
                if not self.missing:
                    self.done.set()
        return respond


class SequenceManager:
    """Owns every live session, keyed by correlation id, and schedules their engine steps.

    `submit` may be called from any thread; the schedule runs on the engine thread (`start`) or inside `handle`;
    the reaper (`start_reaper`) frees idle sessions. One lock guards the registry and the queues, never a step.
    """

    def __init__(self, engine: Engine, policy: SessionPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic, events: SessionEvents | None = None,
                 session_name: Callable[[int], str] = lambda corrid: f"stream_{corrid}",
                 timing: str = TIMINGS[0]) -> None:
        if timing not in TIMINGS:
            raise ValueError(f"unknown timing {timing!r}; use one of {TIMINGS}")
        self.engine = engine
        self.timing = timing
        self.policy = policy or SessionPolicy()
        self.clock = clock
        self.events = events or SessionEvents()
        self.session_name = session_name
        self.cost = StepCostModel()
        self.admission = Admission(step_seconds(engine), self.policy.admission_headroom, self.policy.reply_budget_s)
        self._fill_steps = max(state_fill_seconds(engine) / self.admission.budget_s, 1.0)  # steps to a full state
        self.live: dict[int, _Live] = {}
        self._idle: IdleClock[int, _Live] = IdleClock()
        self._ready: list[_Live] = []  # sessions with a request to push (guarded by _lock)
        self._busy: dict[int, _Live] = {}  # sessions with pending chunks (engine thread only)
        self._closing: list[Stream] = []  # expired sessions' streams the engine thread closes (guarded by _lock)
        self._speakers = 0  # speaker instances over live sessions
        self._freed = 0  # sessions freed since the heap was last trimmed
        self._reported: tuple[int, float] | None = None
        self._worst_lag: float | None = None  # the largest lag among this round's step-completing replies
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stepping = threading.Lock()  # held by whoever runs the schedule (engine thread or handle)
        self._reaper: Reaper | None = None
        self._thread: threading.Thread | None = None
        self._stop = False
        self._closed = False

    # -------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Run the schedule on an engine thread and free idle sessions from the reaper."""
        self.start_reaper()
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="mtasr-engine", daemon=True)
            self._thread.start()

    def start_reaper(self) -> None:
        """Free idle sessions eagerly from a background thread (not only when the next request arrives)."""
        if self._reaper is None:
            self._reaper = Reaper(self.expire_idle, self.policy.reap_period_s).start()

    def close(self) -> None:
        """Stop the threads, answer whatever is still waiting ("shutting down") and drop every session; never
        blocks for long (a server going away may leave a graph call stuck)."""
        with self._lock:
            self._stop = self._closed = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self._reaper is not None:
            self._reaper.stop()
            self._reaper = None
        waiting: list[_Pending] = []
        if self._lock.acquire(timeout=2):
            try:
                for live in self.live.values():
                    waiting += ([live.current] if live.current else []) + list(live.queue)
                    live.queue.clear()
                    live.ended = True
                self.live.clear()
                self._ready.clear()
            finally:
                self._lock.release()
        shutdown = RequestError("server shutting down: the session is closed", ErrorCode.UNAVAILABLE,
                                RefusalReason.SHUTDOWN)
        self._send([(p.respond, Reply.refusal(shutdown)) for p in waiting])

    def warm_up(self, sessions: int = 2, max_seconds: float = 5.0) -> None:
        """Measure the first step-cost estimate before any client: a step of one synthetic session, then steps of
        `sessions` of them until their speaker caches and FIFOs are full (or `max_seconds` have gone: the fit
        extrapolates), the first call of each batch shape unmeasured (it allocates); then free them. Nothing to
        measure when admission by capacity is off. Call before `start`."""
        if not self.admission.headroom:
            return
        budget = self.admission.budget_s
        steps = int(np.ceil(self._fill_steps)) + 2
        audio = synth_conversation(steps * budget + 2.0, n_speakers=2, seed=0)
        done = [0] * sessions
        with self._stepping:
            warm = [self.engine.new_stream(f"warm-up-{i}", self.timing) for i in range(sessions)]
            try:
                for s in warm:
                    for pos in range(0, len(audio), 2 * SAMPLE_RATE):
                        self.engine.push_audio(s, audio[pos : pos + 2 * SAMPLE_RATE])
                t_end = time.perf_counter() + max_seconds
                plan = [(1, False), (1, True), (sessions, False)] + [(sessions, True)] * steps
                for n, measured in plan:
                    fill = sum(self._fill(k) for k in done[:n])
                    t0 = time.perf_counter()
                    outs = self.engine.step(warm[:n])
                    if not outs:
                        break
                    if measured:
                        self.cost.observe(len(outs), sum(len(o.active_speakers) for o in outs),
                                          time.perf_counter() - t0, fill)
                    done[:n] = [k + 1 for k in done[:n]]
                    if time.perf_counter() > t_end or self._fill(done[-1]) >= 1:
                        break
            finally:
                for s in warm:
                    self.engine.close(s)
        self._report_capacity()

    def _fill(self, stepped: int) -> float:
        """How full a session's speaker cache and FIFO are after `stepped` steps (0..1)."""
        return min(1.0, stepped / self._fill_steps)

    # ------------------------------------------------------------------------------------------ submission
    def submit(self, req: AudioRequest, respond: Respond) -> None:
        """Take one request; `respond` is called once with its reply (now for a refusal, else after its step)."""
        if not req.ready:
            respond(Reply(activity=self._no_frames()))
            return
        now = self.clock()
        try:
            samples, error = samples_of(req), None
        except RequestError as exc:
            samples, error = None, exc
        refusal: RequestError | None = None
        started = False
        with self._lock:
            try:
                if self._closed:
                    raise RequestError("server shutting down", ErrorCode.UNAVAILABLE, RefusalReason.SHUTDOWN)
                if req.start:
                    if error is not None:
                        raise error
                    live = self._open(req, now, samples)
                    started = True
                else:
                    live = self.live.get(req.corrid)
                    if live is None or live.ended or not same_owner(live.owner, req.session_key):
                        # an unknown id and another client's id get the same answer: no oracle for live ids
                        raise RequestError(f"sequence {req.corrid} is not open for this client: start it with START "
                                           "and send its session key with every request (it may have ended or "
                                           "timed out)", ErrorCode.NOT_FOUND, RefusalReason.NOT_OWNER)
                live.queue.append(_Pending(req, respond, now, samples, error))
                self._idle.remove(req.corrid)
                self._schedule(live)
                sessions = len(self.live)
            except RequestError as exc:
                refusal = exc
        if refusal is not None:
            self.events.refused(refusal.reason)
            respond(Reply.refusal(refusal))
            return
        if started:
            self.events.started()
            self.events.occupancy(sessions, self._speakers)

    def _open(self, req: AudioRequest, now: float, samples: np.ndarray) -> _Live:
        """Admit a START (under the lock): key, duplicate, count cap, measured capacity, timing."""
        owner = key_digest(req.session_key)
        if req.corrid in self.live:
            raise RequestError(f"sequence {req.corrid} is already live: a second START is refused (use a fresh "
                               "sequence id)", ErrorCode.ALREADY_EXISTS, RefusalReason.DUPLICATE_START)
        n = len(self.live)
        if n >= self.policy.max_sessions:
            raise RequestError(f"server full ({self.policy.max_sessions} sessions): try again later",
                               ErrorCode.UNAVAILABLE, RefusalReason.FULL)
        why = self.admission.refusal(self.cost.estimate(), n) if n else None  # one session is always admitted
        if why:
            raise RequestError(f"server at capacity ({n} sessions, {why}): retry in {self.policy.idle_timeout_s:g} s",
                               ErrorCode.UNAVAILABLE, RefusalReason.CAPACITY)
        timing = req.timing or self.timing
        if timing not in TIMINGS:
            raise RequestError(f"unknown timing {timing!r}: use one of {', '.join(TIMINGS)}")
        live = _Live(req.corrid, owner, timing, anchor=now - samples.size / SAMPLE_RATE,
                     max_speakers=self._max_speakers(req))
        self.live[req.corrid] = live
        return live

    def _max_speakers(self, req: AudioRequest) -> int:
        """The START's speaker-instance cap: an integer in [0, the diarizer's speakers] (0: no cap)."""
        if req.max_speakers is None:
            return 0
        n_spk = self.engine.cfg.n_spk
        try:
            value = int(str(req.max_speakers).strip())
        except ValueError:
            value = -1
        if not 0 <= value <= n_spk:
            raise RequestError(f"max_speakers must be an integer in [0, {n_spk}] (0: no cap), got "
                               f"{str(req.max_speakers)[:20]!r}")
        return value

    def _schedule(self, live: _Live) -> None:
        """Put `live` on the engine's ready list (under the lock) and wake the engine thread."""
        if not live.scheduled and not live.ended:
            live.scheduled = True
            self._ready.append(live)
            self._wake.notify()

    # ----------------------------------------------------------------------------------------- synchronous
    def handle(self, requests: list[AudioRequest]) -> list[Reply]:
        """Process requests (any sequences, any order of arrival); one reply per request, in order."""
        got = _Collector(len(requests))
        for i, req in enumerate(requests):
            self.submit(req, got.responder(i))
        if self._thread is not None:
            got.done.wait(HANDLE_TIMEOUT_S)
        else:
            with self._stepping:
                while not got.done.is_set() and self._cycle():
                    pass
        if not got.done.is_set():
            raise RuntimeError("the schedule stopped with requests unanswered")
        return got.replies  # type: ignore[return-value]

    # ---------------------------------------------------------------------------------------- the schedule
    def _run(self) -> None:
        while True:
            with self._lock:
                while not (self._ready or self._busy or self._closing or self._stop):
                    self._wake.wait(1.0)
                if self._stop:
                    return
            with self._stepping:
                try:
                    self._cycle()
                except Exception:  # noqa: BLE001 - a defect must not stop the schedule for every other session
                    log.exception("engine thread: a scheduling round failed")
                    self._abort_busy()

    def _cycle(self) -> bool:
        """One round: push the next request of every ready session, then one step over every session with a
        pending chunk, its replies sent. False when there was nothing to do."""
        with self._lock:
            ready, self._ready = self._ready, []
            closing, self._closing = self._closing, []
            for live in ready:
                live.scheduled = False
        for stream in closing:
            self.engine.close(stream)
        out: list[tuple[Respond, Reply]] = []
        for live in ready:
            self._feed(live, out)
        self._send(out)
        if not self._busy:
            self._report_lag()
            return bool(ready or closing)
        t0 = time.perf_counter()
        sessions, speakers, fill = self._step(out)
        self._send(out)
        seconds = time.perf_counter() - t0
        if sessions:
            self.cost.observe(sessions, speakers, seconds, fill)
            self.events.stepped(seconds)
        self._report_lag()
        return True

    def _report_lag(self) -> None:
        """One lag observation per round, its worst session's: metric updates cost an IPC round trip each
        (~50 us in Triton's Python backend), so nothing per session is reported per step."""
        if self._worst_lag is not None:
            self.events.lag(self._worst_lag)
            self._worst_lag = None

    def _feed(self, live: _Live, out: list) -> None:
        """Push `live`'s next request (engine thread); it waits for the step when it completed a chunk."""
        if live.ended or live.current is not None:
            return
        with self._lock:
            p = live.queue.popleft() if live.queue else None
        if p is not None:
            self._push(live, p, out)
        self._settle(live)

    def _settle(self, live: _Live) -> None:
        """After `live`'s request was answered: its next one goes on the ready list, or it starts idling."""
        if live.ended or live.current is not None:
            return
        with self._lock:
            if live.queue:
                self._schedule(live)
            elif not live.ended:
                self._idle.touch(live.corrid, live, self.clock())

    def _push(self, live: _Live, p: _Pending, out: list) -> None:
        if p.error is not None:
            self.events.refused(p.error.reason)
            out.append((p.respond, Reply.refusal(p.error)))
            return
        try:
            if live.stream is None:
                live.stream = self.engine.new_stream(self.session_name(live.corrid), live.timing,
                                                       max_speakers=live.max_speakers)
            self.engine.push_audio(live.stream, p.samples, last=p.request.end)
        except Exception as exc:  # noqa: BLE001 - this session's processing failed: it ends, nobody else's does
            self._fail(live, p, f"{type(exc).__name__}: {exc}", out)
            return
        if live.stream.pending:
            live.current = p
            self._busy[live.corrid] = live
        else:
            self._answer(live, p, out)

    def _step(self, out: list) -> tuple[int, int, float]:
        """ONE engine step over every session with a pending chunk; answers the requests it completes. Returns
        the sessions stepped, their active speakers and how full their state was (summed)."""
        lives = list(self._busy.values())
        try:
            outs = self.engine.step([live.stream for live in lives])
        except Exception as exc:  # noqa: BLE001 - the engine could not tell whose rows failed: all of them end
            for live in lives:
                self._fail(live, live.current, f"{type(exc).__name__}: {exc}", out)
            return 0, 0, 0.0
        by_id = {o.session_id: o for o in outs}
        speakers, fill = 0, 0.0
        for live in lives:
            o = by_id.get(live.stream.session_id)
            if o is None:
                continue
            error = getattr(o, "error", None)
            if error:  # the engine isolated this session's failure: it ends alone
                self._fail(live, live.current, str(error), out)
                continue
            live.frames.append(o.activity)
            speakers += len(o.active_speakers)
            fill += self._fill(live.stepped)
            live.stepped += 1
            self._count_speakers(live)
            if not live.stream.pending:
                del self._busy[live.corrid]
                p, live.current = live.current, None
                self._answer(live, p, out)
                self._settle(live)
        return len(outs), speakers, fill

    def _answer(self, live: _Live, p: _Pending, out: list) -> None:
        """The reply to `p`, whose chunks are all stepped; the session ends at END or when it lags too far."""
        stream = live.stream
        req = p.request
        now = self.clock()
        lag = max(0.0, now - max(p.arrived, live.anchor + stream.audio_seconds))
        if lag > self.policy.lag_limit_s and not req.end:
            self._fail(live, p, None, out, RequestError(
                f"sequence {req.corrid} ended: {lag:.1f} s behind real time (limit {self.policy.lag_limit_s:g} s): "
                "the server is overloaded", ErrorCode.UNAVAILABLE, RefusalReason.LAGGING))
            return
        try:
            if req.end:
                self.engine.finish(stream)
            reply = self._reply(live, final=req.end)
        except Exception as exc:  # noqa: BLE001 - a failure in this session's words or turns ends it alone
            self._fail(live, p, f"{type(exc).__name__}: {exc}", out)
            return
        reply.lag_s, reply.audio_s = lag, stream.audio_seconds
        if reply.activity.shape[0] or req.end:
            self._worst_lag = max(self._worst_lag or 0.0, lag)
        out.append((p.respond, reply))
        if req.end:
            self._end(live, out)

    def _fail(self, live: _Live, p: _Pending | None, why: str | None, out: list,
              error: RequestError | None = None) -> None:
        """End `live` after a failure of its own: `p` (and whatever it still had queued) gets the error."""
        error = error or RequestError(f"internal error, sequence {live.corrid} dropped: {why}", ErrorCode.INTERNAL,
                                      RefusalReason.INTERNAL)
        if p is not None:
            self.events.refused(error.reason)
            out.append((p.respond, Reply.refusal(error)))
        self._end(live, out, error)

    def _end(self, live: _Live, out: list, error: RequestError | None = None) -> None:
        """Drop `live` (END, failure, lag): its engine state is freed now; queued requests get `error`."""
        self._busy.pop(live.corrid, None)
        with self._lock:
            live.ended = True
            if self.live.get(live.corrid) is live:
                del self.live[live.corrid]
            self._idle.remove(live.corrid)
            left, live.queue = list(live.queue), deque()
            self._speakers -= live.speakers
            sessions = len(self.live)
            self._freed += 1
        live.current = None
        for q in left:
            after = error or RequestError(f"sequence {live.corrid} has ended", ErrorCode.NOT_FOUND,
                                          RefusalReason.NOT_OWNER)
            self.events.refused(after.reason)
            out.append((q.respond, Reply.refusal(after)))
        if live.stream is not None:
            self.engine.close(live.stream)
        self.events.occupancy(sessions, self._speakers)

    def _abort_busy(self) -> None:
        """After a defect in a round: end the sessions caught in it, answer them."""
        out: list = []
        for live in list(self._busy.values()):
            self._fail(live, live.current, "the scheduling round failed", out)
        self._busy.clear()
        self._send(out)

    def _count_speakers(self, live: _Live) -> None:
        n = len(live.stream.speakers)
        if n != live.speakers:
            with self._lock:
                self._speakers += n - live.speakers
                sessions = len(self.live)
            live.speakers = n
            self.events.occupancy(sessions, self._speakers)

    def _send(self, out: list[tuple[Respond, Reply]]) -> None:
        for respond, reply in out:
            try:
                respond(reply)
            except Exception:  # noqa: BLE001 - a client gone (cancelled stream) must not stop the others' replies
                log.exception("could not send a reply")
        out.clear()

    def _report_capacity(self) -> None:
        cost = self.cost.estimate()
        figures = (self.admission.sessions(cost, self.policy.max_sessions),
                   round(self.admission.budget_fraction(cost, len(self.live)), 2))
        if figures != self._reported:
            self._reported = figures
            self.events.capacity(*figures)

    # --------------------------------------------------------------------------------------------- expiry
    def expire_idle(self) -> list[int]:
        """Drop sessions that have been idle (nothing queued or in flight) for longer than the idle timeout: a
        client that vanished. O(expired). Returns their correlation ids."""
        now = self.clock()
        with self._lock:
            gone = self._idle.expired(now, self.policy.idle_timeout_s)
            for corrid, live in gone:
                live.ended = True
                del self.live[corrid]
                self._speakers -= live.speakers
            sessions = len(self.live)
            self._freed += len(gone)
        streams_to_close = [live.stream for _, live in gone if live.stream is not None]
        if streams_to_close:
            if self._stepping.acquire(blocking=False):  # no step runs: free them here
                try:
                    for s in streams_to_close:
                        self.engine.close(s)
                finally:
                    self._stepping.release()
            else:  # a step is running: the engine thread frees them before its next round
                with self._lock:
                    self._closing += streams_to_close
                    self._wake.notify()
        if gone:
            log.warning("expired %d idle session(s) after %.1f s without a request; %d live",
                        len(gone), self.policy.idle_timeout_s, sessions)
            self.events.expired(len(gone))
            self.events.occupancy(sessions, self._speakers)
        with self._lock:
            freed, self._freed = self._freed, 0
        if freed:
            release_free_memory()  # freed sessions' arrays: give the pages back to the OS (off the request path)
        self._report_capacity()  # here, not per step: each gauge update is an IPC round trip
        return [corrid for corrid, _ in gone]

    # ------------------------------------------------------------------------------------------- replies
    def _no_frames(self) -> np.ndarray:
        """Activity of a reply that decided no frame: zero rows, one column per speaker of the diarizer."""
        return np.zeros((0, self.engine.cfg.n_spk), dtype=np.float32)

    def _reply(self, live: _Live, final: bool) -> Reply:
        stream = live.stream
        frames, live.frames = live.frames, []
        act = np.concatenate(frames).astype(np.float32) if frames else self._no_frames()
        if stream.timing == "audio":
            live_segments: LiveSegments = stream.segments
            return Reply(segments=live_segments.drain(), interim=live_segments.interim_segments(),
                         transcript=live_segments.seglst() if final else [], activity=act, final=final)
        current = stream.transcript.final(stream.session_id)  # NeMo's arithmetic, whole transcript every reply
        changed = []
        for seg in current:
            key = (seg["speaker"], seg["start_time"])
            if live.sent.get(key) != seg:
                changed.append(seg)
                live.sent[key] = dict(seg)
        return Reply(segments=changed, transcript=current, activity=act, final=final)

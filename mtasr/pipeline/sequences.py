"""Triton sequences over the engine: `SequenceManager`, the facade the Triton model calls, composed of

- validation (`mtasr.pipeline.validation`): the request and its checks (`samples_of`, timing, speaker cap);
- admission (`mtasr.pipeline.admission`): the count cap, measured capacity, the warm-up;
- the sessions (`mtasr.pipeline.sessions`): ownership keys, the admitted-session record and table, idle expiry;
- scheduling (`mtasr.pipeline.schedule`): the engine thread that steps every session with a pending chunk at once;
- replies (`mtasr.pipeline.replies`): `Reply` and its JSON, made from each session's stream.

Triton-free. Requests arrive through `submit(request, respond)` from any thread (the Triton model's `execute`)
and are answered through `respond`, once each. Admission and ownership are decided at `submit`, so a refusal never
waits for a step. `handle(requests)` is the synchronous form (benchmarks, tests): submit all, run the schedule until
every one is answered. Nothing on the request path is O(live sessions): idle sessions wait in an `IdleClock`,
occupancy is counted as it changes, and the heap is trimmed by the reaper.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from mtasr.pipeline.admission import AdmissionControl
from mtasr.pipeline.engine import Engine
from mtasr.pipeline.replies import Reply, ReplyFormatter, Respond, deliver
from mtasr.pipeline.runner import release_free_memory
from mtasr.pipeline.schedule import Scheduler
from mtasr.pipeline.sessions import (
    AdmittedSession,
    ErrorCode,
    PendingRequest,
    Reaper,
    RefusalReason,
    RequestError,
    SessionEvents,
    SessionPolicy,
    SessionTable,
    key_digest,
    log,
)
from mtasr.pipeline.validation import AudioRequest, max_speakers_of, samples_of, timing_of
from mtasr.spec import SAMPLE_RATE, TIMINGS

HANDLE_TIMEOUT_S = 600.0  # `handle` beside a running engine thread gives up (RuntimeError) after this


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
    """Owns every admitted session, keyed by correlation id, and schedules their engine steps.

    `submit` may be called from any thread; the schedule runs on the engine thread (`start`) or inside `handle`;
    the reaper (`start_reaper`) frees idle sessions. One lock (the session table's) guards the registry and the
    queues, never a step.
    """

    def __init__(self, engine: Engine, policy: SessionPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic, events: SessionEvents | None = None,
                 stream_name: Callable[[int], str] = lambda corrid: f"stream_{corrid}",
                 timing: str = TIMINGS[0]) -> None:
        if timing not in TIMINGS:
            raise ValueError(f"unknown timing {timing!r}; use one of {TIMINGS}")
        self.engine = engine
        self.timing = timing
        self.policy = policy or SessionPolicy()
        self.clock = clock
        self.events = events or SessionEvents()
        self.table = SessionTable()
        self.admission = AdmissionControl(engine, self.policy, self.events)
        self.replies = ReplyFormatter(engine.cfg.n_spk)
        self.scheduler = Scheduler(engine, self.table, self.admission, self.replies, self.policy, self.events,
                                   clock, stream_name)
        self._reaper: Reaper | None = None
        self._closed = False

    @property
    def live(self) -> dict[int, AdmittedSession]:
        """The admitted sessions by correlation id."""
        return self.table.live

    # -------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Run the schedule on an engine thread and free idle sessions from the reaper."""
        self.start_reaper()
        self.scheduler.start()

    def start_reaper(self) -> None:
        """Free idle sessions eagerly from a background thread (not only when the next request arrives)."""
        if self._reaper is None:
            self._reaper = Reaper(self.expire_idle, self.policy.reap_period_s).start()

    def close(self) -> None:
        """Stop the threads, answer whatever is still waiting ("shutting down") and drop every session; never
        blocks for long (a server going away may leave a graph call stuck)."""
        with self.table.lock:
            self._closed = True
            self.scheduler.stop_soon()
        self.scheduler.join(5)
        if self._reaper is not None:
            self._reaper.stop()
            self._reaper = None
        waiting: list[PendingRequest] = []
        if self.table.lock.acquire(timeout=2):
            try:
                for session in self.table.live.values():
                    waiting += ([session.current] if session.current else []) + list(session.queue)
                    session.queue.clear()
                    session.ended = True
                self.table.live.clear()
                self.scheduler.ready.clear()
            finally:
                self.table.lock.release()
        shutdown = RequestError("server shutting down: the session is closed", ErrorCode.UNAVAILABLE,
                                RefusalReason.SHUTDOWN)
        deliver([(p.respond, Reply.refusal(shutdown)) for p in waiting])

    def warm_up(self, sessions: int = 2, max_seconds: float = 5.0) -> None:
        """Measure the first step-cost estimate before any client (`AdmissionControl.warm_up`; admission then goes up
        to `RAMP` x `sessions` until live steps measure more); nothing to measure when admission by capacity is off.
        Call before `start`."""
        if not self.admission.measures:
            return
        with self.scheduler.stepping:
            self.admission.warm_up(self.engine, self.timing, sessions, max_seconds)
        self.report_capacity()

    def report_capacity(self) -> None:
        """Refresh the capacity gauges (the reaper's pass does, not every step: each update is an IPC round trip)."""
        self.admission.report(len(self.table.live))

    # ------------------------------------------------------------------------------------------ submission
    def submit(self, req: AudioRequest, respond: Respond) -> None:
        """Take one request; `respond` is called once with its reply (now for a refusal, else after its step)."""
        if not req.ready:
            respond(Reply(activity=self.replies.no_frames()))
            return
        now = self.clock()
        try:
            samples, error = samples_of(req), None
        except RequestError as exc:
            samples, error = None, exc
        refusal: RequestError | None = None
        started = False
        with self.table.lock:
            try:
                if self._closed:
                    raise RequestError("server shutting down", ErrorCode.UNAVAILABLE, RefusalReason.SHUTDOWN)
                if req.start:
                    if error is not None:
                        raise error
                    session = self._admit(req, now, samples)
                    started = True
                else:
                    session = self.table.owned(req.corrid, req.session_key)
                session.queue.append(PendingRequest(req, respond, now, samples, error))
                self.table.idle.remove(req.corrid)
                self.scheduler.schedule(session)
                sessions = len(self.table.live)
            except RequestError as exc:
                refusal = exc
        if refusal is not None:
            self.events.refused(refusal.reason)
            respond(Reply.refusal(refusal))
            return
        if started:
            self.events.started()
            self.events.occupancy(sessions, self.table.speakers)

    def _admit(self, req: AudioRequest, now: float, samples: np.ndarray) -> AdmittedSession:
        """Admit a START (under the table's lock): key, duplicate, count cap, measured capacity, timing, cap."""
        owner = key_digest(req.session_key)
        if req.corrid in self.table.live:
            raise RequestError(f"sequence {req.corrid} is already live: a second START is refused (use a fresh "
                               "sequence id)", ErrorCode.ALREADY_EXISTS, RefusalReason.DUPLICATE_START)
        self.admission.check(len(self.table.live), now)
        session = AdmittedSession(req.corrid, owner, timing_of(req, self.timing),
                                  anchor=now - samples.size / SAMPLE_RATE,
                                  max_speakers=max_speakers_of(req, self.engine.cfg.n_spk))
        self.table.live[req.corrid] = session
        return session

    # ----------------------------------------------------------------------------------------- synchronous
    def handle(self, requests: list[AudioRequest]) -> list[Reply]:
        """Process requests (any sequences, any order of arrival); one reply per request, in order."""
        got = _Collector(len(requests))
        for i, req in enumerate(requests):
            self.submit(req, got.responder(i))
        if self.scheduler.running:
            got.done.wait(HANDLE_TIMEOUT_S)
        else:
            self.scheduler.run_until(got.done)
        if not got.done.is_set():
            raise RuntimeError("the schedule stopped with requests unanswered")
        return got.replies  # type: ignore[return-value]

    # --------------------------------------------------------------------------------------------- expiry
    def expire_idle(self) -> list[int]:
        """Drop sessions that have been idle (nothing queued or in flight) for longer than the idle timeout: a
        client that vanished. O(expired). Returns their correlation ids."""
        gone, sessions = self.table.expire(self.clock(), self.policy.idle_timeout_s)
        streams = [session.stream for _, session in gone if session.stream is not None]
        if streams:
            self.scheduler.close_streams(streams)
        if gone:
            log.warning("expired %d idle session(s) after %.1f s without a request; %d live",
                        len(gone), self.policy.idle_timeout_s, sessions)
            self.events.expired(len(gone))
            self.events.occupancy(sessions, self.table.speakers)
        if self.table.take_freed():
            release_free_memory()  # freed sessions' arrays: give the pages back to the OS (off the request path)
        self.report_capacity()  # here, not per step: each gauge update is an IPC round trip
        return [corrid for corrid, _ in gone]

"""The schedule of the engine steps over every admitted session, run by one engine thread (or inside
`SequenceManager.handle`). Triton-free. A round:

1. take what was submitted; push each session's next request (one per session per round, in request order);
2. ONE `engine.step` over every session with a pending chunk, whichever executes their requests came in;
3. answer each request once all the chunks it completed are stepped (a request that completes no chunk is
   answered as soon as the ones before it are); repeat, taking new submissions between steps.

A session ends at END, on a failure of its own (its requests get the error, nobody else's do) or when it lags
behind real time by more than the policy's limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from mtasr.pipeline.admission import AdmissionControl
from mtasr.pipeline.replies import Reply, ReplyFormatter, Respond, deliver
from mtasr.pipeline.sessions import (
    AdmittedSession,
    ErrorCode,
    PendingRequest,
    RefusalReason,
    RequestError,
    SessionEvents,
    SessionPolicy,
    SessionTable,
    log,
)

Out = list[tuple[Respond, Reply]]


class Scheduler:
    """Pushes the sessions' requests into their streams, steps the engine over all of them at once and answers.

    `schedule` (under the table's lock) puts a session with a request to push on the ready list and wakes the
    engine thread; `stepping` is held by whoever runs rounds (the engine thread, `run_until`, the warm-up)."""

    def __init__(self, engine, table: SessionTable, admission: AdmissionControl, replies: ReplyFormatter,
                 policy: SessionPolicy, events: SessionEvents, clock: Callable[[], float],
                 stream_name: Callable[[int], str]) -> None:
        self.engine = engine
        self.table = table
        self.admission = admission
        self.replies = replies
        self.policy = policy
        self.events = events
        self.clock = clock
        self.stream_name = stream_name
        self.ready: list[AdmittedSession] = []  # sessions with a request to push (guarded by the table's lock)
        self.closing: list = []  # expired sessions' streams the engine thread closes (guarded by the table's lock)
        self._busy: dict[int, AdmittedSession] = {}  # sessions with pending chunks (engine thread only)
        self._worst_lag: float | None = None  # the largest lag among this round's step-completing replies
        self._wake = threading.Condition(table.lock)
        self.stepping = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = False

    # -------------------------------------------------------------------------------------------- the thread
    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Run rounds on the engine thread."""
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="mtasr-engine", daemon=True)
            self._thread.start()

    def stop_soon(self) -> None:
        """Ask the engine thread to stop (call under the table's lock)."""
        self._stop = True
        self._wake.notify_all()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def schedule(self, session: AdmittedSession) -> None:
        """Put `session` on the ready list (under the table's lock) and wake the engine thread."""
        if not session.scheduled and not session.ended:
            session.scheduled = True
            self.ready.append(session)
            self._wake.notify()

    def close_streams(self, streams: list) -> None:
        """Free expired sessions' streams: here when no round runs, else by the engine thread before its next."""
        if self.stepping.acquire(blocking=False):
            try:
                for s in streams:
                    self.engine.close(s)
            finally:
                self.stepping.release()
        else:
            with self.table.lock:
                self.closing += streams
                self._wake.notify()

    def run_until(self, done: threading.Event) -> None:
        """Run rounds on this thread until `done` is set or nothing is left to do (no engine thread)."""
        with self.stepping:
            while not done.is_set() and self.cycle():
                pass

    def _run(self) -> None:
        while True:
            with self.table.lock:
                while not (self.ready or self._busy or self.closing or self._stop):
                    self._wake.wait(1.0)
                if self._stop:
                    return
            with self.stepping:
                try:
                    self.cycle()
                except Exception:  # noqa: BLE001 - a defect must not stop the schedule for every other session
                    log.exception("engine thread: a scheduling round failed")
                    self._abort_busy()

    # --------------------------------------------------------------------------------------------- a round
    def cycle(self) -> bool:
        """One round: push the next request of every ready session, then one step over every session with a
        pending chunk, its replies sent. False when there was nothing to do."""
        with self.table.lock:
            ready, self.ready = self.ready, []
            closing, self.closing = self.closing, []
            for session in ready:
                session.scheduled = False
        for stream in closing:
            self.engine.close(stream)
        out: Out = []
        for session in ready:
            self._feed(session, out)
        deliver(out)
        if not self._busy:
            self._report_lag()
            return bool(ready or closing)
        t0 = time.perf_counter()
        sessions, speakers, fill = self._step(out)
        deliver(out)
        seconds = time.perf_counter() - t0
        if sessions:
            self.admission.observe(sessions, speakers, seconds, fill, len(self.table.live))
            self.events.stepped(seconds)
        self._report_lag()
        return True

    def _report_lag(self) -> None:
        """One lag observation per round, its worst session's: metric updates cost an IPC round trip each
        (~50 us in Triton's Python backend), so nothing per session is reported per step."""
        if self._worst_lag is not None:
            self.events.lag(self._worst_lag)
            self._worst_lag = None

    def _feed(self, session: AdmittedSession, out: Out) -> None:
        """Push `session`'s next request (engine thread); it waits for the step when it completed a chunk."""
        if session.ended or session.current is not None:
            return
        with self.table.lock:
            p = session.queue.popleft() if session.queue else None
        if p is not None:
            self._push(session, p, out)
        self._settle(session)

    def _settle(self, session: AdmittedSession) -> None:
        """After `session`'s request was answered: its next one goes on the ready list, or it starts idling."""
        if session.ended or session.current is not None:
            return
        with self.table.lock:
            if session.queue:
                self.schedule(session)
            elif not session.ended:
                self.table.idle.touch(session.corrid, session, self.clock())

    def _push(self, session: AdmittedSession, p: PendingRequest, out: Out) -> None:
        if p.error is not None:
            self.events.refused(p.error.reason)
            out.append((p.respond, Reply.refusal(p.error)))
            return
        try:
            if session.stream is None:
                session.stream = self.engine.new_stream(self.stream_name(session.corrid), session.timing,
                                                        max_speakers=session.max_speakers)
            self.engine.push_audio(session.stream, p.samples, last=p.request.end)
        except Exception as exc:  # noqa: BLE001 - this session's processing failed: it ends, nobody else's does
            self._fail(session, p, f"{type(exc).__name__}: {exc}", out)
            return
        if session.stream.pending:
            session.current = p
            self._busy[session.corrid] = session
        else:
            self._answer(session, p, out)

    def _step(self, out: Out) -> tuple[int, int, float]:
        """ONE engine step over every session with a pending chunk; answers the requests it completes. Returns
        the sessions stepped, their active speakers and how full their state was (summed)."""
        sessions = list(self._busy.values())
        try:
            outs = self.engine.step([s.stream for s in sessions])
        except Exception as exc:  # noqa: BLE001 - the engine could not tell whose rows failed: all of them end
            for s in sessions:
                self._fail(s, s.current, f"{type(exc).__name__}: {exc}", out)
            return 0, 0, 0.0
        by_id = {o.session_id: o for o in outs}
        speakers, fill = 0, 0.0
        for s in sessions:
            o = by_id.get(s.stream.session_id)
            if o is None:
                continue
            error = getattr(o, "error", None)
            if error:  # the engine isolated this session's failure: it ends alone
                self._fail(s, s.current, str(error), out)
                continue
            s.frames.append(o.activity)
            speakers += len(o.active_speakers)
            fill += self.admission.fill(s.stepped)
            s.stepped += 1
            self._count_speakers(s)
            if not s.stream.pending:
                del self._busy[s.corrid]
                p, s.current = s.current, None
                self._answer(s, p, out)
                self._settle(s)
        return len(outs), speakers, fill

    def _answer(self, session: AdmittedSession, p: PendingRequest, out: Out) -> None:
        """The reply to `p`, whose chunks are all stepped; the session ends at END or when it lags too far."""
        stream = session.stream
        req = p.request
        now = self.clock()
        lag = max(0.0, now - max(p.arrived, session.anchor + stream.audio_seconds))
        if lag > self.policy.lag_limit_s and not req.end:
            self._fail(session, p, None, out, RequestError(
                f"sequence {req.corrid} ended: {lag:.1f} s behind real time (limit {self.policy.lag_limit_s:g} s): "
                "the server is overloaded", ErrorCode.UNAVAILABLE, RefusalReason.LAGGING))
            return
        try:
            if req.end:
                self.engine.finish(stream)
            reply = self.replies.reply(session, final=req.end)
        except Exception as exc:  # noqa: BLE001 - a failure in this session's words or turns ends it alone
            self._fail(session, p, f"{type(exc).__name__}: {exc}", out)
            return
        reply.lag_s, reply.audio_s = lag, stream.audio_seconds
        if reply.activity.shape[0] or req.end:
            self._worst_lag = max(self._worst_lag or 0.0, lag)
            self.admission.replied(now, lag)  # behind real time: a client ahead of it waits by its own choice
        out.append((p.respond, reply))
        if req.end:
            self._end(session, out)

    def _fail(self, session: AdmittedSession, p: PendingRequest | None, why: str | None, out: Out,
              error: RequestError | None = None) -> None:
        """End `session` after a failure of its own: `p` (and whatever it still had queued) gets the error."""
        error = error or RequestError(f"internal error, sequence {session.corrid} dropped: {why}",
                                      ErrorCode.INTERNAL, RefusalReason.INTERNAL)
        if p is not None:
            self.events.refused(error.reason)
            out.append((p.respond, Reply.refusal(error)))
        self._end(session, out, error)

    def _end(self, session: AdmittedSession, out: Out, error: RequestError | None = None) -> None:
        """Drop `session` (END, failure, lag): its engine state is freed now; queued requests get `error`."""
        self._busy.pop(session.corrid, None)
        left, live = self.table.remove(session)
        session.current = None
        for q in left:
            after = error or RequestError(f"sequence {session.corrid} has ended", ErrorCode.NOT_FOUND,
                                          RefusalReason.NOT_OWNER)
            self.events.refused(after.reason)
            out.append((q.respond, Reply.refusal(after)))
        if session.stream is not None:
            self.engine.close(session.stream)
        self.events.occupancy(live, self.table.speakers)

    def _abort_busy(self) -> None:
        """After a defect in a round: end the sessions caught in it, answer them."""
        out: Out = []
        for session in list(self._busy.values()):
            self._fail(session, session.current, "the scheduling round failed", out)
        self._busy.clear()
        deliver(out)

    def _count_speakers(self, session: AdmittedSession) -> None:
        n = len(session.stream.speakers)
        if n != session.speakers:
            live = self.table.add_speakers(n - session.speakers)
            session.speakers = n
            self.events.occupancy(live, self.table.speakers)

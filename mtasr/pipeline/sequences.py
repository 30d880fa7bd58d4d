"""Streaming sequences over the engine: START/END/CORRID handling, ownership, admission, validation, idle
expiry, responses.

Triton-free: the Triton model translates its requests into `AudioRequest`s and `Reply`s back.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mtasr.pipeline.engine import Engine, Session
from mtasr.pipeline.runner import release_free_memory
from mtasr.pipeline.sessions import (
    ErrorCode,
    Reaper,
    RefusalReason,
    RequestError,
    SessionEvents,
    SessionPolicy,
    key_digest,
    log,
    same_owner,
)
from mtasr.spec import MAX_CHUNK_SECONDS, SAMPLE_RATE, TIMINGS


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
    ready: bool = True  # False: a batcher's filler request (no client waits for it); answered empty, not counted


@dataclass
class Reply:
    """The answer to one request: an error, or segments, transcript and activity."""

    error: str | None = None
    error_code: ErrorCode | None = None
    segments: list[dict] = field(default_factory=list)  # final since the last reply (nemo: changed since)
    interim: list[dict] = field(default_factory=list)  # each speaker's unstable tail (nemo: none)
    transcript: list[dict] = field(default_factory=list)  # whole session at END (nemo: in every reply)
    # frames x speakers (the diarizer's count); the manager's replies always carry its columns, even with no frames
    activity: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    final: bool = False

    @classmethod
    def refusal(cls, exc: RequestError) -> Reply:
        return cls(error=str(exc), error_code=exc.code)

    def segments_json(self) -> bytes:
        return json.dumps(self.segments).encode()

    def interim_json(self) -> bytes:
        return json.dumps(self.interim).encode()

    def transcript_json(self) -> bytes:
        return json.dumps(self.transcript).encode()


@dataclass
class _Live:
    session: Session
    owner: bytes  # SHA-256 of the session key
    last_seen: float
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


class SequenceManager:
    """Owns every live session, keyed by correlation id, and nothing else.

    `handle` and `expire_idle` may be called from different threads (Triton's execute thread and the reaper);
    one lock serialises them.
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
        self.live: dict[int, _Live] = {}
        self._lock = threading.Lock()
        self._reaper: Reaper | None = None

    def start_reaper(self) -> None:
        """Free idle sessions eagerly from a background thread (not only when the next request arrives)."""
        if self._reaper is None:
            self._reaper = Reaper(self.expire_idle, self.policy.reap_period_s).start()

    def close(self) -> None:
        """Stop the reaper and drop every session; never blocks for long (a server going away may leave a
        request stuck mid-call, holding the lock)."""
        if self._reaper is not None:
            self._reaper.stop()
            self._reaper = None
        if self._lock.acquire(timeout=2):
            try:
                self.live.clear()
            finally:
                self._lock.release()

    def expire_idle(self, keep: frozenset[int] = frozenset()) -> list[int]:
        """Drop sessions not heard from within the idle timeout (a client that vanished), except `keep`."""
        with self._lock:
            return self._expire(keep)

    def _expire(self, keep: frozenset[int]) -> list[int]:
        now = self.clock()
        gone = [c for c, s in self.live.items() if c not in keep and now - s.last_seen > self.policy.idle_timeout_s]
        for c in gone:
            self.engine.close(self.live.pop(c).session)
        if gone:
            log.warning("expired %d idle session(s) after %.1f s without a request; %d live",
                        len(gone), self.policy.idle_timeout_s, len(self.live))
            self.events.expired(len(gone))
            self._report_occupancy()
            release_free_memory()
        return gone

    def _report_occupancy(self) -> None:
        self.events.occupancy(len(self.live), sum(len(s.session.speakers) for s in self.live.values()))

    def handle(self, requests: list[AudioRequest]) -> list[Reply]:
        """Process a batch of requests (any sequences); one reply per request, in order."""
        with self._lock:
            self._expire(frozenset(r.corrid for r in requests))
            return self._handle(requests)

    def _admit(self, req: AudioRequest) -> _Live:
        """The live session this request may use (opened here on START); RequestError otherwise."""
        live = self.live.get(req.corrid)
        if req.start:
            owner = key_digest(req.session_key)
            if live is not None:
                raise RequestError(f"sequence {req.corrid} is already live: a second START is refused (use a fresh "
                                   "sequence id)", ErrorCode.ALREADY_EXISTS, RefusalReason.DUPLICATE_START)
            if len(self.live) >= self.policy.max_sessions:
                raise RequestError(f"server full ({self.policy.max_sessions} sessions): try again later",
                                   ErrorCode.UNAVAILABLE, RefusalReason.FULL)
            timing = req.timing or self.timing
            if timing not in TIMINGS:
                raise RequestError(f"unknown timing {timing!r}: use one of {', '.join(TIMINGS)}")
            return _Live(self.engine.new_session(self.session_name(req.corrid), timing), owner, self.clock())
        if live is None or not same_owner(live.owner, req.session_key):
            # an unknown id and another client's id get the same answer: no oracle for live ids
            raise RequestError(f"sequence {req.corrid} is not open for this client: start it with START and send "
                               "its session key with every request (it may have ended or timed out)",
                               ErrorCode.NOT_FOUND, RefusalReason.NOT_OWNER)
        return live

    def _handle(self, requests: list[AudioRequest]) -> list[Reply]:
        replies: list[Reply | None] = [None] * len(requests)
        touched: list[tuple[int, _Live]] = []
        seen: set[int] = set()
        for i, req in enumerate(requests):
            if not req.ready:
                replies[i] = Reply(activity=self._no_frames())
                continue
            try:
                if req.corrid in seen:
                    raise RequestError(f"two requests of sequence {req.corrid} in one batch")
                samples = samples_of(req)
                live = self._admit(req)
                if req.start:
                    self.live[req.corrid] = live
                    self.events.started()
                self.engine.push_audio(live.session, samples, last=req.end)
                seen.add(req.corrid)
                touched.append((i, live))
            except RequestError as exc:
                self.events.refused(exc.reason)
                replies[i] = Reply.refusal(exc)
        t0 = time.perf_counter()
        try:
            activity = self._run([live.session for _, live in touched])
        except Exception as exc:  # a failed graph call: these sequences' state is unreliable now, drop them
            for i, live in touched:
                self.engine.close(live.session)
                self.live.pop(requests[i].corrid, None)
                self.events.refused(RefusalReason.INTERNAL)
                replies[i] = Reply(error=f"internal error, sequence {requests[i].corrid} dropped: "
                                         f"{type(exc).__name__}: {exc}", error_code=ErrorCode.INTERNAL)
            self._report_occupancy()
            release_free_memory()
            return replies  # type: ignore[return-value]
        if touched:
            self.events.stepped(time.perf_counter() - t0)
        for i, live in touched:
            live.last_seen = self.clock()  # the server's own step time is not the client's silence
            req = requests[i]
            if req.end:
                self.engine.finish(live.session)
            replies[i] = self._reply(live, activity.get(live.session.session_id), final=req.end)
            if req.end:
                self.engine.close(live.session)
                del self.live[req.corrid]
        self._report_occupancy()
        if any(requests[i].end for i, _ in touched):
            release_free_memory()  # a session's arrays are freed: give the pages back to the OS
        return replies  # type: ignore[return-value]

    def _run(self, sessions: list[Session]) -> dict[str, np.ndarray]:
        """Step until no session has a pending chunk; every step batches all sessions that have one."""
        frames: dict[str, list[np.ndarray]] = {s.session_id: [] for s in sessions}
        while True:
            outs = self.engine.step([s for s in sessions if s.pending])
            if not outs:
                break
            for out in outs:
                frames[out.session_id].append(out.activity)
        return {k: (np.concatenate(v) if v else self._no_frames()) for k, v in frames.items()}

    def _no_frames(self) -> np.ndarray:
        """Activity of a reply that decided no frame: zero rows, one column per speaker of the diarizer."""
        return np.zeros((0, self.engine.cfg.n_spk), dtype=np.float32)

    def _reply(self, live: _Live, activity: np.ndarray | None, final: bool) -> Reply:
        session = live.session
        act = (activity if activity is not None else self._no_frames()).astype(np.float32)
        if session.timing == "audio":
            words = session.words
            return Reply(segments=words.drain(), interim=words.interim_segments(),
                         transcript=words.seglst() if final else [], activity=act, final=final)
        current = session.transcript.final(session.session_id)  # NeMo's arithmetic, whole transcript every reply
        changed = []
        for seg in current:
            key = (seg["speaker"], seg["start_time"])
            if live.sent.get(key) != seg:
                changed.append(seg)
                live.sent[key] = dict(seg)
        return Reply(segments=changed, transcript=current, activity=act, final=final)

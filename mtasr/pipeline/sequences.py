"""Streaming sequences over the engine: START/END/CORRID handling, validation, idle timeout, responses.

Triton-free: the Triton model translates its requests into `AudioRequest`s and `Reply`s back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mtasr.pipeline.engine import Engine, Session
from mtasr.spec import MAX_CHUNK_SECONDS, NUM_SPEAKERS, SAMPLE_RATE


class RequestError(ValueError):
    """A request that is refused; the message goes back to the client, the sequence is left as it was."""


@dataclass
class AudioRequest:
    """One request of a sequence, as the sequence batcher delivers it."""

    corrid: int
    start: bool
    end: bool
    audio: np.ndarray | None = None  # float32 samples, or None
    audio_int16: np.ndarray | None = None


@dataclass
class Reply:
    """The answer to one request: an error, or segments, transcript and activity."""

    error: str | None = None
    segments: list[dict] = field(default_factory=list)  # changed since the sequence's last reply
    transcript: list[dict] = field(default_factory=list)  # whole session so far (final when `final`)
    activity: np.ndarray = field(default_factory=lambda: np.zeros((0, NUM_SPEAKERS), dtype=np.float32))
    final: bool = False

    def segments_json(self) -> bytes:
        return json.dumps(self.segments).encode()

    def transcript_json(self) -> bytes:
        return json.dumps(self.transcript).encode()


@dataclass
class _Live:
    session: Session
    last_seen: float
    sent: dict[tuple, dict] = field(default_factory=dict)  # (speaker, start) -> segment last sent


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
    """Owns every live session, keyed by correlation id, and nothing else."""

    def __init__(self, engine: Engine, idle_timeout_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 session_name: Callable[[int], str] = lambda corrid: f"stream_{corrid}") -> None:
        self.engine = engine
        self.idle_timeout_s = idle_timeout_s
        self.clock = clock
        self.session_name = session_name
        self.live: dict[int, _Live] = {}

    def expire_idle(self) -> list[int]:
        """Drop sessions not heard from within the idle timeout (a client that vanished)."""
        now = self.clock()
        gone = [c for c, s in self.live.items() if now - s.last_seen > self.idle_timeout_s]
        for c in gone:
            del self.live[c]
        return gone

    def handle(self, requests: list[AudioRequest]) -> list[Reply]:
        """Process a batch of requests (any sequences); one reply per request, in order."""
        self.expire_idle()
        replies: list[Reply | None] = [None] * len(requests)
        touched: list[tuple[int, _Live]] = []
        seen: set[int] = set()
        for i, req in enumerate(requests):
            try:
                if req.corrid in seen:
                    raise RequestError(f"two requests of sequence {req.corrid} in one batch")
                samples = samples_of(req)
                live = self.live.get(req.corrid)
                if req.start:
                    live = _Live(self.engine.new_session(self.session_name(req.corrid)), self.clock())
                    self.live[req.corrid] = live
                elif live is None:
                    raise RequestError(f"sequence {req.corrid} is not open: start it with START "
                                       "(it may have ended or timed out)")
                live.last_seen = self.clock()
                self.engine.push_audio(live.session, samples, last=req.end)
                seen.add(req.corrid)
                touched.append((i, live))
            except RequestError as exc:
                replies[i] = Reply(error=str(exc))
        try:
            activity = self._run([live.session for _, live in touched])
        except Exception as exc:  # a failed graph call: these sequences' state is unreliable now, drop them
            for i, _ in touched:
                self.live.pop(requests[i].corrid, None)
                replies[i] = Reply(error=f"internal error, sequence {requests[i].corrid} dropped: "
                                        f"{type(exc).__name__}: {exc}")
            return replies  # type: ignore[return-value]
        for i, live in touched:
            req = requests[i]
            replies[i] = self._reply(live, activity.get(live.session.session_id), final=req.end)
            if req.end:
                del self.live[req.corrid]
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
        n_spk = NUM_SPEAKERS
        return {k: (np.concatenate(v) if v else np.zeros((0, n_spk), dtype=np.float32)) for k, v in frames.items()}

    def _reply(self, live: _Live, activity: np.ndarray | None, final: bool) -> Reply:
        session = live.session
        current = session.transcript.final(session.session_id)
        changed = []
        for seg in current:
            key = (seg["speaker"], seg["start_time"])
            if live.sent.get(key) != seg:
                changed.append(seg)
                live.sent[key] = dict(seg)
        act = activity if activity is not None else np.zeros((0, NUM_SPEAKERS), dtype=np.float32)
        return Reply(segments=changed, transcript=current, activity=act.astype(np.float32), final=final)

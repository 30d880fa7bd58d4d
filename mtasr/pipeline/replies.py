"""The answer to one request of a sequence: `Reply` (an error, or this request's segments, interim tails,
transcript, speaker activity and the session's status), its JSON outputs, and how a session's reply is made from
its stream. Triton-free: the Triton glue turns a `Reply` into a response."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from mtasr.jsonio import dumps
from mtasr.pipeline.live_segments import LiveSegments
from mtasr.pipeline.sessions import ErrorCode, RequestError, log
from mtasr.pipeline.words import SegmentList

if TYPE_CHECKING:
    from mtasr.pipeline.sessions import AdmittedSession


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


class ReplyFormatter:
    """A session's replies, made from its stream: audio timing sends the segments that became final and the
    interim tails (the whole transcript at END); NeMo timing sends the segments that changed and the whole
    transcript every time. Activity has one column per speaker of the diarizer (`n_spk`)."""

    def __init__(self, n_spk: int) -> None:
        self.n_spk = n_spk

    def no_frames(self) -> np.ndarray:
        """Activity of a reply that decided no frame: zero rows, one column per speaker of the diarizer."""
        return np.zeros((0, self.n_spk), dtype=np.float32)

    def reply(self, session: AdmittedSession, final: bool) -> Reply:
        """The reply to the session's current request (its stream stepped), with the activity of its steps."""
        stream = session.stream
        frames, session.frames = session.frames, []
        act = np.concatenate(frames).astype(np.float32) if frames else self.no_frames()
        if stream.timing == "audio":
            live_segments: LiveSegments = stream.segments
            return Reply(segments=live_segments.drain(), interim=live_segments.interim_segments(),
                         transcript=live_segments.seglst() if final else [], activity=act, final=final)
        current = stream.transcript.final(stream.session_id)  # NeMo's arithmetic, whole transcript every reply
        changed = []
        for seg in current:
            key = (seg["speaker"], seg["start_time"])
            if session.sent.get(key) != seg:
                changed.append(seg)
                session.sent[key] = dict(seg)
        return Reply(segments=changed, transcript=current, activity=act, final=final)


def deliver(out: list[tuple[Respond, Reply]]) -> None:
    """Send each reply through its responder, then empty `out`; a responder that fails is logged, the rest go on."""
    for respond, reply in out:
        try:
            respond(reply)
        except Exception:  # noqa: BLE001 - a client gone (cancelled stream) must not stop the others' replies
            log.exception("could not send a reply")
    out.clear()

"""What the replies read of a stream's live segments, whichever service made them: a multitalker stream's
utterances (`mtasr.pipeline.words.LiveTranscript`) and a diarization stream's speaker turns
(`mtasr.diarization.turns.TurnTracker`) both provide it, and `SequenceManager` reads either through it."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class LiveSegments(Protocol):
    """SegLST segments of one stream as they become final."""

    def drain(self) -> list[dict]:
        """Segments that became final since the last call, in time order (each is returned once)."""
        ...

    def interim_segments(self) -> list[dict]:
        """Segments that may still change (a speaker still talking)."""
        ...

    def seglst(self) -> list[dict]:
        """The stream's transcript so far, in time order (after its last step: every segment, all final)."""
        ...

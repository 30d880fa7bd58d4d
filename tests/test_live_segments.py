"""Both kinds of live segments, a multitalker stream's utterances and a diarization stream's speaker turns, are
`LiveSegments` (what the replies read), and keep its contract: a final segment is drained once, the interim ones
are not final, and the transcript after the last step holds every segment."""

from __future__ import annotations

import numpy as np

from mtasr.diarization.turns import PostProcessing, TurnTracker
from mtasr.pipeline.live_segments import LiveSegments
from mtasr.pipeline.words import LiveTranscript

VOCAB = ["\u2581one", "\u2581two", "\u2581three"]


def _utterances() -> LiveTranscript:
    """Speaker 0 says "one two", pauses, says "three" (still open)."""
    live = LiveTranscript(VOCAB, 0.08, frames_per_step=14, pause_sec=0.6)
    live.update({0: ([0, 1, 2], [2, 5, 20], [(0, 0)])}, decoded_end=1.7, audio_end=1.7, session_id="s")
    return live


def _turns() -> TurnTracker:
    """Speaker 0 talks for 0.8 s, then silence; speaker 1 starts talking at the end (still open)."""
    live = TurnTracker(2, PostProcessing(), "s")
    act = np.zeros((20, 2), np.float32)
    act[:10, 0] = act[18:, 1] = 0.9
    live.update(act)
    return live


def _finish(live: LiveSegments) -> None:
    if isinstance(live, TurnTracker):
        live.update(np.zeros((0, 2), np.float32), last=True)
    else:
        live.update({0: ([0, 1, 2], [2, 5, 20], [(0, 0)])}, decoded_end=1.7, audio_end=1.7, session_id="s",
                    last=True)


def test_utterances_and_turns_are_live_segments():
    for live in (_utterances(), _turns()):
        assert isinstance(live, LiveSegments), type(live).__name__


def test_an_object_without_interim_segments_is_not_live_segments():
    class DrainOnly:
        def drain(self) -> list[dict]:
            return []

        def seglst(self) -> list[dict]:
            return []

    assert not isinstance(DrainOnly(), LiveSegments)


def test_both_keep_the_contract_the_replies_rely_on():
    for live in (_utterances(), _turns()):
        name = type(live).__name__
        final, interim = live.drain(), list(live.interim_segments())
        assert len(final) == 1 and len(interim) == 1, name  # one final, one still open
        assert live.drain() == [], name  # a final segment is handed out once
        _finish(live)
        last = live.drain()
        assert [(s["speaker"], s["start_time"]) for s in last] == [(s["speaker"], s["start_time"]) for s in interim]
        assert list(live.interim_segments()) == [], name
        whole = live.seglst()
        assert whole == sorted(final + last, key=lambda s: (s["start_time"], s["speaker"])), name
        assert {s["session_id"] for s in whole} == {"s"}, name

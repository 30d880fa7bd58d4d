"""Audio-time words and utterances from a speaker's RNNT hypothesis, and the live transcript built from them.

A speaker instance decodes only the steps in which it is active (cache gating), so its hypothesis frame indices
count that instance's own frames, not the session's. Each run of the instance is logged as (session step, frames
decoded before it); a hypothesis frame maps to the session's encoder frame `step * frames_per_step + (frame -
decoded_before)`, i.e. to audio time. NeMo's `SpeakerTaggedASR` instead adds the hypothesis frame to a chunk
offset (`mtasr.pipeline.transcript`, the `nemo` timing mode); `mtasr-reference --timing audio` maps NeMo's own
hypotheses with `session_frames` below, which is how both are compared.

Utterances: a speaker's words split where the gap between two words is at least `pause_sec`. An utterance is
final once a later word of that speaker exists, or the session's decoded audio has run `pause_sec` past its last
word, or the session ends; an open utterance longer than `MAX_UTTERANCE_SEC` releases all its words but the last
as final. A final utterance is sent once and never changes (a token that would continue its last word after that
starts a new word).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

from mtasr.greedy import tokens_to_words
from mtasr.jsonio import dumps

# Measured on the 20 held-out demo sessions (python -m demo_models.pause_threshold): gaps between a speaker's
# words within a turn had median 0.24 s (p90 0.48 s), at turn boundaries 1.28 s; "gap >= 0.6 s" found turn
# boundaries with the best F1 of the candidates (0.887: precision 0.90, recall 0.87; 0.5 s 0.883, 0.8 s 0.853).
DEFAULT_PAUSE_SEC = 0.6
# A speaker who never pauses for that long still gets final segments: once the open utterance spans this much,
# its words but the last (which may still grow) become final. Bounds the interim tail, hence every reply.
MAX_UTTERANCE_SEC = 20.0


@dataclass(frozen=True, slots=True)
class TimedWord:
    text: str
    start: float  # seconds of session audio
    end: float
    first_token: int = 0  # index of its first token in the token list it was built from

    def shifted(self, tokens: int) -> TimedWord:
        """The same word with its first token index moved by `tokens`."""
        return TimedWord(self.text, self.start, self.end, self.first_token + tokens)


def session_frames(frame_indices: Sequence[int], runs: Sequence[tuple[int, int]], frames_per_step: int) -> list[int]:
    """Hypothesis frame indices -> session encoder frames; `runs` = (session step, frames decoded before it)."""
    starts = [before for _, before in runs]
    out = []
    for f in frame_indices:
        r = bisect.bisect_right(starts, f) - 1
        step, before = runs[r]
        out.append(step * frames_per_step + (f - before))
    return out


def timed_words(tokens: Sequence[int], frames: Sequence[int], vocabulary: Sequence[str], frame_sec: float,
                audio_end: float | None = None) -> list[TimedWord]:
    """Words of `tokens` (session frames `frames`), start at their first token's frame, end one frame after their
    last token's; clipped to `audio_end`."""
    words = []
    for w in tokens_to_words(list(tokens), list(frames), vocabulary):
        text = w.text.strip()
        if not text:
            continue
        start, end = w.first_frame * frame_sec, (w.last_frame + 1) * frame_sec
        if audio_end is not None:
            start, end = min(start, audio_end), min(end, audio_end)
        words.append(TimedWord(text, round(start, 3), round(end, 3), w.first_token))
    return words


def split_utterances(words: Sequence[TimedWord], pause_sec: float) -> list[list[TimedWord]]:
    """Consecutive words, split where a gap of at least `pause_sec` separates them."""
    groups: list[list[TimedWord]] = []
    for w in words:
        if groups and w.start - groups[-1][-1].end < pause_sec:
            groups[-1].append(w)
        else:
            groups.append([w])
    return groups


def utterance_segment(words: Sequence[TimedWord], speaker: str, session_id: str | None) -> dict:
    """A SegLST entry whose times derive from its words; `word_times` holds each word's [start, end]."""
    return {"session_id": session_id, "speaker": speaker, "start_time": words[0].start, "end_time": words[-1].end,
            "words": " ".join(w.text for w in words), "word_times": [[w.start, w.end] for w in words]}


class SegmentList(list):
    """Segments that are sent unchanged in many replies (the interim tails between steps): JSON-encoded once."""

    _json: bytes | None = None

    def json(self) -> bytes:
        if self._json is None:
            self._json = dumps(self)
        return self._json


@dataclass
class SpeakerWords:
    """One speaker's tokens not yet in a final utterance (token index `done` onwards), and the words already made of
    them: every word but the last (which the next token may continue), as long as its times are final (it ends
    before the audio received, so clipping cannot change it). Each update makes words of the new tokens only."""

    done: int = 0
    words: list[TimedWord] = field(default_factory=list)  # token indices relative to `done`
    upto: int = 0  # tokens (from `done`) that `words` covers


@dataclass
class LiveTranscript:
    """Final utterances (sent once) and interim tails per speaker, in audio time."""

    vocabulary: Sequence[str]
    frame_sec: float
    frames_per_step: int
    pause_sec: float = DEFAULT_PAUSE_SEC
    max_utterance_sec: float = MAX_UTTERANCE_SEC
    speakers: dict[int, SpeakerWords] = field(default_factory=dict)
    final: list[dict] = field(default_factory=list)  # every final segment so far
    pending: list[dict] = field(default_factory=list)  # final segments not yet sent
    interim: dict[int, dict] = field(default_factory=dict)  # speaker -> its unstable tail
    _interim_list: SegmentList | None = field(default=None, repr=False)

    def update(self, hyps: dict[int, tuple[Sequence[int], Sequence[int], Sequence[tuple[int, int]]]],
               decoded_end: float, audio_end: float, session_id: str | None, last: bool = False) -> None:
        """`hyps`: speaker -> (tokens, hypothesis frames, runs). `decoded_end`: session audio decoded so far (s)."""
        self._interim_list = None
        for spk, (tokens, frames, runs) in sorted(hyps.items()):
            state = self.speakers.setdefault(spk, SpeakerWords())
            todo = tokens[state.done :]
            start = state.done + state.upto
            frames_s = session_frames(frames[start:], runs, self.frames_per_step)
            new = [w.shifted(state.upto)
                   for w in timed_words(tokens[start:], frames_s, self.vocabulary, self.frame_sec, audio_end)]
            words = state.words + new
            groups = split_utterances(words, self.pause_sec)
            if groups and not last and decoded_end - groups[-1][-1].end < self.pause_sec:
                tail = groups.pop()  # the speaker may still be talking
                if len(tail) > 1 and tail[-1].end - tail[0].start > self.max_utterance_sec:
                    groups.append(tail[:-1])  # a speaker without pauses: release the words that are complete
                    tail = tail[-1:]
            else:
                tail = []
            name = f"speaker_{spk}"
            for g in groups:
                seg = utterance_segment(g, name, session_id)
                self.final.append(seg)
                self.pending.append(seg)
            consumed = tail[0].first_token if tail else len(todo)
            state.done += consumed
            # keep the open utterance's words but the last while their times are final, rebased to the new `done`
            kept: list[TimedWord] = []
            for w in tail[:-1]:
                if w.end >= audio_end:
                    break
                kept.append(w)
            state.words = [w.shifted(-consumed) for w in kept] if consumed else kept
            state.upto = tail[len(kept)].first_token - consumed if len(kept) < len(tail) else len(todo) - consumed
            if tail:
                self.interim[spk] = utterance_segment(tail, name, session_id)
            else:
                self.interim.pop(spk, None)

    def release(self, spk: int) -> int:
        """Tokens of speaker `spk` that are in final segments now, handed back: the next `update` gets that
        speaker's hypothesis without them (its token indices start again at 0)."""
        state = self.speakers.get(spk)
        if state is None:
            return 0
        done, state.done = state.done, 0
        return done  # `words` / `upto` are relative to `done`: unchanged

    def drain(self) -> list[dict]:
        """Final segments not sent yet, in time order (each is returned once)."""
        out, self.pending = sorted(self.pending, key=lambda s: (s["start_time"], s["speaker"])), []
        return out

    def interim_segments(self) -> SegmentList:
        """Each speaker's open utterance; the same list (and its JSON) until the next update."""
        if self._interim_list is None:
            self._interim_list = SegmentList(self.interim[k] for k in sorted(self.interim))
        return self._interim_list

    def seglst(self) -> list[dict]:
        """Every final segment, in time order."""
        return sorted(self.final, key=lambda s: (s["start_time"], s["speaker"]))

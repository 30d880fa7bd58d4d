"""Speaker-wise sentences and SegLST, as NeMo's `MultiTalkerInstanceManager.ASRState` builds them.

Each step, a speaker's whole hypothesis text is compared with the previous one; the new part extends the
speaker's last sentence, or starts a new one when it begins more than `sent_break_sec` after that sentence's
end. Times are `offset + frame * 0.08`, where `offset` is the start of the current step's chunk and `frame`
the hypothesis frame index (NeMo's arithmetic, kept as is).
"""

from __future__ import annotations

from dataclasses import dataclass, field

PUNCTUATION_LEADS = (".", ",", "?", "!")


def segment(speaker: str, start: float, end: float, words: str, session_id: str | None = None) -> dict:
    """One SegLST entry, rounded like NeMo's `get_new_sentence_dict`."""
    return {"speaker": speaker, "start_time": round(float(start), 3), "end_time": round(float(end), 3),
            "words": words.lstrip(), "session_id": session_id}


@dataclass
class Transcript:
    """Per-session transcript state."""

    frame_len_sec: float = 0.08
    sent_break_sec: float = 30.0
    sentences: dict[int, list[dict]] = field(default_factory=dict)  # speaker index -> sentences
    prev_text: dict[int, str] = field(default_factory=dict)
    seglst: list[dict] = field(default_factory=list)  # sorted by start time, rebuilt every step

    def _last_sentence_update(self, spk: int, end_time: float | None, diff: str) -> None:
        last = self.sentences[spk][-1]
        if end_time is not None:
            last["end_time"] = end_time
        last["words"] = (last["words"] + diff).strip()

    def update(self, hyps: dict[int, tuple[str, list[int]]], offset: float) -> set[int]:
        """`hyps`: speaker -> (whole text, token frame indices) for every speaker that has a hypothesis.

        Returns the speakers whose sentences changed.
        """
        changed: set[int] = set()
        for spk, (text, frames) in hyps.items():
            self.sentences.setdefault(spk, [])
            prev = self.prev_text.get(spk, "")
            diff = None if text == prev else (text.replace(prev, "") if prev in text else text.strip())
            if diff is not None:
                changed.add(spk)
                if frames:
                    start = offset + frames[0] * self.frame_len_sec
                    end = offset + (frames[-1] + 1) * self.frame_len_sec
                    sep = False
                else:  # no timestamps: NeMo falls back to the hypothesis length (0 frames here)
                    start = end = offset
                    sep = True
                last_end = self.sentences[spk][-1]["end_time"] if self.sentences[spk] else 0.0
                if sep or last_end == 0.0 or start > last_end + self.sent_break_sec:
                    stripped = diff.strip()
                    if stripped and stripped[0] in PUNCTUATION_LEADS:
                        self._last_sentence_update(spk, None, stripped[0])
                        diff = stripped[1:]
                    seg = segment(f"speaker_{spk}", start, end, diff)
                    if seg["words"].strip():
                        words = seg["words"].split()
                        words[0] = words[0].capitalize()
                        seg["words"] = " ".join(words)
                        self.sentences[spk].append(seg)
                else:
                    self._last_sentence_update(spk, end, diff)
            self.prev_text[spk] = text
        merged = [s for spk in hyps for s in self.sentences[spk]]
        self.seglst = sorted(merged, key=lambda s: s["start_time"])
        return changed

    def final(self, session_id: str) -> list[dict]:
        """The session's SegLST as NeMo's `generate_seglst_dicts_from_parallel_streaming` writes it."""
        out = [segment(s["speaker"], s["start_time"], s["end_time"], s["words"], session_id) for s in self.seglst]
        return sorted([s for s in out if s["words"].strip()], key=lambda s: s["start_time"])

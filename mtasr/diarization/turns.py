"""Speaker activity -> speaker turns, NeMo's diarization post-processing (`ts_vad_post_processing`: hysteresis
binarisation on 10 ms frames, padding, then short-speech deletion and short-gap filling) done incrementally, and
which turns are final: those no later frame can change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mtasr.pipeline.transcript import segment
from mtasr.spec import SUBSAMPLING

TEN_MS = 0.01  # NeMo repeats each 80 ms probability over its 10 ms frames and times those


@dataclass(frozen=True)
class PostProcessing:
    """NeMo's `PostProcessingParams` (its defaults)."""

    onset: float = 0.5
    offset: float = 0.5
    pad_onset: float = 0.0
    pad_offset: float = 0.0
    min_duration_on: float = 0.0
    min_duration_off: float = 0.0

    @property
    def horizon_sec(self) -> float:
        """How long after its end a closed turn may still grow: a later turn can merge into it through padding or
        a gap shorter than `min_duration_off`."""
        return self.pad_onset + self.pad_offset + self.min_duration_off


def _f32(x: float) -> float:
    return float(np.float32(x))


def _merge(segments: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """NeMo's `merge_overlap_segment`: sort by start, join segments whose end reaches the next start."""
    out: list[tuple[float, float]] = []
    for s, e in sorted(segments):
        if out and out[-1][1] >= s:  # NeMo keeps the chain's first start and its last segment's end
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def filter_segments(segments: list[tuple[float, float]], post: PostProcessing) -> list[tuple[float, float]]:
    """NeMo's `filtering` (speech first): drop turns shorter than `min_duration_on`, then fill gaps shorter than
    `min_duration_off`."""
    if post.min_duration_on > 0:
        segments = [(s, e) for s, e in segments if _f32(e - s) >= _f32(post.min_duration_on)]
    if post.min_duration_off > 0 and len(segments) > 1:
        ordered = sorted(segments)
        gaps = [(a[1], b[0]) for a, b in zip(ordered, ordered[1:], strict=False)]
        short = [g for g in gaps if _f32(g[1] - g[0]) < _f32(post.min_duration_off)]
        segments = _merge(segments + short)
    return segments


@dataclass
class _Binarizer:
    """NeMo's hysteresis `binarization` of one speaker, fed 80 ms frames as they are decided."""

    post: PostProcessing
    frames: int = 0  # 80 ms frames seen
    speech: bool = False
    start: float = 0.0
    closed: list[tuple[float, float]] = field(default_factory=list)

    def feed(self, probs: np.ndarray) -> None:
        p = self.post
        onset, offset = _f32(p.onset), _f32(p.offset)  # NeMo compares float32 tensors with the thresholds
        for v in probs.tolist():
            i = self.frames * SUBSAMPLING  # the block's first 10 ms frame: where a repeated value can switch
            if self.speech and v < offset:
                end = i * TEN_MS + p.pad_offset
                if end > max(0.0, self.start - p.pad_onset):
                    self.closed.append((_f32(max(0.0, self.start - p.pad_onset)), _f32(end)))
                self.start, self.speech = i * TEN_MS, False
            elif not self.speech and v > onset:
                self.start, self.speech = i * TEN_MS, True
            self.frames += 1

    def settle(self, end: float) -> None:
        """Forget the closed raw turns that end by `end` (they are inside final turns, or were filtered out)."""
        self.closed = [c for c in self.closed if c[1] > end]

    def segments(self) -> tuple[list[tuple[float, float]], tuple[float, float] | None]:
        """(closed segments merged as NeMo merges padded overlaps, the open one if speech runs to the end)."""
        open_ = None
        if self.speech and self.frames:
            last = self.frames * SUBSAMPLING - 1
            open_ = (_f32(max(0.0, self.start - self.post.pad_onset)), _f32(last * TEN_MS + self.post.pad_offset))
        return self.closed, open_


def turns(probs: np.ndarray, post: PostProcessing) -> list[tuple[float, float]]:
    """Offline: one speaker's (frames,) probabilities -> NeMo's segments, rounded to 10 ms as NeMo writes them."""
    b = _Binarizer(post)
    b.feed(np.asarray(probs, dtype=np.float32))
    closed, open_ = b.segments()
    merged = _merge(closed + ([open_] if open_ else []))
    return [(round(s, 2), round(e, 2)) for s, e in sorted(filter_segments(merged, post))]


class TurnTracker:
    """Per session: speaker turns from the growing activity; final turns are handed out once, in time order."""

    def __init__(self, n_spk: int, post: PostProcessing, session_id: str = "") -> None:
        self.n_spk = n_spk
        self.post = post
        self.session_id = session_id
        self._bins = [_Binarizer(post) for _ in range(n_spk)]
        self._seen = 0
        self._final: list[list[dict]] = [[] for _ in range(n_spk)]  # per speaker: a prefix that never changes
        self._sent = [0] * n_spk
        self._open: list[dict] = []

    def update(self, frames: np.ndarray, last: bool = False) -> None:
        """Feed the frames (frames, n_spk) decided since the last call; `last`: the stream ended, every turn is
        final."""
        self._seen += frames.shape[0]
        decided = self._seen * SUBSAMPLING * TEN_MS
        self._open = []
        for spk, b in enumerate(self._bins):
            b.feed(frames[:, spk])
            closed, running = b.segments()  # the raw turns not yet in a final one
            kept = sorted(filter_segments(_merge(closed + ([running] if running else [])), self.post))
            # settled: nothing later can reach it (no running turn and no frame to come within the horizon). Once
            # settled, a turn stays settled and no later turn merges with it or fills a gap to it, so its raw turns
            # are dropped and only the turns after it are made again: the work per step does not grow with the session
            limit = decided if running is None else min(decided, running[0])
            n_final = len(kept) if last else sum(1 for _, e in kept if e + self.post.horizon_sec < limit)
            segs = [segment(f"speaker_{spk}", round(s, 2), round(e, 2), "", self.session_id) for s, e in kept]
            self._final[spk].extend(segs[:n_final])
            self._open.extend(segs[n_final:])
            if n_final:
                b.settle(kept[n_final - 1][1])
        self._open.sort(key=_order)

    def drain(self) -> list[dict]:
        """Turns that became final since the last call, in time order."""
        out = [g for spk, segs in enumerate(self._final) for g in segs[self._sent[spk] :]]
        self._sent = [len(segs) for segs in self._final]
        return sorted(out, key=_order)

    def interim_segments(self) -> list[dict]:
        """Turns that may still change (a speaker still talking, or within the merge horizon)."""
        return list(self._open)

    def seglst(self) -> list[dict]:
        return sorted([g for segs in self._final for g in segs] + self._open, key=_order)


def _order(seg: dict) -> tuple:
    return seg["start_time"], seg["speaker"]

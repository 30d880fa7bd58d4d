"""Audio in pieces of any size -> the diarizer's chunks, exactly as NeMo's `streaming_feat_loader` cuts the whole
file's features: `chunk_len` x 8 new mel frames with up to `chunk_left_context` x 8 frames before and
`chunk_right_context` x 8 after. A chunk is cut as soon as its right context is known; `finish()` cuts the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtasr.diarization.presets import DiarizationPreset
from mtasr.features import FeatureParams, StreamingLogMel
from mtasr.spec import SUBSAMPLING


@dataclass(frozen=True)
class DiarChunk:
    """One diarizer step's input: mel frames (frames, n_mels) time major, valid frames, context frames."""

    features: np.ndarray
    length: int
    left: int  # mel frames of left context at the start (NeMo's left_offset)
    right: int  # mel frames of right context at the end (NeMo's right_offset)

    @property
    def key(self) -> tuple[int, int, int, int]:
        """Chunks with the same key run in one graph call and one cache update."""
        return self.features.shape[0], self.length, self.left, self.right


class DiarChunker:
    """Incremental log-mel + chunking for one stream."""

    def __init__(self, params: FeatureParams, preset: DiarizationPreset) -> None:
        self.mel = StreamingLogMel(params)
        self.n_mels = params.n_mels
        self.step = preset.chunk_len * SUBSAMPLING
        self.lc = preset.chunk_left_context * SUBSAMPLING
        self.rc = preset.chunk_right_context * SUBSAMPLING
        self._frames = np.zeros((0, self.n_mels), dtype=np.float32)  # time major, from absolute frame _start
        self._start = 0
        self._next = 0  # absolute index of the next chunk's first new frame
        self.valid = 0  # valid mel frames so far
        self.finished = False

    def _cut(self, total: int | None) -> list[DiarChunk]:
        """Chunks whose frames are all known; `total` = the final frame count (incl. NeMo's padding frame)."""
        out = []
        known = self._start + self._frames.shape[0]
        while True:
            stt = self._next
            if total is None:
                end = stt + self.step
                if end + self.rc > known:
                    break
            else:
                if stt >= total and not (stt == 0 and total == 0):
                    break
                end = min(stt + self.step, total)
            left = min(self.lc, stt)
            right = self.rc if total is None else min(self.rc, total - end)
            frames = self._frames[stt - left - self._start : end + right - self._start]
            length = int(np.clip(self.valid - stt + left, 0, frames.shape[0]))
            out.append(DiarChunk(np.ascontiguousarray(frames), length, left, right))
            self._next = end
            if total is not None and end >= total:
                break
        keep = max(self._next - self.lc, self._start)
        self._frames = self._frames[keep - self._start :]
        self._start = keep
        return out

    def _append(self, feats: np.ndarray) -> None:
        if feats.shape[1]:
            self._frames = np.concatenate([self._frames, feats.T.astype(np.float32, copy=False)])

    def push(self, samples: np.ndarray) -> list[DiarChunk]:
        if self.finished:
            raise RuntimeError("stream already finished")
        feats = self.mel.push(samples)
        self.valid += feats.shape[1]
        self._append(feats)
        return self._cut(None)

    def finish(self) -> list[DiarChunk]:
        """End of stream: NeMo's preprocessor output has one more (zero) frame than its valid length, and the
        loader cuts over it."""
        if self.finished:
            return []
        self.finished = True
        feats = self.mel.flush()
        self.valid += feats.shape[1]
        self._append(feats)
        self._append(np.zeros((self.n_mels, 1), dtype=np.float32))
        return self._cut(self._start + self._frames.shape[0])

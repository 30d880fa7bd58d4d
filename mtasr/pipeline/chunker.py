"""Audio in pieces of any size -> the ASR's feature chunks, exactly as NeMo's `CacheAwareStreamingAudioBuffer`
(with `pad_and_drop_preencoded=True`) cuts the whole file's features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mtasr.features import FeatureParams, StreamingLogMel
from mtasr.pipeline.config import ChunkGeometry


@dataclass(frozen=True)
class Chunk:
    """Stage 1's output: one step's log-mel features (n_mels, frames) incl. the pre-encode cache, and how many of
    those frames are valid."""

    features: np.ndarray
    length: int


class FeatureChunker:
    """Incremental log-mel + chunking for one stream.

    NeMo's buffer holds the whole file's features plus the one zero frame its preprocessor appends, and cuts
    chunks of `chunk_frames` new frames, each preceded by `pre_encode_cache` frames of the previous ones (zeros
    before the first). A chunk is emitted as soon as all its frames are known; `finish()` emits the rest.
    """

    def __init__(self, params: FeatureParams, geometry: ChunkGeometry) -> None:
        self.geometry = geometry
        self.mel = StreamingLogMel(params)
        self.n_mels = params.n_mels
        self._frames = np.zeros((self.n_mels, 0), dtype=np.float32)  # pre-encode cache + not yet chunked
        self._start = 0  # absolute index of self._frames[:, 0]
        self._next = 0  # absolute index of the next chunk's first new frame
        self.finished = False

    def _append(self, feats: np.ndarray) -> None:
        if feats.shape[1]:
            self._frames = np.concatenate([self._frames, feats.astype(np.float32, copy=False)], axis=1)

    def _cut(self, final: bool) -> list[Chunk]:
        g = self.geometry
        out = []
        end = self._start + self._frames.shape[1]
        while self._next < end and (final or self._next + g.chunk_frames <= end):
            new = self._frames[:, self._next - self._start : self._next - self._start + g.chunk_frames]
            if new.shape[1] < g.min_frames:
                break
            if self._next == 0:  # NeMo: the first chunk gets a full cache of zeros
                cache = np.zeros((self.n_mels, g.pre_encode_cache), dtype=np.float32)
            else:  # the previous frames, left-padded with zeros while fewer exist
                lo = max(self._next - g.pre_encode_cache, 0)
                cache = self._frames[:, lo - self._start : self._next - self._start]
                cache = np.pad(cache, ((0, 0), (g.pre_encode_cache - cache.shape[1], 0)))
            chunk = np.concatenate([cache, new], axis=1)
            out.append(Chunk(chunk, chunk.shape[1]))
            self._next += g.shift_frames
        keep_from = max(self._start, self._next - g.pre_encode_cache, 0)
        self._frames = self._frames[:, keep_from - self._start :]
        self._start = keep_from
        return out

    def push(self, samples: np.ndarray) -> list[Chunk]:
        """Feed samples; returns the chunks (n_mels, frames) and their valid lengths that became complete."""
        if self.finished:
            raise RuntimeError("stream already finished")
        self._append(self.mel.push(samples))
        return self._cut(final=False)

    def finish(self) -> list[Chunk]:
        """End of stream: the remaining chunks, the last one possibly short."""
        if self.finished:
            return []
        self.finished = True
        self._append(self.mel.flush())
        # NeMo's preprocessor output has one more (zero) frame than the valid length, and the buffer keeps it.
        self._append(np.zeros((self.n_mels, 1), dtype=np.float32))
        return self._cut(final=True)


class AudioChunker(Protocol):
    """Audio pieces in, the chunks they complete out (`FeatureChunker`, the diarizer's `DiarChunker`)."""

    def push(self, samples: np.ndarray) -> list: ...

    def finish(self) -> list: ...


class StreamingSession(Protocol):
    """What `queue_audio` needs of a session (the multitalker and the diarization sessions both have it)."""

    chunker: AudioChunker
    samples: int
    pending: list


def queue_audio(session: StreamingSession, samples: np.ndarray, last: bool) -> None:
    """Buffer a piece of a session's audio; the chunks it completes (all of them at the end) queue up in
    `session.pending`."""
    chunks = session.chunker.push(samples) if samples.size else []
    session.samples += samples.size
    if last:
        chunks += session.chunker.finish()
    session.pending.extend(chunks)

"""Audio in pieces of any size -> the ASR's feature chunks, exactly as NeMo's `CacheAwareStreamingAudioBuffer`
(with `pad_and_drop_preencoded=True`) cuts the whole file's features."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from mtasr.features import NO_FRAMES, FeatureParams, Owed, StreamingLogMel, logmel_batch
from mtasr.pipeline.config import ChunkGeometry


@dataclass
class Chunk:
    """Stage 1's output: one step's log-mel features (n_mels, frames) incl. the pre-encode cache, and how many of
    those frames are valid. Cut when its audio has arrived; its features are computed when a step needs them
    (`compute_features`: every session of the step in one computation), in the engine's array module."""

    length: int
    first: int = 0  # absolute index of its first new frame
    features: Any = None  # (n_mels, length), once computed


class FeatureChunker:
    """Incremental log-mel + chunking for one stream.

    NeMo's buffer holds the whole file's features plus the one zero frame its preprocessor appends, and cuts
    chunks of `chunk_frames` new frames, each preceded by `pre_encode_cache` frames of the previous ones (zeros
    before the first). A chunk is cut as soon as all its frames are known (by the samples received); `finish()`
    cuts the rest. Frames are computed later, for many streams at once (`compute_features`).
    """

    def __init__(self, params: FeatureParams, geometry: ChunkGeometry, xp: ModuleType = np) -> None:
        self.geometry = geometry
        self.params = params
        self.mel = StreamingLogMel(params)
        self.n_mels = params.n_mels
        self.xp = xp
        self._frames = xp.zeros((self.n_mels, 0), dtype=np.float32)  # computed frames from index _start on
        self._start = 0
        self._computed = 0  # frames computed (absolute count)
        self._owed = 0  # frames known from the samples but not computed
        self._zero_frame = False  # NeMo's extra zero frame is due after the owed ones
        self._next = 0  # absolute index of the next chunk's first new frame
        self._waiting: list[Chunk] = []  # cut, features not filled yet
        self.finished = False

    @property
    def _known(self) -> int:
        return self._computed + self._owed + self._zero_frame

    def _cut(self, final: bool) -> list[Chunk]:
        g = self.geometry
        out = []
        end = self._known
        while self._next < end and (final or self._next + g.chunk_frames <= end):
            new = min(g.chunk_frames, end - self._next)
            if new < g.min_frames:
                break
            out.append(Chunk(g.pre_encode_cache + new, self._next))
            self._next += g.shift_frames
        self._waiting.extend(out)
        return out

    def push(self, samples: np.ndarray) -> list[Chunk]:
        """Feed samples; returns the chunks that became complete (features not computed yet)."""
        if self.finished:
            raise RuntimeError("stream already finished")
        self._owed = self.mel.push_samples(samples)  # every complete frame not computed yet
        return self._cut(final=False)

    def finish(self) -> list[Chunk]:
        """End of stream: the remaining chunks, the last one possibly short."""
        if self.finished:
            return []
        self.finished = True
        self._owed = self.mel.end_samples()
        # NeMo's preprocessor output has one more (zero) frame than the valid length, and the buffer keeps it.
        self._zero_frame = True
        return self._cut(final=True)

    def owed(self) -> Owed | None:
        """The samples of the frames to compute, and how many (None: nothing owed)."""
        return self.mel.owed(self._owed) if self._owed else None

    def receive(self, frames: Any) -> None:
        """The owed frames (n_mels, count), computed: fill the chunks waiting for them."""
        xp, count = self.xp, int(frames.shape[1])
        self.mel.consume(count)
        self._owed -= count
        parts = [self._frames, frames]
        if self._zero_frame and not self._owed:
            parts.append(xp.zeros((self.n_mels, 1), dtype=np.float32))
            self._zero_frame = False
        self._frames = xp.concatenate(parts, axis=1) if len(parts) > 1 else self._frames
        self._computed = self._start + int(self._frames.shape[1])
        g = self.geometry

        def end(chunk: Chunk) -> int:  # one past its last new frame
            return chunk.first + chunk.length - g.pre_encode_cache

        while self._waiting and end(self._waiting[0]) <= self._computed:
            chunk = self._waiting.pop(0)
            lo = chunk.first - g.pre_encode_cache
            if chunk.first == 0:  # NeMo: the first chunk gets a full cache of zeros
                pad, lo = g.pre_encode_cache, 0
            else:  # the previous frames, left-padded with zeros while fewer exist
                pad, lo = max(-lo, 0), max(lo, 0)
            part = self._frames[:, lo - self._start : end(chunk) - self._start]
            chunk.features = xp.concatenate([xp.zeros((self.n_mels, pad), dtype=np.float32), part], axis=1) \
                if pad else part
        keep_from = max(self._start, min([c.first for c in self._waiting] + [self._next]) - g.pre_encode_cache, 0)
        self._frames = self._frames[:, keep_from - self._start :]
        self._start = keep_from


def compute_features(params: FeatureParams, chunkers: list[FeatureChunker], xp: ModuleType = np) -> None:
    """The owed frames of every chunker, in one log-mel computation (`mtasr.features.logmel_batch`)."""
    jobs = [(c, job) for c in chunkers if (job := c.owed()) is not None or c._zero_frame]
    segments = [job if job is not None else NO_FRAMES for _, job in jobs]
    for (chunker, _), frames in zip(jobs, logmel_batch(params, segments, xp), strict=True):
        chunker.receive(frames)


class AudioChunker(Protocol):
    """Audio pieces in, the chunks they complete out (`FeatureChunker`, the diarizer's `DiarChunker`)."""

    def push(self, samples: np.ndarray) -> list: ...

    def finish(self) -> list: ...


class ChunkedStream(Protocol):
    """What `queue_audio` needs of a stream (the multitalker and the diarization streams both have it)."""

    chunker: AudioChunker
    samples: int
    pending: list


def queue_audio(stream: ChunkedStream, samples: np.ndarray, last: bool) -> None:
    """Buffer a piece of a stream's audio; the chunks it completes (all of them at the end) queue up in
    `stream.pending`."""
    chunks = stream.chunker.push(samples) if samples.size else []
    stream.samples += samples.size
    if last:
        chunks += stream.chunker.finish()
    stream.pending.extend(chunks)

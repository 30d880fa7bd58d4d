"""Log-mel features in numpy, equal to NeMo's ``AudioToMelSpectrogramPreprocessor`` in eval mode.

NeMo's eval-mode pipeline, reproduced here (``FilterbankFeatures.forward``):

1. no dither (it is only added when ``training``);
2. pre-emphasis ``y[0] = x[0]``, ``y[t] = x[t] - preemph * x[t - 1]``;
3. STFT with ``center=True`` and *zero* padding of ``n_fft // 2`` samples on both sides; the
   ``win_length`` window (symmetric, ``periodic=False``) sits centred in the ``n_fft`` frame;
4. ``|X| ** mag_power``, mel filterbank (librosa, slaney), ``log(mel + guard)`` or ``log(max(mel, guard))``;
5. optional per-feature / all-feature normalisation over the valid frames (unbiased std, ``+ 1e-5``);
6. valid length ``(T + 2 * (n_fft // 2) - n_fft) // hop`` (``T // hop`` for even ``n_fft``): NeMo computes
   one more STFT frame, sets it and everything past the valid length to ``pad_value`` and then pads the time
   axis to a multiple of ``pad_to``.  :func:`logmel` returns the valid frames only.

Energies are computed in float64 and the result is cast to float32: this is the exact value that NeMo's
float32 computation approximates.
"""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from types import ModuleType
from typing import NamedTuple

import numpy as np

from mtasr.profile import FEATURE_PRODUCTS, stage
from mtasr.xp import array_module, row_product

NORM_EPS = 1e-5  # NeMo's ``CONSTANT`` added to the std in normalize_batch
NORMALIZE_TYPES = ("per_feature", "all_features")  # any other value means "no normalisation", as in NeMo


@dataclass(frozen=True, eq=False)
class FeatureParams:
    """Everything needed to compute NeMo's log-mel features without torch.

    ``window`` has ``win_length`` taps and is centred in the ``n_fft`` frame (as ``torch.stft`` does);
    ``filterbank`` is ``(n_mels, n_fft // 2 + 1)``.  ``preemph`` 0 disables pre-emphasis.
    ``normalize`` is "per_feature", "all_features" or anything else (e.g. "NA") for none.
    ``pad_to`` <= 0 means no padding of the time axis.
    """

    sample_rate: int
    n_fft: int
    win_length: int
    hop_length: int
    preemph: float
    log_guard_type: str
    log_guard: float
    mag_power: float
    normalize: str
    pad_to: int
    pad_value: float
    window: np.ndarray
    filterbank: np.ndarray

    def __post_init__(self) -> None:
        if self.log_guard_type not in ("add", "clamp"):
            raise ValueError(f"log_guard_type must be 'add' or 'clamp', got {self.log_guard_type!r}")
        if self.window.shape != (self.win_length,):
            raise ValueError(f"window must have shape ({self.win_length},), got {self.window.shape}")
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} > n_fft {self.n_fft}")
        if self.filterbank.ndim != 2 or self.filterbank.shape[1] != self.n_fft // 2 + 1:
            raise ValueError(f"filterbank must be (n_mels, {self.n_fft // 2 + 1}), got {self.filterbank.shape}")

    @property
    def n_mels(self) -> int:
        """Number of mel bands (feature dimension)."""
        return int(self.filterbank.shape[0])

    def num_frames(self, n_samples: int) -> int:
        """Valid frame count NeMo reports for ``n_samples`` samples of audio."""
        return max(0, (n_samples + 2 * (self.n_fft // 2) - self.n_fft) // self.hop_length)

    def save(self, path: str | PathLike[str]) -> None:
        """Write all fields to one ``.npz`` file (arrays and scalars; no pickling)."""
        np.savez(
            path,
            sample_rate=np.int64(self.sample_rate),
            n_fft=np.int64(self.n_fft),
            win_length=np.int64(self.win_length),
            hop_length=np.int64(self.hop_length),
            preemph=np.float64(self.preemph),
            log_guard_type=np.str_(self.log_guard_type),
            log_guard=np.float64(self.log_guard),
            mag_power=np.float64(self.mag_power),
            normalize=np.str_(self.normalize),
            pad_to=np.int64(self.pad_to),
            pad_value=np.float64(self.pad_value),
            window=np.asarray(self.window, dtype=np.float32),
            filterbank=np.asarray(self.filterbank, dtype=np.float32),
        )

    @classmethod
    def load(cls, path: str | PathLike[str]) -> FeatureParams:
        """Read a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            return cls(
                sample_rate=int(z["sample_rate"]),
                n_fft=int(z["n_fft"]),
                win_length=int(z["win_length"]),
                hop_length=int(z["hop_length"]),
                preemph=float(z["preemph"]),
                log_guard_type=str(z["log_guard_type"]),
                log_guard=float(z["log_guard"]),
                mag_power=float(z["mag_power"]),
                normalize=str(z["normalize"]),
                pad_to=int(z["pad_to"]),
                pad_value=float(z["pad_value"]),
                window=z["window"].copy(),
                filterbank=z["filterbank"].copy(),
            )


class Owed(NamedTuple):
    """Samples that frames still to compute window: `samples` from the first frame's window start, raw unless
    `coef` is 0 (already pre-emphasised: a stream's end), `prev` the raw sample before them (0 at stream start)."""

    samples: np.ndarray
    count: int
    prev: float = 0.0
    coef: float = 0.0


NO_FRAMES = Owed(np.zeros(0, np.float32), 0)


def _emphasised(owed: list[Owed], xp: ModuleType = np):
    """Every segment of `owed` pre-emphasised in float64 (``y[t] = x[t] - coef * x[t - 1]``, ``prev`` before the
    first; 0 at stream start = NeMo's ``y[0] = x[0]``), concatenated, in array module `xp`: one pass over all
    samples, each value the same whichever segments share the pass."""
    sizes = [o.samples.size for o in owed]
    x = xp.asarray(np.concatenate([o.samples for o in owed])).astype(np.float64)
    if not any(o.coef for o in owed) or not x.size:
        return x
    xp = array_module(x)  # where the samples went (a stand-in device module may keep them on the host)
    starts = np.cumsum([0] + sizes[:-1])
    before = xp.empty_like(x)
    before[1:] = x[:-1]
    nonempty = [i for i, n in enumerate(sizes) if n]
    before[xp.asarray(starts[nonempty])] = xp.asarray(np.array([owed[i].prev for i in nonempty], np.float64))
    coef = xp.asarray(np.repeat(np.array([o.coef for o in owed], np.float64), sizes))
    return xp.where(coef != 0, x - coef * before, x)


def _window_offset(p: FeatureParams) -> int:
    """Offset of the window inside the ``n_fft`` frame (``torch.stft`` centres a shorter window)."""
    return (p.n_fft - p.win_length) // 2


def _frames_logmel(p: FeatureParams, x: np.ndarray, count: int) -> np.ndarray:
    """Float64 log-mel of ``count`` frames; frame ``j`` windows ``x[j * hop : j * hop + win_length]``."""
    if count <= 0:
        return np.zeros((p.n_mels, 0))
    seg = x[: (count - 1) * p.hop_length + p.win_length]
    return _logmel_of_frames(p, np.lib.stride_tricks.sliding_window_view(seg, p.win_length)[:: p.hop_length], np)


def _logmel_of_frames(p: FeatureParams, frames, xp: ModuleType):
    """(frames, win_length) float64 samples -> (n_mels, frames) float64 log-mel, in array module `xp`."""
    # The window's offset inside the frame only changes the phase, not |X|: zero-pad at the end instead.
    spec = xp.fft.rfft(frames * xp.asarray(p.window.astype(np.float64)), n=p.n_fft, axis=1)
    power = spec.real**2 + spec.imag**2
    if p.mag_power != 2.0:
        power = power ** (p.mag_power / 2.0)
    mel = row_product(xp, power, xp.asarray(p.filterbank.T.astype(np.float64))).T  # a frame's bits: not the batch's
    if p.log_guard_type == "add":
        return xp.log(mel + p.log_guard)
    return xp.log(xp.maximum(mel, p.log_guard))


def _normalize(p: FeatureParams, x: np.ndarray) -> np.ndarray:
    """NeMo's normalize_batch over all given (valid) frames: unbiased std, NaN std -> 0, plus 1e-5."""
    if p.normalize == "per_feature":
        mean = x.mean(axis=1, keepdims=True)
        std = x.std(axis=1, ddof=1, keepdims=True) if x.shape[1] > 1 else np.zeros_like(mean)
    elif p.normalize == "all_features":
        mean, std = x.mean(), (x.std(ddof=1) if x.size > 1 else 0.0)
    else:
        return x
    return (x - mean) / (std + NORM_EPS)


def logmel(params: FeatureParams, audio: np.ndarray) -> np.ndarray:
    """Offline log-mel of a whole 1-D signal: ``(n_mels, params.num_frames(len(audio)))`` float32.

    Equals NeMo's preprocessor output on the valid frames (``[:, :length]``), normalisation included.
    """
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"audio must be 1-D, got shape {audio.shape}")
    count = params.num_frames(audio.size)
    if count == 0:
        return np.zeros((params.n_mels, 0), np.float32)
    half = params.n_fft // 2
    padded = np.zeros(audio.size + 2 * half)
    padded[half : half + audio.size] = _emphasised([Owed(audio, count, 0.0, params.preemph)])
    feats = _frames_logmel(params, padded[_window_offset(params) :], count)
    return _normalize(params, feats).astype(np.float32)


class StreamingLogMel:
    """Incremental log-mel for one stream; ``concat(push(...)..., flush())`` equals :func:`logmel` (no normalisation).

    Frame ``i`` is centred on sample ``i * hop``; its window covers ``win_length`` samples starting
    ``back = n_fft // 2 - (n_fft - win_length) // 2`` samples before the centre (the rest of the ``n_fft``
    frame is zero taps).  :meth:`push` emits it as soon as those samples are known and it is certainly valid
    (``(i + 1) * hop`` samples), i.e. once ``max(i * hop + win_length - back, (i + 1) * hop)`` samples arrived.
    For 16 kHz, hop 160, window 400, n_fft 512: lookahead 200 samples (12.5 ms) past the centre, i.e. 40 samples
    (2.5 ms) after the frame's own hop block ``[i * hop, (i + 1) * hop)``; with 160-sample pushes, push ``k``
    (1-based) returns frame ``k - 2``.  All frames but at most the last one come out of :meth:`push` (in general
    at most ``ceil(lookahead / hop) - 1`` are left); :meth:`flush` returns them with the end zero-padded as NeMo does.
    State: the raw tail of fewer than ``win_length + hop`` samples and the raw sample before it; pre-emphasis runs
    with the frames' arithmetic (:func:`logmel_batch`: on the device with the FFT).
    """

    def __init__(self, params: FeatureParams) -> None:
        if params.normalize in NORMALIZE_TYPES:
            raise ValueError(
                f"normalize={params.normalize!r} uses mean/std over the whole utterance, so frames cannot be "
                "emitted before the stream ends; use logmel() on the whole signal instead"
            )
        self.params = params
        self._back = params.n_fft // 2 - _window_offset(params)  # window start, samples before the centre
        self.reset()

    def reset(self) -> None:
        """Start a new stream."""
        self._buf = np.zeros(self._back, np.float32)  # raw samples from index _buf_start (negative: left zeros)
        self._pieces: list[np.ndarray] = []  # raw pieces after _buf, joined when frames are computed
        self._buf_start = -self._back
        self._before = 0.0  # the raw sample before _buf[0] (0: the left zeros)
        self._coef = self.params.preemph  # 0 once the buffer is pre-emphasised (at the stream's end)
        self._n = 0  # raw samples received
        self._next = 0  # next frame index to emit

    @property
    def samples_received(self) -> int:
        """Number of audio samples pushed since the last reset."""
        return self._n

    def _emit(self, count: int) -> np.ndarray:
        """Compute frames ``_next .. _next + count - 1`` and drop the samples no longer needed."""
        owed = self.owed(count)
        out = _frames_logmel(self.params, _emphasised([owed], np), count)
        self.consume(count)
        return out.astype(np.float32)

    def _join(self) -> None:
        if self._pieces:
            self._buf = np.concatenate([self._buf, *self._pieces])
            self._pieces.clear()

    def owed(self, count: int) -> Owed:
        """The samples frames ``_next .. _next + count - 1`` window (a view, raw unless at the end), and `count`."""
        self._join()
        hop = self.params.hop_length
        start = self._next * hop - self._back - self._buf_start
        prev = float(self._buf[start - 1]) if start > 0 else self._before
        return Owed(self._buf[start : start + max(count - 1, 0) * hop + self.params.win_length], count, prev,
                    self._coef)

    def consume(self, count: int) -> None:
        """Frames ``_next .. _next + count - 1`` were computed: drop the samples no later frame needs."""
        hop = self.params.hop_length
        self._join()
        self._next += count
        drop = self._next * hop - self._back - self._buf_start
        if drop > 0:
            self._before = float(self._buf[drop - 1])
        self._buf = self._buf[drop:].copy()  # do not keep a large pushed chunk alive
        self._buf_start += drop

    def push_samples(self, samples: np.ndarray) -> int:
        """Append audio without computing anything; return how many frames are complete and not computed yet."""
        p = self.params
        samples = np.array(samples).reshape(-1)  # a copy: the caller may reuse its buffer
        if samples.size:
            self._pieces.append(samples)
            self._n += samples.size
        complete = (self._n + self._back - p.win_length) // p.hop_length + 1
        return max(0, min(complete, p.num_frames(self._n)) - self._next)

    def end_samples(self) -> int:
        """End of stream: zero-pad the end as NeMo does (after pre-emphasis, so the buffer is pre-emphasised
        now); return how many frames are not computed yet (call `reset` once they are)."""
        p = self.params
        count = max(0, p.num_frames(self._n) - self._next)
        self._join()
        need = (self._next + count) * p.hop_length + p.win_length - self._back - self._buf_start
        self._buf = np.concatenate([_emphasised([Owed(self._buf, count, self._before, self._coef)]),
                                    np.zeros(max(0, need - self._buf.size))])
        self._coef = 0.0
        return count

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Append audio; return the newly complete frames ``(n_mels, k)`` float32 (k may be 0)."""
        return self._emit(self.push_samples(samples))

    def flush(self) -> np.ndarray:
        """End of stream: return the remaining valid frames (zero-padded end) and reset for a new stream."""
        out = self._emit(self.end_samples())
        self.reset()
        return out


def logmel_batch(params: FeatureParams, segments: list[Owed], xp: ModuleType = np) -> list:
    """Log-mel frames of several streams in one computation (the arithmetic, pre-emphasis included, in array
    module `xp`): each segment is what `StreamingLogMel.owed` gives; returns (n_mels, count) float32 arrays of
    `xp`, equal to what `StreamingLogMel.push` computes frame by frame."""
    p = params
    counts = [o.count for o in segments]
    if not sum(counts):
        return [xp.zeros((p.n_mels, 0), dtype=np.float32) for _ in segments]
    # frame j of a segment windows samples [j * hop, j * hop + win): one gather over every segment's frames
    offsets = np.cumsum([0] + [o.samples.size for o in segments[:-1]])
    starts = np.concatenate([off + np.arange(n) * p.hop_length for off, n in zip(offsets, counts, strict=True)])
    with stage(FEATURE_PRODUCTS):
        flat = _emphasised(segments, xp)
        frames = flat[xp.asarray(starts[:, None] + np.arange(p.win_length))]
        logs = _logmel_of_frames(p, frames, array_module(frames)).astype(np.float32)
    bounds = np.cumsum([0] + counts)
    return [logs[:, a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

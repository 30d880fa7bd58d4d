"""A request of a Triton sequence as the orchestrator receives it, and the checks it passes before it touches a
session: its audio (dtype, rank, size, finite samples) and its START options (timing, speaker cap). Triton-free;
every failure is a `RequestError` whose message goes back to the client."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtasr.pipeline.sessions import RequestError
from mtasr.spec import MAX_CHUNK_SECONDS, SAMPLE_RATE, TIMINGS


@dataclass
class AudioRequest:
    """One request of a sequence, as the sequence batcher delivers it."""

    corrid: int
    start: bool
    end: bool
    audio: np.ndarray | None = None  # float32 samples, or None
    audio_int16: np.ndarray | None = None
    session_key: str | None = None  # the client's per-session secret (forwarded header)
    timing: str | None = None  # START only: "audio" | "nemo" (None: the server's default)
    max_speakers: str | int | None = None  # START only: cap on the session's speaker instances (None/0: none)
    ready: bool = True  # False: a batcher's filler request (no client waits for it); answered empty, not counted


def samples_of(req: AudioRequest) -> np.ndarray:
    """Validated float32 samples of a request (raises RequestError)."""
    given = [a for a in (req.audio, req.audio_int16) if a is not None]
    if len(given) != 1:
        raise RequestError("send exactly one of 'audio' (FP32) or 'audio_int16' (INT16)")
    x = np.asarray(given[0])
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 1:
        raise RequestError(f"audio must be one row of samples, got shape {list(given[0].shape)}")
    if req.audio_int16 is not None:
        if x.dtype != np.int16:
            raise RequestError(f"'audio_int16' must be INT16, got {x.dtype}")
        x = x.astype(np.float32) / 32768.0
    elif x.dtype != np.float32:
        raise RequestError(f"'audio' must be FP32, got {x.dtype}")
    if x.size > MAX_CHUNK_SECONDS * SAMPLE_RATE:
        raise RequestError(f"audio piece of {x.size} samples is over {MAX_CHUNK_SECONDS:g} s at {SAMPLE_RATE} Hz")
    if x.size == 0 and not req.end:
        raise RequestError("empty audio piece (only the END request may be empty)")
    if not np.all(np.isfinite(x)):
        raise RequestError("audio contains NaN or Inf samples")
    return x


def timing_of(req: AudioRequest, default: str) -> str:
    """The START's timestamps ("audio" or "nemo"; `default` when it names none)."""
    timing = req.timing or default
    if timing not in TIMINGS:
        raise RequestError(f"unknown timing {timing!r}: use one of {', '.join(TIMINGS)}")
    return timing


def max_speakers_of(req: AudioRequest, n_spk: int) -> int:
    """The START's speaker-instance cap: an integer in [0, `n_spk`, the diarizer's speakers] (0: no cap)."""
    if req.max_speakers is None:
        return 0
    try:
        value = int(str(req.max_speakers).strip())
    except ValueError:
        value = -1
    if not 0 <= value <= n_spk:
        raise RequestError(f"max_speakers must be an integer in [0, {n_spk}] (0: no cap), got "
                           f"{str(req.max_speakers)[:20]!r}")
    return value

"""Audio in: files -> 16 kHz mono float32 (the way both the client and the NeMo reference read them), and
deterministic synthetic multi-speaker audio for parity runs and load tests.

Shared by the client, the exporter/reference, the benches and the tests (so neither imports the other); soundfile
and scipy are imported only when a file is read or resampled."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np

from mtasr.spec import SAMPLE_RATE


class AudioError(ValueError):
    """An audio file that cannot be read; the message is one line for the user."""


def read_audio(path: str | Path) -> np.ndarray:
    """WAV/FLAC of any rate and channel count -> (samples,) float32 at 16 kHz, channels averaged."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"no such audio file: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types
        raise AudioError(f"cannot read {path}: {exc}") from None
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    return resample(mono, rate, SAMPLE_RATE)


def audio_rate(path: str | Path) -> int:
    """The file's own sampling rate (AudioError when unreadable)."""
    import soundfile as sf

    try:
        return int(sf.info(str(path)).samplerate)
    except Exception as exc:  # soundfile raises several types
        raise AudioError(f"cannot read {path}: {exc}") from None


def resample(x: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (scipy) to `target` Hz; identity when the rate already matches."""
    if rate == target:
        return np.ascontiguousarray(x, dtype=np.float32)
    from scipy.signal import resample_poly

    g = gcd(int(rate), int(target))
    return resample_poly(x, target // g, int(rate) // g).astype(np.float32)


def synth_conversation(seconds: float, n_speakers: int = 3, seed: int = 0) -> np.ndarray:
    """Harmonic 'voices' with distinct pitch taking turns, some overlap and pauses, plus light noise."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    out = 0.003 * rng.standard_normal(n)
    for spk in range(n_speakers):
        f0 = 110.0 * (1.35**spk)
        vibrato = 1 + 0.03 * np.sin(2 * np.pi * (3 + spk) * t)
        phase = 2 * np.pi * np.cumsum(f0 * vibrato) / SAMPLE_RATE
        voice = sum(np.sin(k * phase) / k for k in range(1, 8))
        gate = np.zeros(n)
        pos = int(rng.uniform(0, 2) * SAMPLE_RATE)
        while pos < n:
            dur = int(rng.uniform(0.8, 3.0) * SAMPLE_RATE)
            gate[pos : pos + dur] = rng.uniform(0.5, 1.0)
            pos += dur + int(rng.uniform(0.5, 2.5 * n_speakers) * SAMPLE_RATE)
        syll = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t + spk) ** 2
        out += 0.08 * voice * gate * syll
    return (out / max(1.0, np.abs(out).max() / 0.9)).astype(np.float32)

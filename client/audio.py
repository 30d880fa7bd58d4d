"""Audio files -> 16 kHz mono float32, the way both the client and the NeMo reference read them."""

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


def write_wav(path: str | Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """16-bit PCM WAV."""
    import soundfile as sf

    sf.write(str(path), np.clip(samples, -1, 1), rate, subtype="PCM_16")

"""Streaming rational resampling (24 kHz -> 16 kHz for OpenAI-Realtime clients): polyphase by zero-stuffing, a
windowed-sinc low-pass, and decimation, with the filter history and the decimation phase carried between pieces,
so any piece sizes give the same output as the whole signal at once. numpy only (the serving environment)."""

from __future__ import annotations

from math import gcd

import numpy as np


def lowpass(cutoff: float, taps: int) -> np.ndarray:
    """A Blackman-windowed sinc low-pass; `cutoff` in cycles per sample (0.5 = Nyquist), unit DC gain."""
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.blackman(taps)
    return h / h.sum()


class Resampler:
    """`src` Hz -> `dst` Hz; call with float32 pieces, get float32 pieces (group delay (taps-1)/2 input-rate
    samples of the zero-stuffed signal, under 1 ms here)."""

    def __init__(self, src: int, dst: int, taps_per_phase: int = 24) -> None:
        g = gcd(src, dst)
        self.up, self.down = dst // g, src // g
        taps = taps_per_phase * self.up
        # pass band to 90 % of the lower Nyquist; gain `up` restores the zero-stuffed signal's level
        self.h = lowpass(0.45 / max(self.up, self.down), taps) * self.up
        self.history = np.zeros(taps - 1, np.float64)
        self.phase = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.size == 0:
            return np.zeros(0, np.float32)
        stuffed = np.zeros(x.size * self.up, np.float64)
        stuffed[:: self.up] = x
        buf = np.concatenate([self.history, stuffed])
        y = np.convolve(buf, self.h, mode="valid")  # one output per stuffed sample
        out = y[self.phase :: self.down]
        self.phase = (self.phase - y.size) % self.down
        self.history = buf[-(self.h.size - 1):]
        return out.astype(np.float32)


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)

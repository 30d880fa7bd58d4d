"""Deterministic synthetic multi-speaker audio for parity runs (content is irrelevant to random weights)."""

from __future__ import annotations

import numpy as np

from mtasr.spec import SAMPLE_RATE


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

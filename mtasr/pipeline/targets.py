"""Stage 3: which speakers of a session run the ASR this step, and the speaker targets that steer each instance.

NeMo's `SpeakerTaggedASR` cache gating: a speaker runs while the diarizer saw them (> 0.5) within the last
`cache_gating_buffer_size` chunks; its targets are its own probabilities over the previous chunk, the background
targets whether any other speaker was active. Quirks of that flow are kept on purpose and marked `NeMo:`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtasr.pipeline.config import PipelineConfig


@dataclass(frozen=True)
class SpeakerTargets:
    """One speaker instance to run this step: its index and its targets over the chunk's frames."""

    speaker: int
    targets: np.ndarray  # (frames,) float32
    background: np.ndarray  # (frames,) float32


def update_window(cfg: PipelineConfig, window: np.ndarray, chunk_preds: np.ndarray) -> np.ndarray:
    """The session's cache-gating window after this chunk's predictions (frames, n_spk)."""
    span = cfg.nframes_per_chunk * cfg.cache_gating_buffer_size
    total = np.concatenate([window, chunk_preds], axis=0)
    total = total[-span:] if span else total  # NeMo's [-0:] keeps everything
    total[:, cfg.max_num_of_spks :] = 0.0
    return total


def active_speakers(cfg: PipelineConfig, window: np.ndarray) -> list[int]:
    """Speakers that run the ASR this step (all `max_num_of_spks` without cache gating)."""
    if not cfg.cache_gating:
        return list(range(cfg.max_num_of_spks))
    seen = [s for s in range(window.shape[1]) if window.shape[0] and window[:, s].max() > 0.5]
    return seen[: cfg.max_num_of_spks]


def speaker_targets(cfg: PipelineConfig, window: np.ndarray, active: list[int]) -> list[SpeakerTargets]:
    """Targets of each active speaker over the previous chunk's frames (NeMo: `previous_chunk_preds`)."""
    previous = window[-cfg.nframes_per_chunk :]
    out = []
    for spk in active:
        # NeMo: the "other speakers" are range(len(active)) minus this one, not the other active ids.
        others = [j for j in range(len(active)) if j != spk]
        background = ((previous[:, others] > 0.5).sum(axis=1) > 0).astype(np.float32)
        out.append(SpeakerTargets(spk, previous[:, spk].astype(np.float32), background))
    return out


def fit(values: np.ndarray, n: int, default: float) -> np.ndarray:
    """NeMo's `solve_length_mismatch`: keep the last n values, or left-pad with `default`."""
    if values.shape[0] >= n:
        return values[values.shape[0] - n :]
    return np.pad(values, (n - values.shape[0], 0), constant_values=default)


def encoder_targets(cfg: PipelineConfig, speakers: list[SpeakerTargets], n_frames: int) -> tuple[np.ndarray,
                                                                                                   np.ndarray]:
    """`spk_targets` and `bg_spk_targets` rows for the encoder (masked mode: ones and zeros, features masked)."""
    spk = np.ones((len(speakers), n_frames), dtype=np.float32)
    bg = np.zeros((len(speakers), n_frames), dtype=np.float32)
    if cfg.masked_asr:
        return spk, bg
    for r, s in enumerate(speakers):
        t, b = fit(s.targets, n_frames, 1.0), fit(s.background, n_frames, 0.0)
        if cfg.binary_diar_preds:
            t, b = (t > 0.5).astype(np.float32), (b > 0.5).astype(np.float32)
        spk[r], bg[r] = t, b
    return spk, bg

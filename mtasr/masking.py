"""Feature masking of NeMo's masked multitalker mode (`SpeakerTaggedASR.mask_features`), in numpy."""

from __future__ import annotations

import numpy as np

from mtasr.spec import SUBSAMPLING
from mtasr.xp import array_module, on

MASK_VALUE = -16.6355  # NeMo's fill for feature values that were exactly zero


def mask_features(chunk: np.ndarray, activity: np.ndarray, threshold: float = 0.5,
                  mask_value: float = MASK_VALUE) -> np.ndarray:
    """Zero the mel frames where the target speaker is inactive.

    chunk (B, n_mels, T) log-mel; activity (B, T_out) speaker probabilities per 80 ms frame. Each output frame
    covers 8 mel frames; a shorter mask is left-padded with 0 (the pre-encode cache frames get masked), a
    longer one is cut. As in NeMo, entries that were exactly 0 in the input become `mask_value` afterwards.
    """
    mask = np.repeat((activity > threshold).astype(chunk.dtype), SUBSAMPLING, axis=1)
    frames = chunk.shape[2]
    if mask.shape[1] > frames:
        mask = mask[:, :frames]
    elif mask.shape[1] < frames:
        mask = np.pad(mask, ((0, 0), (frames - mask.shape[1], 0)))
    out = chunk * on(array_module(chunk), mask)[:, None, :]
    out[chunk == 0] = mask_value
    return out

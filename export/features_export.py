"""Read a NeMo ``AudioToMelSpectrogramPreprocessor`` into numpy :class:`~mtasr.features.FeatureParams`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mtasr.features import FeatureParams


def _resolve_guard(value: float | str) -> float:
    """NeMo's log_zero_guard_value: a number, or "tiny"/"eps" of float32 (the dtype the features are built in)."""
    if isinstance(value, str):
        if value not in ("tiny", "eps"):
            raise ValueError(f"unknown log_zero_guard_value {value!r}")
        return float(getattr(torch.finfo(torch.float32), value))
    return float(value)


def feature_params_from_nemo(preprocessor: Any) -> FeatureParams:
    """Window, filterbank and scalars of a NeMo ``AudioToMelSpectrogramPreprocessor`` (its ``featurizer``).

    Raises ``NotImplementedError`` for settings the numpy path does not reproduce (exact_pad, frame splicing,
    no log, fixed mean/std normalisation, ``pad_to="max"``).
    """
    f = preprocessor.featurizer
    if f.exact_pad:
        raise NotImplementedError("exact_pad=True is not supported")
    if f.frame_splicing != 1:
        raise NotImplementedError(f"frame_splicing={f.frame_splicing} is not supported")
    if not f.log:
        raise NotImplementedError("log=False is not supported")
    if not isinstance(f.normalize, str) and f.normalize:
        raise NotImplementedError(f"normalize={f.normalize!r} is not supported")
    if not isinstance(f.pad_to, int):
        raise NotImplementedError(f"pad_to={f.pad_to!r} is not supported")
    window = f.window.detach().cpu().numpy() if f.window is not None else np.ones(f.win_length)
    return FeatureParams(
        sample_rate=int(f.sample_rate),
        n_fft=int(f.n_fft),
        win_length=int(f.win_length),
        hop_length=int(f.hop_length),
        preemph=float(f.preemph or 0.0),
        log_guard_type=str(f.log_zero_guard_type),
        log_guard=_resolve_guard(f.log_zero_guard_value),
        mag_power=float(f.mag_power),
        normalize=str(f.normalize or "NA"),
        pad_to=int(f.pad_to),
        pad_value=float(f.pad_value),
        window=window.astype(np.float32),
        filterbank=f.fb.detach().cpu().numpy()[0].astype(np.float32),
    )

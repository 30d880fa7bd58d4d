"""Stage 1: numpy log-mel (offline and streamed) against NeMo's featurizer."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.parity.figures import Figures, maxabs, to_np
from mtasr.features import FeatureParams, StreamingLogMel, logmel


def _featurizer_float64(model: Any) -> Any:
    """NeMo's own featurizer code run in float64: the exact-arithmetic value of its features.

    NeMo casts audio to float32 and its float32 STFT rounds quiet bins, whose logs then move by up to ~1e-4
    on speech (1.34e-4 on tests/data/long_three_speakers.flac), so float32 features are no sharper a reference.
    """
    featurizer = copy.deepcopy(model.preprocessor.featurizer).double()
    window = featurizer.window.double()

    def stft(x: torch.Tensor) -> torch.Tensor:
        return torch.stft(x, n_fft=featurizer.n_fft, hop_length=featurizer.hop_length,
                          win_length=featurizer.win_length, center=not featurizer.exact_pad, window=window,
                          return_complex=True, pad_mode="constant")

    featurizer.stft = stft
    return featurizer


def check_features(fig: Figures, diar, asr, graphs: Path, audio: np.ndarray) -> None:
    """numpy log-mel (offline and streamed) against NeMo's featurizer in float64 (gated) and float32 (reported)."""
    signal = torch.from_numpy(audio)[None]
    length = torch.tensor([audio.shape[0]])
    for name, model in (("asr", asr), ("diarizer", diar)):
        params = FeatureParams.load(graphs / f"features_{name}.npz")
        model.preprocessor.featurizer.dither = 0.0
        with torch.no_grad():
            f32, ref_len = model.preprocessor(input_signal=signal, length=length)
            exact, _ = _featurizer_float64(model)(signal.double(), length)
        count = int(ref_len[0])
        f32, ref = to_np(f32[0, :, :count]), to_np(exact[0, :, :count])
        got = logmel(params, audio)
        if got.shape[1] < count:
            raise AssertionError(f"{name}: numpy gave {got.shape[1]} frames, NeMo {count}")
        fig.bump("features", maxabs(got[:, :count], ref), f"features_{name}_offline")
        fig.details[f"features_{name}_vs_nemo_float32"] = maxabs(got[:, :count], f32)
        fig.details[f"features_{name}_nemo_float32_vs_float64"] = maxabs(f32, ref)
        if params.normalize in ("NA", "", None):
            stream = StreamingLogMel(params)
            rng = np.random.default_rng(1)
            parts, pos = [], 0
            while pos < audio.shape[0]:
                step = int(rng.integers(1, 4000))
                parts.append(stream.push(audio[pos : pos + step]))
                pos += step
            parts.append(stream.flush())
            streamed = np.concatenate(parts, axis=1)
            fig.bump("features", maxabs(streamed[:, :count], ref), f"features_{name}_streamed")

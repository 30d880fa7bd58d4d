"""The figures `make parity` collects (max abs per stage, token agreement) and the helpers every check uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from export.parity.speakers import SpeakersCheck
from mtasr.pipeline.runner import R, ort_session
from mtasr.spec import TensorRecord

TOLERANCE = 1e-4


@dataclass
class Figures:
    """Max abs differences per stage (and token agreement), with per-check details."""

    diarizer: float = 0.0
    encoder: float = 0.0
    decoder_joint: float = 0.0
    features: float = 0.0
    cache_update: float = 0.0
    tokens_same: int = 0
    tokens_total: int = 0
    speakers8: SpeakersCheck = field(default_factory=SpeakersCheck)
    details: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def bump(self, stage: str, value: float, check: str) -> None:
        setattr(self, stage, max(getattr(self, stage), float(value)))
        self.details[check] = max(self.details.get(check, 0.0), float(value))

    def line(self) -> str:
        return (f"parity: diarizer={self.diarizer:.3g} encoder={self.encoder:.3g} "
                f"decoder_joint={self.decoder_joint:.3g} features={self.features:.3g} "
                f"cache_update={self.cache_update:.3g} tokens={self.tokens_same}/{self.tokens_total} "
                f"speakers8={self.speakers8.same}/{self.speakers8.total}")

    def ok(self) -> bool:
        worst = max(self.diarizer, self.encoder, self.decoder_joint, self.features, self.cache_update)
        tokens_ok = self.tokens_same == self.tokens_total and self.tokens_total > 0
        return worst <= TOLERANCE and tokens_ok and not self.failures and not self.speakers8.failures


def session(path: Path):
    return ort_session(path)


def run_record(sess, inputs: TensorRecord, outputs: type[R]) -> R:
    """Run an ONNX Runtime session on a typed inputs record; its typed outputs record."""
    return outputs.from_arrays(sess.run(outputs.names(), inputs.feeds()))


def to_np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def maxabs(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shape mismatch {a.shape} vs {b.shape}")
    return float(np.abs(a - b).max()) if a.size else 0.0

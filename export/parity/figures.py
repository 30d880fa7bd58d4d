"""The figures `make parity` collects (max abs per stage, token agreement) and the helpers every check uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from export.parity.speakers import SpeakersCheck
from mtasr.examples import example_feed
from mtasr.manifest import Manifest
from mtasr.pipeline.runner import R, ort_session
from mtasr.spec import DecoderJointInputs, DiarizerInputs, EncoderInputs, TensorRecord, graph_specs

# tensor names by attribute
DI, EI, DJ = DiarizerInputs.tensor_names(), EncoderInputs.tensor_names(), DecoderJointInputs.tensor_names()

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
    diarize_same: int = 0  # speaker turns of the diarization service equal to NeMo's
    diarize_total: int = 0
    speakers8: SpeakersCheck = field(default_factory=SpeakersCheck)
    int8: tuple[int, int] | None = None  # (same, total) tokens of the int8 pipeline vs fp32: reported, not judged
    details: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def bump(self, stage: str, value: float, check: str) -> None:
        setattr(self, stage, max(getattr(self, stage), float(value)))
        self.details[check] = max(self.details.get(check, 0.0), float(value))

    def line(self) -> str:
        return (f"parity: diarizer={self.diarizer:.3g} encoder={self.encoder:.3g} "
                f"decoder_joint={self.decoder_joint:.3g} features={self.features:.3g} "
                f"cache_update={self.cache_update:.3g} tokens={self.tokens_same}/{self.tokens_total} "
                f"speakers8={self.speakers8.same}/{self.speakers8.total} "
                f"diarize={self.diarize_same}/{self.diarize_total}"
                + ("" if self.int8 is None else f" int8_tokens={self.int8[0]}/{self.int8[1]}"))

    def ok(self) -> bool:
        """Every stage within `TOLERANCE` of NeMo and every token equal; int8 figures are not part of it (int8 is
        not bit-equal to fp32, its cost is measured and reported)."""
        worst = max(self.diarizer, self.encoder, self.decoder_joint, self.features, self.cache_update)
        tokens_ok = self.tokens_same == self.tokens_total and self.tokens_total > 0
        tokens_ok = tokens_ok and self.diarize_same == self.diarize_total > 0
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


def random_feed(kind: str, manifest: Manifest, name: str) -> dict[str, np.ndarray]:
    """Random inputs for the fp32 graph `name` of `kind`, of the shapes the pipeline sends: batch 2, the preset's
    chunk, half-full caches."""
    dims = manifest.dims
    preset = next((p for p in manifest.presets.values() if p.graph == name), manifest.preset())
    frames = preset.streaming_cfg.step_frames
    sizes = {"batch": 2, "chunk_frames": frames, "spkcache_frames": dims.spkcache_len,
             "fifo_frames": dims.fifo_len, "enc_frames": preset.streaming_cfg.valid_out_len}
    ints = {DI.chunk_lengths: frames, EI.length: frames, DI.spkcache_lengths: dims.spkcache_len // 2,
            DI.fifo_lengths: dims.fifo_len // 2, EI.cache_last_channel_len: dims.enc_last_channel // 2, DJ.targets: 1}
    feed = example_feed(graph_specs(dims)[kind], sizes, ints)
    for mel in {DI.chunk, EI.audio_signal} & set(feed):
        feed[mel] = feed[mel] * 3 - 8  # log-mel-like
    return feed

"""Streaming Sortformer latency settings (80 ms frames), as NeMo publishes them for the 4-speaker v2 model.

Latency = (chunk_len + chunk_right_context) x 80 ms. The exported standalone diarizer graph takes any chunk,
cache and FIFO length (dynamic axes), so every setting runs on the same graph.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mtasr.spec import FRAME_SEC


@dataclass(frozen=True)
class DiarizationPreset:
    """`sortformer_modules` streaming fields of one latency setting."""

    chunk_len: int
    chunk_right_context: int
    fifo_len: int
    spkcache_update_period: int
    spkcache_len: int
    chunk_left_context: int = 1

    @property
    def latency_sec(self) -> float:
        return round((self.chunk_len + self.chunk_right_context) * FRAME_SEC, 3)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


PRESETS: dict[str, DiarizationPreset] = {
    "ultra_low": DiarizationPreset(3, 1, 188, 144, 188),  # 0.32 s
    "low": DiarizationPreset(6, 7, 188, 144, 188),  # 1.04 s: the tutorial's Step 1
    "high": DiarizationPreset(124, 1, 124, 124, 188),  # 10.0 s
    "very_high": DiarizationPreset(340, 40, 40, 300, 188),  # 30.4 s
}
DEFAULT_PRESET = "low"


def preset(name: str) -> DiarizationPreset:
    """The named setting; ValueError listing the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown diarization preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]

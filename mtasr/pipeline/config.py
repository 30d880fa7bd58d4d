"""Pipeline settings: what the model repository was built with (manifest) plus the flow's own options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtasr.manifest import PRECISIONS, Manifest, StreamingCfg
from mtasr.pipeline.words import DEFAULT_PAUSE_SEC
from mtasr.spec import FRAME_SEC, ModelDims
from mtasr.spkcache import SpeakerCacheParams


@dataclass(frozen=True)
class ChunkGeometry:
    """NeMo's cache-aware streaming config for one preset, with `pad_and_drop_preencoded=True`."""

    chunk_frames: int  # new mel frames per step (chunk_size[1])
    shift_frames: int  # mel frames the buffer advances per step (shift_size[1])
    pre_encode_cache: int  # mel frames of the previous chunk prepended (pre_encode_cache_size[1])
    drop_extra_pre_encoded: int
    valid_out_len: int  # encoder frames per full step
    min_frames: int  # a final piece shorter than this is dropped (the pre-encoder's sampling frames)

    @property
    def step_frames(self) -> int:
        """Mel frames of a full chunk: pre-encode cache + new frames."""
        return self.pre_encode_cache + self.chunk_frames

    def encoder_frames(self, lengths: np.ndarray) -> np.ndarray:
        """Encoder frames of chunks of `lengths` mel frames: the causal pre-encoder's output minus the drop."""
        n = np.asarray(lengths, dtype=np.int64).copy()
        for _ in range(int(np.log2(self.min_frames))):
            n = n // 2 + 1  # causal conv, kernel 3, stride 2, padding 2 left + 1 right
        return np.maximum(n - self.drop_extra_pre_encoded, 0)

    @classmethod
    def from_streaming_cfg(cls, cfg: StreamingCfg, subsampling: int) -> ChunkGeometry:
        return cls(cfg.chunk_size[-1], cfg.shift_size[-1], cfg.pre_encode_cache_size[-1], cfg.drop_extra_pre_encoded,
                   cfg.valid_out_len, subsampling)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a session needs besides the graphs; field names follow NeMo's `MultitalkerTranscriptionConfig`."""

    preset: tuple[int, int]
    geometry: ChunkGeometry
    dims: ModelDims
    spkcache: SpeakerCacheParams
    vocabulary: tuple[str, ...]
    blank_id: int
    max_symbols: int
    masked_asr: bool = False  # False: speaker-kernel mode; True: feature masking (NeMo's default)
    max_num_of_spks: int = 0  # speakers the flow may run; 0: every output of the diarizer (dims.n_spk)
    cache_gating: bool = True
    cache_gating_buffer_size: int = 2
    binary_diar_preds: bool = False
    sent_break_sec: float = 30.0
    pause_sec: float = DEFAULT_PAUSE_SEC  # audio-time utterances split at word gaps this long
    decoder_window: int | None = None  # greedy look-ahead frames per decoder call (None: the whole chunk)
    frame_len_sec: float = FRAME_SEC
    graphs: dict = field(default_factory=dict)  # role -> graph/model name

    def __post_init__(self) -> None:
        n_spk = self.n_spk
        if self.max_num_of_spks == 0:
            object.__setattr__(self, "max_num_of_spks", n_spk)
        if not 1 <= self.max_num_of_spks <= n_spk:
            raise ValueError(f"max_num_of_spks must be in [1, {n_spk}] (the diarizer's outputs), "
                             f"got {self.max_num_of_spks}")

    @property
    def n_spk(self) -> int:
        """The diarizer's speaker outputs."""
        return self.dims.n_spk

    @property
    def nframes_per_chunk(self) -> int:
        return self.preset[1] + 1

    @classmethod
    def from_manifest(cls, manifest: Manifest, preset: str | None = None, masked_asr: bool = False,
                      precision: str = PRECISIONS[0], **options) -> PipelineConfig:
        """The config of one exported preset (default: the manifest's); `graphs` defaults to the exported folders
        of `precision` (`int8`: the int8 twins of the diarizer and encoder)."""
        entry = manifest.preset(preset)
        geometry = ChunkGeometry.from_streaming_cfg(entry.streaming_cfg, manifest.asr.subsampling_factor)
        graphs = options.pop("graphs", None) or manifest.graph_names(entry.name, precision)
        return cls(preset=entry.att_context_size, geometry=geometry, dims=manifest.dims,
                   spkcache=SpeakerCacheParams.from_config(manifest.diarizer.spkcache),
                   vocabulary=manifest.asr.vocabulary, blank_id=manifest.asr.blank_id,
                   max_symbols=manifest.asr.max_symbols, masked_asr=masked_asr, graphs=graphs, **options)

    @classmethod
    def from_folder(cls, folder: str | Path, **kwargs) -> PipelineConfig:
        """`from_manifest` on `<folder>/manifest.json`."""
        return cls.from_manifest(Manifest.load(folder), **kwargs)

"""Export both models' streaming graphs, feature parameters and a manifest into one folder."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.features_export import feature_params_from_nemo
from export.int8 import INT8_SUFFIX, to_int8
from export.onnx_export import export_graph, to_fp16
from export.rnnt_weights import rnnt_weights_from_nemo
from export.wrappers import DecoderJointStep, DiarizerStep, EncoderStep
from mtasr.examples import example_feed
from mtasr.files import atomic_folder
from mtasr.manifest import (
    INT8_ROLES,
    AsrInfo,
    DiarizerInfo,
    FeatureFiles,
    Manifest,
    Preset,
    Sources,
    StreamingCfg,
)
from mtasr.spec import (
    DEFAULT_ATT_CONTEXT,
    DecoderJointInputs,
    DiarizerInputs,
    EncoderInputs,
    GraphSpec,
    ModelDims,
    graph_specs,
    preset_name,
)

# tensor names by attribute
DI, EI, DJ = DiarizerInputs.tensor_names(), EncoderInputs.tensor_names(), DecoderJointInputs.tensor_names()

# Graphs without an fp16 copy: ONNX Runtime 1.32 (CPU) segfaults loading the fp16 LSTM graph, with or without
# the LSTM kept in fp32; the prediction net + joint is small (9 M params at full size), fp32 costs little.
FP32_ONLY = ("decoder_joint",)
# The tutorial's streaming Sortformer setting (Step 1 and the multitalker flow): 80 ms frames.
TUTORIAL_DIAR_STREAMING = {
    "chunk_len": 6,
    "chunk_right_context": 7,
    "chunk_left_context": 1,
    "fifo_len": 188,
    "spkcache_len": 188,
    "spkcache_update_period": 144,
}


def configure_diarizer_streaming(diar, async_streaming: bool = False, **overrides: int) -> None:
    """Apply the tutorial's streaming setting (or overrides) to a Sortformer, as the tutorial does.

    The multitalker flow (`SpeakerTaggedASR`) starts its diarizer state without `async_streaming`, so the
    speaker-cache update there is NeMo's synchronous `streaming_update`; the tutorial's standalone Step 1
    starts an async state (`streaming_update_async`).
    """
    sm = diar.sortformer_modules
    for key, value in {**TUTORIAL_DIAR_STREAMING, **overrides}.items():
        setattr(sm, key, value)
    sm.log = False
    sm._check_streaming_parameters()
    diar.streaming_mode = True
    diar.async_streaming = async_streaming


def set_preset(asr, att_context: tuple[int, int]) -> None:
    """Switch the cache-aware encoder to one latency preset."""
    asr.encoder.set_default_att_context_size(list(att_context))
    asr.encoder.setup_streaming_params()


def model_dims(diar, asr) -> ModelDims:
    """The sizes that fix the graphs' non-batch dims, read from the two models."""
    sm, enc = diar.sortformer_modules, asr.encoder
    return ModelDims(
        diar_emb_dim=int(sm.fc_d_model),
        spkcache_len=int(sm.spkcache_len),
        fifo_len=int(sm.fifo_len),
        enc_layers=len(enc.layers),
        enc_d_model=int(enc.d_model),
        enc_last_channel=int(enc.streaming_cfg.last_channel_cache_size),
        enc_last_time=int(enc.conv_context_size[0]),
        pred_layers=int(asr.decoder.pred_rnn_layers),
        pred_hidden=int(asr.decoder.pred_hidden),
        vocab_size=int(asr.decoder.vocab_size),
        n_spk=int(sm.n_spk),
    )


def _sizes(value) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, list | tuple) else (int(value),)


def streaming_cfg(asr) -> StreamingCfg:
    """The encoder's streaming sizes at its current preset."""
    cfg = asr.encoder.streaming_cfg
    return StreamingCfg(_sizes(cfg.chunk_size), _sizes(cfg.shift_size), _sizes(cfg.pre_encode_cache_size),
                        int(cfg.drop_extra_pre_encoded), int(cfg.valid_out_len))


def spkcache_params(diar) -> dict[str, int | float]:
    """The Sortformer's speaker-cache settings (NeMo's `sortformer_modules` names) as plain numbers."""
    sm = diar.sortformer_modules
    keys = ("n_spk", "spkcache_len", "fifo_len", "chunk_len", "chunk_left_context", "chunk_right_context",
            "spkcache_update_period", "spkcache_sil_frames_per_spk", "pred_score_threshold", "max_index",
            "scores_boost_latest", "sil_threshold", "strong_boost_rate", "weak_boost_rate", "min_pos_scores_rate",
            "spkcache_refresh_rate")
    return {k: _number(getattr(sm, k)) for k in keys if hasattr(sm, k)}


def _number(value) -> int | float:
    value = value.item() if hasattr(value, "item") else value
    return value if isinstance(value, int) else float(value)


def _example(spec: GraphSpec, sizes: dict[str, int], ints: dict[str, list[int] | int]) -> dict[str, np.ndarray]:
    """Trace inputs: two rows with different lengths, so nothing about the batch or the lengths is baked in."""
    return example_feed(spec, {"batch": 2, **sizes}, ints)


@dataclass
class ExportResult:
    """What `export_all` wrote: the folder, each graph folder's kind and its export time."""

    out_dir: Path
    graphs: dict[str, str] = field(default_factory=dict)  # folder name -> graph kind
    seconds: dict[str, float] = field(default_factory=dict)


def export_all(diar, asr, out_dir: Path, presets: list[tuple[int, int]] | None = None, fp16: bool = False,
               sources: dict[str, str] | None = None, int8: bool = False) -> ExportResult:
    """Write every graph (one folder each), `features_*.npz` and `manifest.json` into `out_dir`; `sources` (keys
    `diarizer`, `asr`: `.nemo` paths or pretrained names) is recorded in the manifest. `fp16` adds `<graph>_fp16`
    copies (GPU serving), `int8` adds `<graph>_int8` copies of the diarizer and encoder graphs (CPU serving,
    `export.int8`), recorded in the manifest's `int8`.

    Everything goes into `<out_dir>.partial` first and is renamed at the end: a failure leaves no
    half-written output folder.
    """
    presets = [tuple(p) for p in (presets or [DEFAULT_ATT_CONTEXT])]
    for p in presets:
        preset_name(p)
    out_dir = Path(out_dir)
    result = ExportResult(out_dir)
    with atomic_folder(out_dir) as work:
        _export_into(diar, asr, work, presets, fp16, int8, sources or {}, result)
    return result


def _timed(result: ExportResult, name: str, kind: str, fn) -> None:
    t0 = time.perf_counter()
    fn()
    result.graphs[name] = kind
    result.seconds[name] = round(time.perf_counter() - t0, 2)


def _export_into(diar, asr, work: Path, presets: list[tuple[int, int]], fp16: bool, int8: bool,
                 sources: dict[str, str], result: ExportResult) -> None:
    diar.freeze()
    asr.freeze()
    configure_diarizer_streaming(diar)
    set_preset(asr, presets[0])
    dims = model_dims(diar, asr)
    specs = graph_specs(dims)
    drop = int(asr.encoder.streaming_cfg.drop_extra_pre_encoded)
    features = FeatureFiles()
    feature_params_from_nemo(asr.preprocessor).save(work / features.asr)
    feature_params_from_nemo(diar.preprocessor).save(work / features.diarizer)
    rnnt_weights_from_nemo(asr).save(work / features.rnnt_weights)

    def diarizer_example(frames: int) -> dict[str, np.ndarray]:
        return _example(specs["diarizer"], {"chunk_frames": frames, "spkcache_frames": dims.spkcache_len,
                                            "fifo_frames": dims.fifo_len},
                        {DI.chunk_lengths: [frames, frames - 8], DI.spkcache_lengths: [dims.spkcache_len, 3],
                         DI.fifo_lengths: [5, dims.fifo_len]})

    step_frames = streaming_cfg(asr).step_frames
    _timed(result, "diarizer", "diarizer",
           lambda: export_graph(DiarizerStep(diar, drop).eval(), specs["diarizer"], diarizer_example(step_frames),
                                work / "diarizer"))
    sm = diar.sortformer_modules
    standalone_frames = (sm.chunk_left_context + sm.chunk_len + sm.chunk_right_context) * 8
    _timed(result, "diarizer_standalone", "diarizer",
           lambda: export_graph(DiarizerStep(diar, 0).eval(), specs["diarizer"], diarizer_example(standalone_frames),
                                work / "diarizer_standalone"))
    exported: dict[str, Preset] = {}
    for ctx in presets:
        set_preset(asr, ctx)
        cfg = streaming_cfg(asr)
        name = "encoder_" + preset_name(ctx)
        exported[preset_name(ctx)] = Preset(ctx, name, cfg)
        example = _example(specs["encoder"], {"chunk_frames": cfg.step_frames, "enc_frames": cfg.valid_out_len},
                           {EI.length: cfg.step_frames, EI.cache_last_channel_len: [dims.enc_last_channel, 3]})
        _timed(result, name, "encoder",
               lambda n=name, x=example: export_graph(EncoderStep(asr).eval(), specs["encoder"], x, work / n))
    set_preset(asr, presets[0])
    example = _example(specs["decoder_joint"], {}, {DJ.targets: [dims.vocab_size, 1]})
    _timed(result, "decoder_joint", "decoder_joint",
           lambda: export_graph(DecoderJointStep(asr).eval(), specs["decoder_joint"], example, work / "decoder_joint"))
    fp32_graphs = list(result.graphs.items())
    if fp16:
        for name, kind in fp32_graphs:
            if kind in FP32_ONLY:
                continue
            _timed(result, name + "_fp16", kind, lambda n=name: to_fp16(work / n, work / (n + "_fp16")))
    twins = {name: name + INT8_SUFFIX for name, kind in fp32_graphs if int8 and kind in INT8_ROLES}
    for name, twin in twins.items():
        _timed(result, twin, result.graphs[name], lambda n=name, t=twin: to_int8(work / n, work / t))
    Manifest(
        dims=dims,
        presets=exported,
        default_preset=preset_name(presets[0]),
        diarizer=DiarizerInfo(graph="diarizer", drop_extra_pre_encoded=drop, standalone_graph="diarizer_standalone",
                              spkcache=spkcache_params(diar)),
        asr=AsrInfo(decoder_joint="decoder_joint", blank_id=int(asr.decoder.blank_idx),
                    max_symbols=int(asr.cfg.decoding.greedy.get("max_symbols", 10) or 10),
                    vocabulary=tuple(asr.tokenizer.vocab) if hasattr(asr.tokenizer, "vocab") else (),
                    subsampling_factor=int(asr.encoder.subsampling_factor)),
        graphs=dict(result.graphs),
        features=features,
        sources=Sources(**sources),
        int8=twins,
    ).save(work)

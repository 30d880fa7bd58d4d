"""Export both models' streaming graphs, feature parameters and a manifest into one folder."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from export.features_export import feature_params_from_nemo
from export.onnx_export import export_graph, folder_bytes, to_fp16
from export.wrappers import DecoderJointStep, DiarizerStep, EncoderStep
from mtasr.files import atomic_folder
from mtasr.spec import DEFAULT_ATT_CONTEXT, ModelDims, graph_specs, preset_name

MANIFEST = "manifest.json"
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


def streaming_cfg_dict(asr) -> dict:
    cfg = asr.encoder.streaming_cfg
    keys = ("chunk_size", "shift_size", "pre_encode_cache_size", "drop_extra_pre_encoded", "valid_out_len",
            "last_channel_cache_size", "cache_drop_size")
    return {k: getattr(cfg, k) for k in keys}


def spkcache_params_dict(diar) -> dict:
    sm = diar.sortformer_modules
    keys = ("n_spk", "spkcache_len", "fifo_len", "chunk_len", "chunk_left_context", "chunk_right_context",
            "spkcache_update_period", "spkcache_sil_frames_per_spk", "pred_score_threshold", "max_index",
            "scores_boost_latest", "sil_threshold", "strong_boost_rate", "weak_boost_rate", "min_pos_scores_rate",
            "spkcache_refresh_rate")
    return {k: getattr(sm, k) for k in keys if hasattr(sm, k)}


def _rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


def diarizer_example(dims: ModelDims, chunk_frames: int) -> tuple:
    b = 2
    return (_rand(b, chunk_frames, 128), torch.tensor([chunk_frames, chunk_frames - 8]),
            _rand(b, dims.spkcache_len, dims.diar_emb_dim), torch.tensor([dims.spkcache_len, 3]),
            _rand(b, dims.fifo_len, dims.diar_emb_dim), torch.tensor([5, dims.fifo_len]))


def encoder_example(dims: ModelDims, asr) -> tuple:
    b = 2
    cfg = asr.encoder.streaming_cfg
    frames = cfg.chunk_size[1] + cfg.pre_encode_cache_size[1]
    return (_rand(b, 128, frames), torch.tensor([frames, frames]),
            _rand(b, dims.enc_layers, dims.enc_last_channel, dims.enc_d_model),
            _rand(b, dims.enc_layers, dims.enc_d_model, dims.enc_last_time), torch.tensor([dims.enc_last_channel, 3]),
            torch.rand(b, cfg.valid_out_len), torch.rand(b, cfg.valid_out_len))


def decoder_joint_example(dims: ModelDims) -> tuple:
    b = 2
    return (_rand(b, dims.enc_d_model), torch.tensor([dims.vocab_size, 1]),
            _rand(b, dims.pred_layers, dims.pred_hidden), _rand(b, dims.pred_layers, dims.pred_hidden))


@dataclass
class ExportResult:
    out_dir: Path
    graphs: dict[str, str] = field(default_factory=dict)  # folder name -> graph kind
    seconds: dict[str, float] = field(default_factory=dict)


def export_all(diar, asr, out_dir: Path, presets: list[tuple[int, int]] | None = None, fp16: bool = False,
               sources: dict | None = None) -> ExportResult:
    """Write every graph (one folder each), `features_*.npz` and `manifest.json` into `out_dir`.

    Everything goes into `<out_dir>.partial` first and is renamed at the end: a failure leaves no
    half-written output folder.
    """
    presets = [tuple(p) for p in (presets or [DEFAULT_ATT_CONTEXT])]
    for p in presets:
        preset_name(p)
    out_dir = Path(out_dir)
    result = ExportResult(out_dir)
    with atomic_folder(out_dir) as work:
        _export_into(diar, asr, work, presets, fp16, sources or {}, result)
    return result


def _timed(result: ExportResult, name: str, kind: str, fn) -> None:
    t0 = time.perf_counter()
    fn()
    result.graphs[name] = kind
    result.seconds[name] = round(time.perf_counter() - t0, 2)


def _export_into(diar, asr, work: Path, presets, fp16: bool, sources: dict, result: ExportResult) -> None:
    diar.freeze()
    asr.freeze()
    configure_diarizer_streaming(diar)
    set_preset(asr, presets[0])
    dims = model_dims(diar, asr)
    specs = graph_specs(dims)
    drop = int(asr.encoder.streaming_cfg.drop_extra_pre_encoded)
    frames = asr.encoder.streaming_cfg.chunk_size[1] + asr.encoder.streaming_cfg.pre_encode_cache_size[1]
    manifest: dict = {
        "dims": dims.to_dict(),
        "presets": {},
        "default_preset": preset_name(presets[0]),
        "diarizer": {
            "graph": "diarizer",
            "drop_extra_pre_encoded": drop,
            "update": "sync",
            "standalone_graph": "diarizer_standalone",
            "standalone_update": "async",
            "spkcache": spkcache_params_dict(diar),
            "subsampling_factor": int(diar.encoder.subsampling_factor),
        },
        "asr": {
            "graph_prefix": "encoder_",
            "decoder_joint": "decoder_joint",
            "blank_id": int(asr.decoder.blank_idx),
            "max_symbols": int(asr.cfg.decoding.greedy.get("max_symbols", 10) or 10),
            "vocabulary": list(asr.tokenizer.vocab) if hasattr(asr.tokenizer, "vocab") else [],
            "subsampling_factor": int(asr.encoder.subsampling_factor),
        },
        "features": {"asr": "features_asr.npz", "diarizer": "features_diarizer.npz"},
        "sources": sources,
        "fp16": fp16,
    }
    feature_params_from_nemo(asr.preprocessor).save(work / "features_asr.npz")
    feature_params_from_nemo(diar.preprocessor).save(work / "features_diarizer.npz")

    _timed(result, "diarizer", "diarizer",
           lambda: export_graph(DiarizerStep(diar, drop).eval(), specs["diarizer"],
                                diarizer_example(dims, frames), work / "diarizer"))
    sm = diar.sortformer_modules
    standalone_frames = (sm.chunk_left_context + sm.chunk_len + sm.chunk_right_context) * 8
    _timed(result, "diarizer_standalone", "diarizer",
           lambda: export_graph(DiarizerStep(diar, 0).eval(), specs["diarizer"],
                                diarizer_example(dims, standalone_frames), work / "diarizer_standalone"))
    for ctx in presets:
        set_preset(asr, ctx)
        name = "encoder_" + preset_name(ctx)
        manifest["presets"][preset_name(ctx)] = {"att_context_size": list(ctx), "graph": name,
                                                 "streaming_cfg": streaming_cfg_dict(asr)}
        _timed(result, name, "encoder",
               lambda n=name: export_graph(EncoderStep(asr).eval(), specs["encoder"], encoder_example(dims, asr),
                                           work / n))
    set_preset(asr, presets[0])
    _timed(result, "decoder_joint", "decoder_joint",
           lambda: export_graph(DecoderJointStep(asr).eval(), specs["decoder_joint"], decoder_joint_example(dims),
                                work / "decoder_joint"))
    if fp16:
        for name, kind in list(result.graphs.items()):
            if kind in FP32_ONLY:
                continue
            _timed(result, name + "_fp16", kind, lambda n=name: to_fp16(work / n, work / (n + "_fp16")))
    manifest["graphs"] = result.graphs
    manifest["graph_bytes"] = {n: folder_bytes(work / n) for n in result.graphs}
    manifest["export_seconds"] = result.seconds
    (work / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_jsonable))


def _jsonable(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj)}")


def load_manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / MANIFEST).read_text())

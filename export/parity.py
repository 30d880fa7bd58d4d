"""`make parity`: ONNX Runtime + numpy against NeMo's PyTorch streaming, stage by stage, chained.

Every graph is fed its own returned state for >= 20 steps, at the lowest and highest latency preset and in
both speaker modes. The last line printed is

    parity: diarizer=<max_abs> encoder=<max_abs> decoder_joint=<max_abs> features=<max_abs> \
cache_update=<max_abs> tokens=<same>/<total> speakers8=<same>/<total>    (one line; export.parity_speakers)

and the exit status is non-zero if any max_abs > 1e-4 or any token differs.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export import builders, parity_speakers
from export.exporter import configure_diarizer_streaming, export_all, set_preset
from export.loading import load_asr, load_diarizer
from export.wrappers import DecoderJointStep
from mtasr import greedy, spkcache
from mtasr.audio import synth_conversation
from mtasr.examples import example_feed
from mtasr.features import FeatureParams, StreamingLogMel, logmel
from mtasr.manifest import Manifest
from mtasr.masking import mask_features
from mtasr.pipeline.runner import ort_session
from mtasr.spec import ATT_CONTEXT_SIZES, graph_specs, preset_name

TOLERANCE = 1e-4
STATE_FIELDS = ("spkcache", "spkcache_lengths", "spkcache_preds", "fifo", "fifo_lengths", "fifo_preds",
                "mean_sil_emb", "n_sil_frames")


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
    speakers8: parity_speakers.SpeakersCheck = field(default_factory=parity_speakers.SpeakersCheck)
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


def _session(path: Path):
    return ort_session(path)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def _maxabs(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shape mismatch {a.shape} vs {b.shape}")
    return float(np.abs(a - b).max()) if a.size else 0.0


# ---------------------------------------------------------------------------------------------------- models
def prepare_models(size: str, work: Path, seed: int = 0) -> tuple[Path, Path, float]:
    """Build random-init (decisive) models, save `.nemo`, restore them through the real loading code.

    Returns the two paths and the max abs parameter difference of the save/restore round trip.
    """
    nemo_dir = work / "nemo"
    nemo_dir.mkdir(parents=True, exist_ok=True)
    diar_path, asr_path = nemo_dir / "diarizer.nemo", nemo_dir / "asr.nemo"
    diar = builders.build_diarizer(size, seed)
    asr = builders.build_asr(size, nemo_dir, seed)
    builders.make_decisive(diar, asr)
    diar.save_to(str(diar_path))
    asr.save_to(str(asr_path))
    worst = 0.0
    for built, loaded in ((diar, load_diarizer(str(diar_path))), (asr, load_asr(str(asr_path)))):
        ref = built.state_dict()
        got = loaded.state_dict()
        if set(ref) != set(got):
            raise AssertionError(f"round trip changed parameter names: {set(ref) ^ set(got)}")
        worst = max(worst, max(_maxabs(_np(ref[k]).astype(np.float64), _np(got[k])) for k in ref))
    del diar, asr
    return diar_path, asr_path, worst


# -------------------------------------------------------------------------------------------------- features
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
        f32, ref = _np(f32[0, :, :count]), _np(exact[0, :, :count])
        got = logmel(params, audio)
        if got.shape[1] < count:
            raise AssertionError(f"{name}: numpy gave {got.shape[1]} frames, NeMo {count}")
        fig.bump("features", _maxabs(got[:, :count], ref), f"features_{name}_offline")
        fig.details[f"features_{name}_vs_nemo_float32"] = _maxabs(got[:, :count], f32)
        fig.details[f"features_{name}_nemo_float32_vs_float64"] = _maxabs(f32, ref)
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
            fig.bump("features", _maxabs(streamed[:, :count], ref), f"features_{name}_streamed")


# -------------------------------------------------------------------------------------------------- diarizer
def _nemo_state_np(state) -> dict[str, np.ndarray]:
    return {k: _np(getattr(state, k)).copy() for k in STATE_FIELDS if getattr(state, k, None) is not None}


def _compare_states(fig: Figures, ours, nemo: dict[str, np.ndarray], check: str) -> None:
    for key in STATE_FIELDS:
        ref, got = nemo.get(key), getattr(ours, key, None)
        if ref is None or got is None:
            if (ref is None) != (got is None):
                raise AssertionError(f"{check}: {key} is {'None' if got is None else 'set'} here, not in NeMo")
            continue
        if key.endswith("lengths") or key == "n_sil_frames":
            if not np.array_equal(np.asarray(got), ref):
                raise AssertionError(f"{check}: {key} differs: {got} vs {ref}")
        else:
            fig.bump("cache_update", _maxabs(got, ref), f"{check}_state")


def _run_diarizer_chain(fig: Figures, diar, sess, params, chunks, drop: int, check: str, sync: bool) -> int:
    """chunks: iterable of (feats (B, T, n_mels) torch, lengths, lc_frames, rc_frames). Returns steps run.

    sync: NeMo's `streaming_update` (the multitalker flow) rather than `streaming_update_async`.
    """
    sm = diar.sortformer_modules
    diar.async_streaming = not sync
    nemo_state = sm.init_streaming_state(batch_size=1, async_streaming=not sync, device=torch.device("cpu"))
    total = torch.zeros((1, 0, sm.n_spk))
    dim = int(sm.fc_d_model)
    init = spkcache.init_streaming_state if sync else spkcache.init_streaming_state_async
    ours = init(params, 1, dim)
    compressions = 0
    steps = 0
    for feats, lengths, left, right in chunks:
        with torch.no_grad():
            nemo_state, total = diar.forward_streaming_step(
                processed_signal=feats, processed_signal_length=lengths, streaming_state=nemo_state,
                total_preds=total, drop_extra_pre_encoded=drop, left_offset=left, right_offset=right)
        lc, rc = round(left / 8), math.ceil(right / 8)
        if sync:
            cache_len = np.array([ours.spkcache.shape[1]], dtype=np.int64)
            fifo_len = np.array([ours.fifo.shape[1]], dtype=np.int64)
        else:
            cache_len, fifo_len = ours.spkcache_lengths, ours.fifo_lengths
        preds, embs, emb_lengths = sess.run(None, {
            "chunk": _np(feats), "chunk_lengths": _np(lengths).astype(np.int64),
            "spkcache": ours.spkcache, "spkcache_lengths": cache_len, "fifo": ours.fifo, "fifo_lengths": fifo_len})
        if sync:
            ours, chunk_preds = spkcache.streaming_update(params, ours, embs[:, : int(emb_lengths[0])], preds,
                                                               lc=lc, rc=rc)
        else:
            ours, chunk_preds = spkcache.streaming_update_async(params, ours, embs, emb_lengths, preds, lc=lc, rc=rc)
        compressions += int(int(cache_len[0]) == params.spkcache_len)
        ref = _np(total[:, -chunk_preds.shape[1]:]) if chunk_preds.shape[1] else np.zeros_like(chunk_preds)
        fig.bump("diarizer", _maxabs(chunk_preds, ref), check)
        _compare_states(fig, ours, _nemo_state_np(nemo_state), check)
        steps += 1
    fig.details[f"{check}_steps"] = steps
    fig.details[f"{check}_spkcache_full_steps"] = compressions
    return steps


def check_diarizer_multitalker(fig: Figures, diar, asr, graphs: Path, manifest: Manifest, feats: torch.Tensor,
                               feat_len: int) -> None:
    """The diarizer as SpeakerTaggedASR drives it: on the ASR's chunks, dropping the extra pre-encoded frames."""
    from nemo.collections.asr.parts.utils.streaming_utils import CacheAwareStreamingAudioBuffer

    params = spkcache.SpeakerCacheParams.from_config(manifest.diarizer.spkcache)
    sess = _session(graphs / manifest.diarizer.graph / "model.onnx")
    buf = CacheAwareStreamingAudioBuffer(model=asr, online_normalization=False, pad_and_drop_preencoded=True)
    buf.append_processed_signal(feats[:1, :, :feat_len])
    chunks = ((c.transpose(1, 2), n, 0, 0) for c, n in buf)
    _run_diarizer_chain(fig, diar, sess, params, chunks, manifest.diarizer.drop_extra_pre_encoded,
                        "diarizer_multitalker_flow", sync=True)


def check_diarizer_standalone(fig: Figures, diar, graphs: Path, manifest: Manifest, audio: np.ndarray) -> None:
    """The tutorial's Step 1: whole-file features, chunk_len 6, right context 7, FIFO 188, cache 188."""
    params = spkcache.SpeakerCacheParams.from_config(manifest.diarizer.spkcache)
    sess = _session(graphs / manifest.diarizer.standalone_graph / "model.onnx")
    diar.preprocessor.featurizer.dither = 0.0
    with torch.no_grad():
        feats, feat_len = diar.preprocessor(input_signal=torch.from_numpy(audio)[None],
                                            length=torch.tensor([audio.shape[0]]))
    loader = diar.sortformer_modules.streaming_feat_loader(
        feat_seq=feats, feat_seq_length=feat_len, feat_seq_offset=torch.zeros((1,), dtype=torch.long))
    chunks = ((c, n, int(lo), int(ro)) for _, c, n, lo, ro in loader)
    _run_diarizer_chain(fig, diar, sess, params, chunks, 0, "diarizer_standalone", sync=False)


# ------------------------------------------------------------------------------------------- encoder + tokens
class _Recorder:
    """Wraps `encoder.cache_aware_stream_step` to keep what NeMo's encoder returned at each step."""

    def __init__(self, encoder) -> None:
        self.encoder, self.orig, self.calls = encoder, encoder.cache_aware_stream_step, []

    def __call__(self, *args, **kwargs):
        out = self.orig(*args, **kwargs)
        self.calls.append(tuple(o.detach().clone() if torch.is_tensor(o) else o for o in out))
        return out

    def __enter__(self):
        self.encoder.cache_aware_stream_step = self
        return self

    def __exit__(self, *exc):
        del self.encoder.cache_aware_stream_step


def _as_list(x) -> list:
    return x.tolist() if torch.is_tensor(x) else list(x)


def _speaker_activity(rng: np.random.Generator, rows: int, frames: int) -> np.ndarray:
    """Diarizer-like activity: mostly near 0/1 with some soft values."""
    base = (rng.random((rows, frames)) > 0.45).astype(np.float32)
    soft = base * rng.uniform(0.7, 1.0, (rows, frames)) + rng.uniform(0, 0.2, (rows, frames))
    return np.clip(soft, 0, 1).astype(np.float32)


def check_encoder_and_tokens(fig: Figures, asr, graphs: Path, manifest: Manifest, feats: torch.Tensor, feat_len: int,
                             ctx: tuple[int, int], masked: bool, min_steps: int) -> None:
    """Chain the encoder graph + numpy greedy (decoder_joint graph) against NeMo's conformer_stream_step."""
    from nemo.collections.asr.parts.utils.streaming_utils import CacheAwareStreamingAudioBuffer

    check = f"encoder_{preset_name(ctx)}_{'masked' if masked else 'kernel'}"
    set_preset(asr, ctx)
    cfg = asr.encoder.streaming_cfg
    drop = int(cfg.drop_extra_pre_encoded)
    dims = manifest.dims
    enc_sess = _session(graphs / manifest.preset(preset_name(ctx)).graph / "model.onnx")
    dj_sess = _session(graphs / manifest.asr.decoder_joint / "model.onnx")
    dj_torch = DecoderJointStep(asr).eval()
    blank = manifest.asr.blank_id
    max_symbols = manifest.asr.max_symbols

    def step_fn(frame, targets, h, c):
        outs = dj_sess.run(None, {"encoder_frame": frame, "targets": targets, "h_in": h, "c_in": c})
        with torch.no_grad():
            ref = dj_torch(*(torch.from_numpy(x) for x in (frame, targets, h, c)))
        for got, want in zip(outs, ref, strict=True):
            fig.bump("decoder_joint", _maxabs(got, _np(want)), "decoder_joint")
        return outs

    t_start = time.perf_counter()
    rows = 2  # two target speakers of one session, as SpeakerTaggedASR batches them
    buf = CacheAwareStreamingAudioBuffer(model=asr, online_normalization=False, pad_and_drop_preencoded=True)
    buf.append_processed_signal(feats[:1, :, :feat_len])
    ch, tm, chl = asr.encoder.get_initial_cache_state(batch_size=rows)
    nemo_caches = (ch, tm, chl)
    our = {"cache_last_channel": _np(ch.transpose(0, 1)).copy(), "cache_last_time": _np(tm.transpose(0, 1)).copy(),
           "cache_last_channel_len": _np(chl).astype(np.int64)}
    hyps = None
    dec = greedy.init_state(rows, dims.pred_layers, dims.pred_hidden, blank)
    rng = np.random.default_rng(7)
    steps = 0
    with _Recorder(asr.encoder) as rec:
        for chunk, lengths in buf:
            chunk = chunk.repeat(rows, 1, 1)
            lengths = lengths.repeat(rows)
            # encoder frames of this chunk after pre-encode and dropping, as NeMo's forward_pre_encoded computes
            with torch.no_grad():
                _, pre_len = asr.encoder.pre_encode(x=chunk.transpose(1, 2), lengths=lengths)
            n_out = int(pre_len.max()) - drop
            spk = _speaker_activity(rng, rows, n_out)
            bg = (rng.random((rows, n_out)) > 0.5).astype(np.float32)
            is_last = buf.is_buffer_empty()
            if masked:
                masked_np = mask_features(_np(chunk), spk)
                ref_chunk = torch.from_numpy(masked_np)
                asr.clear_speaker_targets()
                signal, signal_len, bypass = ref_chunk, lengths, False
                our_signal, our_spk, our_bg = masked_np, np.ones_like(spk), np.zeros_like(bg)
            else:
                with torch.no_grad():
                    pre, pre_len = asr.encoder.pre_encode(x=chunk.transpose(1, 2), lengths=lengths)
                signal, signal_len, bypass = pre[:, drop:], (pre_len.to(torch.int64) - drop).clamp(min=0), True
                asr.set_speaker_targets(torch.from_numpy(spk), torch.from_numpy(bg))
                our_signal, our_spk, our_bg = _np(chunk), spk, bg
            with torch.no_grad():
                _, _, c1, c2, c3, hyps = asr.conformer_stream_step(
                    processed_signal=signal, processed_signal_length=signal_len, cache_last_channel=nemo_caches[0],
                    cache_last_time=nemo_caches[1], cache_last_channel_len=nemo_caches[2], keep_all_outputs=is_last,
                    previous_hypotheses=hyps, previous_pred_out=None, drop_extra_pre_encoded=drop,
                    return_transcription=True, bypass_pre_encode=bypass)
            asr.clear_speaker_targets()
            nemo_caches = (c1, c2, c3)
            encoded, encoded_len, n1, n2, n3 = enc_sess.run(None, {
                "audio_signal": np.ascontiguousarray(our_signal, dtype=np.float32),
                "length": _np(lengths).astype(np.int64), **our,
                "spk_targets": our_spk, "bg_spk_targets": our_bg})
            our = {"cache_last_channel": n1, "cache_last_time": n2, "cache_last_channel_len": n3}
            ref_enc, ref_len = rec.calls[-1][0], rec.calls[-1][1]
            if not np.array_equal(encoded_len, _np(ref_len)):
                raise AssertionError(f"{check}: encoded_len {encoded_len} vs NeMo {_np(ref_len)}")
            n = int(encoded_len.max())
            fig.bump("encoder", _maxabs(encoded[:, :n], _np(ref_enc.transpose(1, 2))[:, :n]), check)
            fig.bump("encoder", _maxabs(n1, _np(c1.transpose(0, 1))), check + "_cache")
            fig.bump("encoder", _maxabs(n2, _np(c2.transpose(0, 1))), check + "_cache")
            if not np.array_equal(n3, _np(c3)):
                raise AssertionError(f"{check}: cache_last_channel_len {n3} vs {_np(c3)}")
            dec = greedy.greedy_decode(step_fn, encoded, encoded_len, dec, blank, max_symbols)
            steps += 1
    same = total = 0
    for r, hyp in enumerate(hyps):
        ref_tokens = [int(x) for x in _as_list(hyp.y_sequence)]
        ref_frames = [int(x) for x in _as_list(hyp.timestamp)]
        got = list(zip(dec.tokens[r], dec.frame_indices[r], strict=True))
        want = list(zip(ref_tokens, ref_frames, strict=True))
        total += max(len(want), len(got))
        same += sum(1 for a, b in zip(got, want, strict=False) if a == b)
    if steps < min_steps:
        fig.failures.append(f"{check}: only {steps} chained steps (< {min_steps}); use longer audio")
    fig.tokens_same += same
    fig.tokens_total += total
    fig.details[f"{check}_steps"] = steps
    fig.details[f"{check}_tokens"] = f"{same}/{total}"
    fig.details[f"{check}_seconds"] = round(time.perf_counter() - t_start, 1)


# ------------------------------------------------------------------------------------------------------ main
def run(size: str, work: Path, presets: list[tuple[int, int]], seconds: dict[str, float], fp16: bool,
        nemo: tuple[Path, Path] | None = None, audio: np.ndarray | None = None) -> Figures:
    """All checks on random-init `size` models, or on the given (diarizer, asr) `.nemo` files; `audio` (16 kHz)
    replaces the synthetic conversation."""
    fig = Figures()
    t0 = time.perf_counter()
    if nemo is None:
        diar_path, asr_path, roundtrip = prepare_models(size, work)
        fig.details["nemo_roundtrip_max_abs"] = roundtrip
        if roundtrip != 0.0:
            raise AssertionError(f".nemo round trip changed parameters by {roundtrip}")
    else:
        diar_path, asr_path = nemo
        fig.details["nemo"] = [str(diar_path), str(asr_path)]
    fig.details["build_seconds"] = round(time.perf_counter() - t0, 1)
    diar, asr = load_diarizer(str(diar_path)), load_asr(str(asr_path))
    graphs = work / "graphs"
    t0 = time.perf_counter()
    res = export_all(diar, asr, graphs, presets=presets, fp16=fp16,
                     sources={"diarizer": str(diar_path), "asr": str(asr_path)})
    fig.details["export_seconds"] = round(time.perf_counter() - t0, 1)
    fig.details["graph_export_seconds"] = res.seconds
    manifest = Manifest.load(graphs)
    configure_diarizer_streaming(diar)
    t0 = time.perf_counter()
    long_audio = synth_conversation(seconds["long"], n_speakers=3, seed=0) if audio is None else audio
    check_features(fig, diar, asr, graphs, long_audio[: 16000 * 8])
    asr.preprocessor.featurizer.dither = 0.0
    with torch.no_grad():
        feats, feat_len = asr.preprocessor(input_signal=torch.from_numpy(long_audio)[None],
                                           length=torch.tensor([long_audio.shape[0]]))
    hi = max(presets, key=lambda p: p[1])
    set_preset(asr, hi)
    check_diarizer_multitalker(fig, diar, asr, graphs, manifest, feats, int(feat_len[0]))
    check_diarizer_standalone(fig, diar, graphs, manifest, long_audio[: int(16000 * seconds["standalone"])])
    fig.details["diarizer_seconds"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    for ctx in presets:
        n_frames = min(int(seconds["encoder_hi" if ctx == hi else "encoder_lo"] * 100), int(feat_len[0]))
        for masked in (False, True):
            check_encoder_and_tokens(fig, asr, graphs, manifest, feats, n_frames, ctx, masked, min_steps=20)
    fig.details["encoder_seconds"] = round(time.perf_counter() - t0, 1)
    fig.speakers8 = parity_speakers.check(work / "speakers8", asr_path)  # 8-output diarizer, NeMo vs pipeline
    fig.details.update(fig.speakers8.details)
    if fp16:
        fig.details["fp16"] = fp16_deviation(graphs, manifest)
    return fig


def _random_feed(kind: str, manifest: Manifest, name: str) -> dict[str, np.ndarray]:
    """Inputs of the shapes the pipeline sends: batch 2, the preset's chunk, half-full caches."""
    dims = manifest.dims
    preset = next((p for p in manifest.presets.values() if p.graph == name.removesuffix("_fp16")),
                  manifest.preset())
    frames = preset.streaming_cfg.step_frames
    sizes = {"batch": 2, "chunk_frames": frames, "spkcache_frames": dims.spkcache_len,
             "fifo_frames": dims.fifo_len, "enc_frames": preset.streaming_cfg.valid_out_len}
    ints = {"chunk_lengths": frames, "length": frames, "spkcache_lengths": dims.spkcache_len // 2,
            "fifo_lengths": dims.fifo_len // 2, "cache_last_channel_len": dims.enc_last_channel // 2, "targets": 1}
    feed = example_feed(graph_specs(dims)[kind], sizes, ints)
    for mel in {"chunk", "audio_signal"} & set(feed):
        feed[mel] = feed[mel] * 3 - 8  # log-mel-like
    return feed


def _fp16_worker(graphs: str, name: str, kind: str, manifest: Manifest, out) -> None:
    feed = _random_feed(kind, manifest, name)
    ref = _session(Path(graphs) / name / "model.onnx").run(None, feed)
    got = _session(Path(graphs) / f"{name}_fp16" / "model.onnx").run(None, feed)
    out.put(max(_maxabs(a, b) for a, b in zip(got, ref, strict=True)))


def fp16_deviation(graphs: Path, manifest: Manifest) -> dict[str, float | str]:
    """Max abs of each fp16 graph vs its fp32 twin (ONNX Runtime CPU), each in its own process: a crashing
    session is reported, not fatal."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out: dict[str, float | str] = {}
    for name, kind in manifest.graphs.items():
        if name.endswith("_fp16") or f"{name}_fp16" not in manifest.graphs:
            continue
        queue = ctx.Queue()
        proc = ctx.Process(target=_fp16_worker, args=(str(graphs), name, kind, manifest, queue))
        proc.start()
        proc.join()
        out[name] = queue.get() if proc.exitcode == 0 else f"unmeasured: ONNX Runtime exit code {proc.exitcode}"
    return out


def quiet_nemo() -> None:
    """NeMo logs every model construction at INFO/WARNING; keep the parity output readable."""
    import logging

    from nemo.utils import logging as nemo_logging

    nemo_logging.setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=builders.SIZES, default="tiny")
    ap.add_argument("--work", type=Path, default=None, help="folder for .nemo files and graphs")
    ap.add_argument("--long-seconds", type=float, default=64.0, help="audio for the highest preset (compression)")
    ap.add_argument("--encoder-seconds", type=float, nargs=2, default=(24.0, 2.0), metavar=("HI", "LO"),
                    help="audio for the encoder/token chains at the highest and lowest preset (>= 20 steps each)")
    ap.add_argument("--fp16", action="store_true", help="also export fp16 copies and measure their deviation")
    ap.add_argument("--nemo", type=Path, nargs=2, metavar=("DIAR", "ASR"),
                    help="check these .nemo files (diarizer, asr) instead of random-init models")
    ap.add_argument("--audio", type=Path, help="16 kHz audio to stream instead of the synthetic conversation")
    args = ap.parse_args(argv)
    work = args.work or Path("artifacts") / (f"parity_{args.size}" if args.nemo is None else "parity_nemo")
    audio = None
    if args.audio is not None:
        import soundfile as sf

        audio, rate = sf.read(str(args.audio), dtype="float32")
        if rate != 16000 or audio.ndim != 1:
            ap.error(f"--audio must be 16 kHz mono, got {rate} Hz with shape {audio.shape}")
    presets = [ATT_CONTEXT_SIZES[-1], ATT_CONTEXT_SIZES[0]]  # lowest and highest latency
    quiet_nemo()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    fig = run(args.size, work, presets,
              {"long": args.long_seconds, "encoder_hi": args.encoder_seconds[0], "encoder_lo": args.encoder_seconds[1],
               "standalone": min(args.long_seconds, 30.0)},
              args.fp16, nemo=tuple(args.nemo) if args.nemo else None, audio=audio)
    fig.details["total_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(fig.details, indent=1, default=str))
    for failure in fig.failures + fig.speakers8.failures:
        print(f"FAILED: {failure}")
    (work / "parity.json").write_text(json.dumps({"line": fig.line(), **fig.details}, indent=1, default=str))
    print(fig.line())
    return 0 if fig.ok() else 1


if __name__ == "__main__":
    sys.exit(main())

"""Stage 2: the diarizer graph + numpy speaker-cache update against NeMo's `forward_streaming_step`, chained, in the
multitalker flow (synchronous update) and the tutorial's standalone setting (asynchronous update)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from export.parity.figures import Figures, maxabs, run_record, session, to_np
from mtasr import spkcache
from mtasr.manifest import Manifest
from mtasr.spec import DiarizerInputs, DiarizerOutputs

STATE_FIELDS = ("spkcache", "spkcache_lengths", "spkcache_preds", "fifo", "fifo_lengths", "fifo_preds",
                "mean_sil_emb", "n_sil_frames")


def _nemo_state_np(state) -> dict[str, np.ndarray]:
    return {k: to_np(getattr(state, k)).copy() for k in STATE_FIELDS if getattr(state, k, None) is not None}


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
            fig.bump("cache_update", maxabs(got, ref), f"{check}_state")


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
        out = run_record(sess, DiarizerInputs(chunk=to_np(feats), chunk_lengths=to_np(lengths).astype(np.int64),
                                              spkcache=ours.spkcache, spkcache_lengths=cache_len, fifo=ours.fifo,
                                              fifo_lengths=fifo_len), DiarizerOutputs)
        preds, embs = out.spkcache_fifo_chunk_preds, out.chunk_pre_encode_embs
        emb_lengths = out.chunk_pre_encode_lengths
        if sync:
            ours, chunk_preds = spkcache.streaming_update(params, ours, embs[:, : int(emb_lengths[0])], preds,
                                                               lc=lc, rc=rc)
        else:
            ours, chunk_preds = spkcache.streaming_update_async(params, ours, embs, emb_lengths, preds, lc=lc, rc=rc)
        compressions += int(int(cache_len[0]) == params.spkcache_len)
        ref = to_np(total[:, -chunk_preds.shape[1]:]) if chunk_preds.shape[1] else np.zeros_like(chunk_preds)
        fig.bump("diarizer", maxabs(chunk_preds, ref), check)
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
    sess = session(graphs / manifest.diarizer.graph / "model.onnx")
    buf = CacheAwareStreamingAudioBuffer(model=asr, online_normalization=False, pad_and_drop_preencoded=True)
    buf.append_processed_signal(feats[:1, :, :feat_len])
    chunks = ((c.transpose(1, 2), n, 0, 0) for c, n in buf)
    _run_diarizer_chain(fig, diar, sess, params, chunks, manifest.diarizer.drop_extra_pre_encoded,
                        "diarizer_multitalker_flow", sync=True)


def check_diarizer_standalone(fig: Figures, diar, graphs: Path, manifest: Manifest, audio: np.ndarray) -> None:
    """The tutorial's Step 1: whole-file features, chunk_len 6, right context 7, FIFO 188, cache 188."""
    params = spkcache.SpeakerCacheParams.from_config(manifest.diarizer.spkcache)
    sess = session(graphs / manifest.diarizer.standalone_graph / "model.onnx")
    diar.preprocessor.featurizer.dither = 0.0
    with torch.no_grad():
        feats, feat_len = diar.preprocessor(input_signal=torch.from_numpy(audio)[None],
                                            length=torch.tensor([audio.shape[0]]))
    loader = diar.sortformer_modules.streaming_feat_loader(
        feat_seq=feats, feat_seq_length=feat_len, feat_seq_offset=torch.zeros((1,), dtype=torch.long))
    chunks = ((c, n, int(lo), int(ro)) for _, c, n, lo, ro in loader)
    _run_diarizer_chain(fig, diar, sess, params, chunks, 0, "diarizer_standalone", sync=False)

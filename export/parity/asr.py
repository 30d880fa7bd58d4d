"""Stages 4-5: the encoder graph and batched greedy RNNT against NeMo's `conformer_stream_step`, chained over >= 20
steps, in both speaker modes; tokens and their frames must be identical. The served decoder (`mtasr.rnnt.ArrayRnnt`
on the exported weights) is checked, and the `decoder_joint` graph beside it (values per call, same tokens)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from export.exporter import set_preset
from export.parity.figures import Figures, maxabs, run_record, session, to_np
from export.wrappers import DecoderJointStep
from mtasr import rnnt
from mtasr.manifest import Manifest
from mtasr.masking import mask_features
from mtasr.spec import (
    NEXT_SUFFIX,
    DecoderJointInputs,
    DecoderJointOutputs,
    EncoderInputs,
    EncoderOutputs,
    carried_state,
    preset_name,
)


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
    enc_sess = session(graphs / manifest.preset(preset_name(ctx)).graph / "model.onnx")
    dj_sess = session(graphs / manifest.asr.decoder_joint / "model.onnx")
    dj_torch = DecoderJointStep(asr).eval()
    blank = manifest.asr.blank_id
    max_symbols = manifest.asr.max_symbols

    def step_fn(frame, targets, h, c):
        out = run_record(dj_sess, DecoderJointInputs(encoder_frame=frame, targets=targets, h_in=h, c_in=c),
                         DecoderJointOutputs)
        with torch.no_grad():
            ref = dj_torch(*(torch.from_numpy(x) for x in (frame, targets, h, c)))
        for got, want in zip((out.logits, out.h_out, out.c_out), ref, strict=True):
            fig.bump("decoder_joint", maxabs(got, to_np(want)), "decoder_joint")
        return out.logits, out.h_out, out.c_out

    t_start = time.perf_counter()
    rows = 2  # two target speakers of one session, as SpeakerTaggedASR batches them
    buf = CacheAwareStreamingAudioBuffer(model=asr, online_normalization=False, pad_and_drop_preencoded=True)
    buf.append_processed_signal(feats[:1, :, :feat_len])
    ch, tm, chl = asr.encoder.get_initial_cache_state(batch_size=rows)
    nemo_caches = (ch, tm, chl)
    our = dict(cache_last_channel=to_np(ch.transpose(0, 1)).copy(), cache_last_time=to_np(tm.transpose(0, 1)).copy(),
               cache_last_channel_len=to_np(chl).astype(np.int64))
    hyps = None
    served = rnnt.ArrayRnnt(rnnt.RnntWeights.load(graphs / manifest.features.rnnt_weights))
    graph = rnnt.StepRnnt(step_fn)
    decoders = {m: rnnt.init_state(rows, dims.pred_layers, dims.pred_hidden, blank) for m in (served, graph)}
    decoded: dict = {m: [([], []) for _ in range(rows)] for m in decoders}
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
                masked_np = mask_features(to_np(chunk), spk)
                ref_chunk = torch.from_numpy(masked_np)
                asr.clear_speaker_targets()
                signal, signal_len, bypass = ref_chunk, lengths, False
                our_signal, our_spk, our_bg = masked_np, np.ones_like(spk), np.zeros_like(bg)
            else:
                with torch.no_grad():
                    pre, pre_len = asr.encoder.pre_encode(x=chunk.transpose(1, 2), lengths=lengths)
                signal, signal_len, bypass = pre[:, drop:], (pre_len.to(torch.int64) - drop).clamp(min=0), True
                asr.set_speaker_targets(torch.from_numpy(spk), torch.from_numpy(bg))
                our_signal, our_spk, our_bg = to_np(chunk), spk, bg
            with torch.no_grad():
                _, _, c1, c2, c3, hyps = asr.conformer_stream_step(
                    processed_signal=signal, processed_signal_length=signal_len, cache_last_channel=nemo_caches[0],
                    cache_last_time=nemo_caches[1], cache_last_channel_len=nemo_caches[2], keep_all_outputs=is_last,
                    previous_hypotheses=hyps, previous_pred_out=None, drop_extra_pre_encoded=drop,
                    return_transcription=True, bypass_pre_encode=bypass)
            asr.clear_speaker_targets()
            nemo_caches = (c1, c2, c3)
            out = run_record(enc_sess, EncoderInputs(
                audio_signal=np.ascontiguousarray(our_signal, dtype=np.float32),
                length=to_np(lengths).astype(np.int64), spk_targets=our_spk, bg_spk_targets=our_bg, **our),
                EncoderOutputs)
            our = {name: getattr(out, name + NEXT_SUFFIX) for name in carried_state(EncoderInputs, EncoderOutputs)}
            encoded, encoded_len = out.encoded, out.encoded_len
            n1, n2, n3 = out.cache_last_channel_next, out.cache_last_time_next, out.cache_last_channel_len_next
            ref_enc, ref_len = rec.calls[-1][0], rec.calls[-1][1]
            if not np.array_equal(encoded_len, to_np(ref_len)):
                raise AssertionError(f"{check}: encoded_len {encoded_len} vs NeMo {to_np(ref_len)}")
            n = int(encoded_len.max())
            fig.bump("encoder", maxabs(encoded[:, :n], to_np(ref_enc.transpose(1, 2))[:, :n]), check)
            fig.bump("encoder", maxabs(n1, to_np(c1.transpose(0, 1))), check + "_cache")
            fig.bump("encoder", maxabs(n2, to_np(c2.transpose(0, 1))), check + "_cache")
            if not np.array_equal(n3, to_np(c3)):
                raise AssertionError(f"{check}: cache_last_channel_len {n3} vs {to_np(c3)}")
            for math, dec in decoders.items():
                emitted = rnnt.greedy_decode(math, encoded, encoded_len, dec, blank, max_symbols)
                for (tokens, frames), (new_tokens, new_frames) in zip(decoded[math], emitted.per_row(rows),
                                                                     strict=True):
                    tokens.extend(new_tokens)
                    frames.extend(new_frames)
            steps += 1
    if decoded[graph] != decoded[served]:
        fig.failures.append(f"{check}: the decoder_joint graph's tokens differ from the served decoder's")
    same = total = 0
    for r, hyp in enumerate(hyps):
        ref_tokens = [int(x) for x in _as_list(hyp.y_sequence)]
        ref_frames = [int(x) for x in _as_list(hyp.timestamp)]
        got = list(zip(*decoded[served][r], strict=True))
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

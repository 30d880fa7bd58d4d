"""Stateless torch modules around NeMo models, one per exported graph.

Every piece of streaming state is an explicit input/output, batch first, with the names of
`mtasr.spec`. Each wrapper calls NeMo's own submodules, so the graph computes what NeMo computes.
"""

from __future__ import annotations

import torch
from torch import nn


def concat_and_pad(embs: list[torch.Tensor], lengths: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Export-friendly equivalent of NeMo's `SortformerModules.concat_and_pad`.

    Row b of the result holds the first lengths[i][b] frames of each embs[i], back to back, then zeros. NeMo's
    result is max(total length) frames long, a size read from the lengths' values; this one is sum T_i frames long
    (the inputs' frame dims), so every shape of the traced graph follows from its input shapes (TensorRT can plan
    its memory, ONNX Runtime's symbolic shape inference resolves every output). The extra frames are padding that
    every later layer masks out by length; the first max(total) frames equal NeMo's. Written as one gather so it
    traces to ONNX.
    """
    full = torch.cat(embs, dim=1)  # (B, sum T_i, D)
    batch, frames, dim = full.shape
    total = torch.stack(lengths).sum(0)  # (B,)
    pos = torch.arange(frames, device=full.device).unsqueeze(0).expand(batch, -1)  # (B, sum T_i)
    index = torch.zeros_like(pos)
    valid = pos < total.unsqueeze(1)
    start = torch.zeros_like(total)  # first output position of segment i
    offset = 0  # first input position of segment i in `full`
    for emb, length in zip(embs, lengths, strict=True):
        in_seg = (pos >= start.unsqueeze(1)) & (pos < (start + length).unsqueeze(1))
        index = torch.where(in_seg, pos - start.unsqueeze(1) + offset, index)
        start = start + length
        offset += emb.shape[1]
    out = torch.gather(full, 1, index.unsqueeze(-1).expand(-1, -1, dim))
    out = out * valid.unsqueeze(-1).to(out.dtype)
    return out, total


class DiarizerStep(nn.Module):
    """One Streaming Sortformer step: pre-encode the chunk, drop `drop_extra_pre_encoded` frames (as the
    multitalker flow does to align with the ASR), concat with speaker cache + FIFO, FastConformer,
    transformer, sigmoid head, NeMo's `apply_mask_to_preds`."""

    def __init__(self, model, drop_extra_pre_encoded: int) -> None:
        super().__init__()
        self.model = model
        self.drop = int(drop_extra_pre_encoded)

    def forward(self, chunk, chunk_lengths, spkcache, spkcache_lengths, fifo, fifo_lengths):
        m = self.model
        embs, emb_lengths = m.encoder.pre_encode(x=chunk, lengths=chunk_lengths)
        emb_lengths = emb_lengths.to(torch.int64)
        if self.drop > 0:
            embs = embs[:, self.drop :, :]
            emb_lengths = emb_lengths - self.drop
        all_embs, all_lengths = concat_and_pad([spkcache, fifo, embs], [spkcache_lengths, fifo_lengths, emb_lengths])
        enc, enc_lengths = m.frontend_encoder(
            processed_signal=all_embs, processed_signal_length=all_lengths, bypass_pre_encode=True
        )
        preds = m.forward_infer(enc, enc_lengths)
        preds = m.sortformer_modules.apply_mask_to_preds(preds, enc_lengths)
        return preds, embs, emb_lengths


class EncoderStep(nn.Module):
    """One cache-aware multitalker encoder step with the speaker targets as graph inputs.

    NeMo injects speaker kernels through a forward pre-hook that reads `model.spk_targets`; setting them
    from the inputs inside forward makes them live tensors of the traced graph. Masked mode feeds
    spk_targets = 1 and bg_spk_targets = 0, which is what NeMo's hook uses when no targets are set.
    """

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, audio_signal, length, cache_last_channel, cache_last_time, cache_last_channel_len,
                spk_targets, bg_spk_targets):
        m = self.model
        m.set_speaker_targets(spk_targets, bg_spk_targets)
        try:
            enc = m.encoder
            rets = enc.forward_internal(
                audio_signal,
                length,
                cache_last_channel=cache_last_channel.transpose(0, 1),
                cache_last_time=cache_last_time.transpose(0, 1),
                cache_last_channel_len=cache_last_channel_len,
            )
            encoded, encoded_len, ch_next, time_next, ch_len_next = enc.streaming_post_process(
                rets, keep_all_outputs=False
            )
        finally:
            m.clear_speaker_targets()
        return encoded.transpose(1, 2), encoded_len, ch_next.transpose(0, 1), time_next.transpose(0, 1), ch_len_next


class DecoderJointStep(nn.Module):
    """RNNT prediction net on the last token + joint on one encoder frame; LSTM state batch first."""

    def __init__(self, model) -> None:
        super().__init__()
        self.decoder = model.decoder
        self.joint = model.joint

    def forward(self, encoder_frame, targets, h_in, c_in):
        state = (h_in.transpose(0, 1).contiguous(), c_in.transpose(0, 1).contiguous())
        g, (h, c) = self.decoder.predict(targets.unsqueeze(1), state, add_sos=False, batch_size=targets.shape[0])
        f = self.joint.project_encoder(encoder_frame.unsqueeze(1))  # (B, 1, H)
        logits = self.joint.joint_after_projection(f, self.joint.project_prednet(g))  # (B, 1, 1, V + 1)
        return logits[:, 0, 0, :], h.transpose(0, 1), c.transpose(0, 1)

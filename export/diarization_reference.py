"""NeMo's own streaming diarization, the tutorial's Step 1: whole-file features, `streaming_feat_loader`,
`forward_streaming_step` with the asynchronous speaker cache, then NeMo's post-processing to speaker turns
(`ts_vad_post_processing`, as `SortformerEncLabelModel.diarize` writes RTTM). The oracle of the diarization service.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from export.exporter import configure_diarizer_streaming
from mtasr.diarization.presets import DEFAULT_PRESET, preset
from mtasr.diarization.turns import PostProcessing
from mtasr.pipeline.transcript import segment


@dataclass
class DiarizationResult:
    activity: np.ndarray  # (frames, n_spk) NeMo's total_preds
    turns: list[dict]  # SegLST entries (no words), time ordered


class DiarizationReference:
    """A Streaming Sortformer `.nemo` configured with one latency preset."""

    def __init__(self, diar_nemo: str, preset_name: str = DEFAULT_PRESET,
                 post: PostProcessing | None = None) -> None:
        import torch

        from export.loading import load_diarizer

        torch.set_grad_enabled(False)
        self.diar = load_diarizer(diar_nemo)
        configure_diarizer_streaming(self.diar, async_streaming=True, **preset(preset_name).to_dict())
        self.diar.preprocessor.featurizer.dither = 0.0
        self.post = post or PostProcessing()

    def diarize(self, audio: np.ndarray, session_id: str) -> DiarizationResult:
        import torch
        from nemo.collections.asr.parts.utils.vad_utils import ts_vad_post_processing
        from omegaconf import OmegaConf

        diar, sm = self.diar, self.diar.sortformer_modules
        feats, feat_len = diar.preprocessor(input_signal=torch.from_numpy(audio)[None],
                                            length=torch.tensor([audio.shape[0]]))
        state = sm.init_streaming_state(batch_size=1, async_streaming=True, device=torch.device("cpu"))
        total = torch.zeros((1, 0, sm.n_spk))
        loader = sm.streaming_feat_loader(feat_seq=feats, feat_seq_length=feat_len,
                                          feat_seq_offset=torch.zeros((1,), dtype=torch.long))
        for _, chunk, lengths, left, right in loader:
            state, total = diar.forward_streaming_step(processed_signal=chunk, processed_signal_length=lengths,
                                                       streaming_state=state, total_preds=total,
                                                       left_offset=left, right_offset=right)
        params = OmegaConf.structured(self.post)
        turns = []
        for spk in range(total.shape[2]):
            segs = ts_vad_post_processing(total[0, :, spk], cfg_vad_params=params,
                                          unit_10ms_frame_count=int(sm.subsampling_factor))
            turns += [segment(f"speaker_{spk}", round(float(s), 2), round(float(e), 2), "", session_id)
                      for s, e in segs.tolist()]
        turns.sort(key=lambda g: (g["start_time"], g["speaker"]))
        return DiarizationResult(total[0].numpy(), turns)

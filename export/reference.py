"""`mtasr-reference`: NeMo's own streaming multitalker flow (the tutorial's `SpeakerTaggedASR` loop) on audio
files, writing `<out>/<stem>.seglst.json`. It is the oracle the served pipeline is compared with.

With no model arguments it uses the `.nemo` files and settings a model folder (or repository) records in
its manifest.json, so `mtasr-client X --out A` and `mtasr-reference X --out B` are directly comparable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from export.exporter import configure_diarizer_streaming, set_preset
from mtasr.manifest import Manifest
from mtasr.pipeline.words import DEFAULT_PAUSE_SEC, LiveTranscript
from mtasr.spec import FRAME_SEC, SAMPLE_RATE, TIMINGS


def _as_list(x) -> list:
    return x.tolist() if hasattr(x, "tolist") else list(x)

# The tutorial's MultitalkerTranscriptionConfig values this flow reads, with the serving choices applied:
# fp32 (no autocast), pad_and_drop_preencoded so every chunk has the exported encoder's fixed size.
FLOW_CONFIG = {
    "max_num_of_spks": 4, "parallel_speaker_strategy": True, "masked_asr": True, "mask_preencode": False,
    "cache_gating": True, "cache_gating_buffer_size": 2, "single_speaker_mode": False, "log": False,
    "streaming_mode": True, "spkcache_len": 188, "spkcache_refresh_rate": 0, "fifo_len": 188, "chunk_len": 0,
    "chunk_left_context": 0, "chunk_right_context": 0, "att_context_size": [70, 13], "use_amp": False,
    "batch_size": 1, "online_normalization": False, "pad_and_drop_preencoded": True, "binary_diar_preds": False,
    "fix_prev_words_count": 5, "update_prev_words_sentence": 5, "sent_break_sec": 30.0,
    "ignored_initial_frame_steps": 5, "generate_realtime_scripts": False, "deploy_mode": True,
    "print_sample_indices": [0], "verbose": False, "audio_file": None, "manifest_file": None,
}


class Reference:
    """The NeMo models configured like the tutorial, ready to transcribe files one by one."""

    def __init__(self, diar_nemo: str, asr_nemo: str, preset: tuple[int, int], masked_asr: bool) -> None:
        import torch
        from omegaconf import OmegaConf

        from export.loading import load_asr, load_diarizer

        torch.set_grad_enabled(False)
        self.diar = load_diarizer(diar_nemo)
        self.asr = load_asr(asr_nemo)
        # Tutorial Step 3: the diarizer's streaming parameters for the multitalker flow.
        configure_diarizer_streaming(self.diar, chunk_left_context=0)
        set_preset(self.asr, preset)
        self.cfg = OmegaConf.create({**FLOW_CONFIG, "att_context_size": list(preset), "masked_asr": masked_asr,
                                     "max_num_of_spks": int(self.diar.sortformer_modules.n_spk)})  # 4 or 8

    def transcribe(self, audio: np.ndarray, session_id: str, timing: str = "nemo",
                   pause_sec: float = DEFAULT_PAUSE_SEC) -> list[dict]:
        """Stream `audio` (16 kHz mono float32) through `SpeakerTaggedASR`; returns its SegLST.

        `timing="nemo"`: NeMo's own SegLST. `timing="audio"`: after every step, NeMo's per-speaker hypotheses
        (tokens and frames, with the steps in which NeMo ran each speaker) go through the served pipeline's
        `LiveTranscript`, which maps them to audio time and releases final utterances as it streams.
        """
        import torch
        from nemo.collections.asr.parts.utils.multispk_transcribe_utils import SpeakerTaggedASR
        from nemo.collections.asr.parts.utils.streaming_utils import CacheAwareStreamingAudioBuffer

        buffer = CacheAwareStreamingAudioBuffer(model=self.asr, online_normalization=False,
                                                pad_and_drop_preencoded=True)
        buffer.append_audio(np.ascontiguousarray(audio, dtype=np.float32), stream_id=-1)
        streamer = SpeakerTaggedASR(self.cfg, self.asr, self.diar)
        drop = self.asr.encoder.streaming_cfg.drop_extra_pre_encoded
        find_active, active = streamer._find_active_speakers, {}

        def recording(*args, **kwargs):  # which speakers NeMo runs at this step
            active["now"] = find_active(*args, **kwargs)
            return active["now"]

        streamer._find_active_speakers = recording
        steps: dict[int, list[int]] = {}  # speaker -> the steps its ASR instance ran
        frames_per_step = int(self.cfg.att_context_size[1]) + 1
        live = LiveTranscript(list(self.asr.tokenizer.vocab), FRAME_SEC, frames_per_step, pause_sec)
        audio_end = len(audio) / SAMPLE_RATE
        with torch.inference_mode():
            for step, (chunk, lengths) in enumerate(iter(buffer)):
                active.clear()
                streamer.perform_parallel_streaming_stt_spk(
                    step_num=step, chunk_audio=chunk, chunk_lengths=lengths,
                    is_buffer_empty=buffer.is_buffer_empty(), drop_extra_pre_encoded=drop)
                for spk in (active.get("now") or [[]])[0]:
                    steps.setdefault(int(spk), []).append(step)
                if timing == "audio":  # the served pipeline's live transcript, fed NeMo's hypotheses
                    decoded = min((step + 1) * frames_per_step * FRAME_SEC, audio_end)
                    live.update(self._hypotheses(streamer, steps, frames_per_step), decoded, audio_end, session_id)
        # The diarizer's sigmoids as this flow saw them (frames x speakers): the RTTM the served stack also writes.
        self.diar_preds = streamer.instance_manager.diar_states.diar_pred_out_stream[0].float().numpy()
        self.hypotheses = self._hypotheses(streamer, steps, frames_per_step)  # speaker -> (tokens, frames, runs)
        if timing == "audio":
            live.update(self._hypotheses(streamer, steps, frames_per_step), audio_end, audio_end, session_id,
                        last=True)
            return live.seglst()
        segs = streamer.generate_seglst_dicts_from_parallel_streaming(samples=[{"audio_filepath": session_id}])
        return [{**s, "start_time": float(s["start_time"]), "end_time": float(s["end_time"])} for s in segs]

    @staticmethod
    def _hypotheses(streamer, steps: dict[int, list[int]], frames_per_step: int) -> dict:
        """Speaker -> (tokens, hypothesis frames, runs) of NeMo's instances; every run but a stream's last decodes
        `frames_per_step` encoder frames."""
        state = streamer.instance_manager.batch_asr_states[0]
        out = {}
        for spk, ran in steps.items():
            hyp = state.previous_hypothesis[spk]
            out[spk] = ([int(x) for x in _as_list(hyp.y_sequence)], [int(x) for x in _as_list(hyp.timestamp)],
                        [(step, k * frames_per_step) for k, step in enumerate(ran)])
        return out


def from_manifest(manifest: Manifest, diar_nemo: str | None, asr_nemo: str | None, preset: str | None,
                  masked: bool | None) -> Reference:
    """The flow a manifest records: its `.nemo` files (unless given), the served (or default) preset and speaker
    mode (unless given)."""
    ctx = manifest.preset(preset or manifest.served_preset).att_context_size
    if masked is None:
        masked = manifest.serving is not None and manifest.serving.speaker_mode == "masked"
    diar_nemo, asr_nemo = diar_nemo or manifest.sources.diarizer, asr_nemo or manifest.sources.asr
    if not diar_nemo or not asr_nemo:
        raise ValueError("the manifest records no .nemo files: give --diar-nemo and --asr-nemo")
    return Reference(diar_nemo, asr_nemo, ctx, masked)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mtasr-reference", description=__doc__.split("\n")[0])
    ap.add_argument("audio", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", type=Path, default=Path("artifacts/demo_repo/multitalker/1"),
                    help="exported model folder, or a repository version folder, whose manifest.json names the .nemo "
                         "files and settings (default: the repository `make demo` built)")
    ap.add_argument("--diar-nemo")
    ap.add_argument("--asr-nemo")
    ap.add_argument("--preset", help="e.g. 70_13 (default: the manifest's)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--masked", dest="masked", action="store_true", default=None)
    mode.add_argument("--kernel", dest="masked", action="store_false")
    ap.add_argument("--timing", choices=TIMINGS,
                    help="audio (the served default: audio-time words and utterances) or nemo (SpeakerTaggedASR's "
                         "own SegLST); default: what the repository serves")
    return ap


def main(argv: list[str] | None = None) -> int:
    from mtasr.audio import AudioError, read_audio

    args = build_parser().parse_args(argv)
    try:
        audios = [(p, read_audio(p)) for p in args.audio]
        manifest = Manifest.load(args.models)
        ref = from_manifest(manifest, args.diar_nemo, args.asr_nemo, args.preset, args.masked)
        timing = args.timing or (manifest.serving.timing if manifest.serving else TIMINGS[0])
    except (AudioError, FileNotFoundError, ValueError) as exc:
        print(f"mtasr-reference: error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for path, audio in audios:
        segs = ref.transcribe(audio, path.stem, timing)
        (args.out / f"{path.stem}.seglst.json").write_text(json.dumps(segs, indent=1))
        print(f"{path.stem}: {len(segs)} segments")
    return 0


if __name__ == "__main__":
    sys.exit(main())

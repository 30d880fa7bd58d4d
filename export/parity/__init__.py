"""`make parity`: ONNX Runtime + numpy against NeMo's PyTorch streaming, stage by stage, chained.

Every graph is fed its own returned state for >= 20 steps, at the lowest and highest latency preset and in
both speaker modes. The last line printed is

    parity: diarizer=<max_abs> encoder=<max_abs> decoder_joint=<max_abs> features=<max_abs> \
cache_update=<max_abs> tokens=<same>/<total> speakers8=<same>/<total> diarize=<same>/<total> \
[int8_tokens=<same>/<total>]

(one line; `speakers8`: export.parity.speakers, `diarize`: the diarization service, export.parity.diarization,
`int8_tokens` with --int8: export.parity.int8)

and the exit status is non-zero if any max_abs > 1e-4 or any token differs. The int8 graphs' figures (max abs vs
their fp32 twins, the pipeline's token agreement) are reported, never judged: int8 is not bit-equal.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from export import builders
from export.exporter import configure_diarizer_streaming, export_all, set_preset
from export.loading import load_asr, load_diarizer
from export.parity import diarization, speakers
from export.parity import int8 as int8_parity
from export.parity.asr import check_encoder_and_tokens
from export.parity.diarizer import check_diarizer_multitalker, check_diarizer_standalone
from export.parity.features import check_features
from export.parity.figures import Figures
from export.parity.fp16 import fp16_deviation
from export.parity.models import prepare_models, quiet_nemo
from mtasr.audio import synth_conversation
from mtasr.manifest import Manifest
from mtasr.spec import ATT_CONTEXT_SIZES


def run(size: str, work: Path, presets: list[tuple[int, int]], seconds: dict[str, float], fp16: bool,
        nemo: tuple[Path, Path] | None = None, audio: np.ndarray | None = None, int8: bool = False) -> Figures:
    """All checks on random-init `size` models, or on the given (diarizer, asr) `.nemo` files; `audio` (16 kHz)
    replaces the synthetic conversation; `int8` also exports int8 graphs and measures them against fp32."""
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
    res = export_all(diar, asr, graphs, presets=presets, fp16=fp16, int8=int8,
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
    diarization.check(fig, diar_path, graphs, long_audio, ("low", "ultra_low"))  # the diarization service
    fig.details["diarizer_seconds"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    for ctx in presets:
        n_frames = min(int(seconds["encoder_hi" if ctx == hi else "encoder_lo"] * 100), int(feat_len[0]))
        for masked in (False, True):
            check_encoder_and_tokens(fig, asr, graphs, manifest, feats, n_frames, ctx, masked, min_steps=20)
    fig.details["encoder_seconds"] = round(time.perf_counter() - t0, 1)
    fig.speakers8 = speakers.check(work / "speakers8", asr_path)  # 8-output diarizer, NeMo vs pipeline
    fig.details.update(fig.speakers8.details)
    if fp16:
        fig.details["fp16"] = fp16_deviation(graphs, manifest)
    if int8:  # the pipeline at [70,13] over the encoder chains' audio (>= 20 steps)
        check = int8_parity.check(graphs, long_audio[: int(16000 * seconds["encoder_hi"])])
        fig.int8 = (check.same, check.total)
        fig.details.update(check.details)
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.parity", description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=builders.SIZES, default="tiny")
    ap.add_argument("--work", type=Path, default=None, help="folder for .nemo files and graphs")
    ap.add_argument("--long-seconds", type=float, default=64.0, help="audio for the highest preset (compression)")
    ap.add_argument("--encoder-seconds", type=float, nargs=2, default=(24.0, 2.0), metavar=("HI", "LO"),
                    help="audio for the encoder/token chains at the highest and lowest preset (>= 20 steps each)")
    ap.add_argument("--fp16", action="store_true", help="also export fp16 copies and measure their deviation")
    ap.add_argument("--int8", action="store_true",
                    help="also export int8 copies and measure them against fp32 (reported, never a failure)")
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
              args.fp16, nemo=tuple(args.nemo) if args.nemo else None, audio=audio, int8=args.int8)
    fig.details["total_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(fig.details, indent=1, default=str))
    for failure in fig.failures + fig.speakers8.failures:
        print(f"FAILED: {failure}")
    (work / "parity.json").write_text(json.dumps({"line": fig.line(), **fig.details}, indent=1, default=str))
    print(fig.line())
    return 0 if fig.ok() else 1

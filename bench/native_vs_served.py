"""Side by side on the same machine, weights, audio and preset: NeMo's native `SpeakerTaggedASR` (PyTorch) vs
the served pipeline (real tritonserver + gRPC client) and the same pipeline in process (onnxruntime).

    python -m bench.native_vs_served --graphs DIR [--seconds 20] [--preset 70_13] [--speaker-mode kernel]

The `.nemo` files are the ones the graphs' manifest records. Prints JSON: seconds and real-time factor
(wall / audio) of each, throughput ratios, and whether the three SegLSTs agree. When the graphs have int8 twins
the served pipeline also runs on them (a second server, `--precision int8`): its RTF, the fp32 / int8 speed-up and
the share of the fp32 words it reproduces.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mtasr.audio import synth_conversation
from mtasr.manifest import FP32, INT8
from mtasr.spec import SAMPLE_RATE


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def word_agreement(ref: list[dict], hyp: list[dict]) -> float:
    """Share of `ref`'s (speaker, word) pairs that `hyp` reproduces in order (difflib matching blocks)."""
    import difflib

    a = [(s["speaker"], w) for s in ref for w in s["words"].split()]
    b = [(s["speaker"], w) for s in hyp for w in s["words"].split()]
    if not a:
        return 1.0 if not b else 0.0
    return sum(m.size for m in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks()) / len(a)


def run(graphs: Path, seconds: float, preset: str, mode: str, speakers: int = 2, int8: bool = True) -> dict:
    from bench import serving
    from client.stream import stream_audio
    from export.reference import from_manifest
    from mtasr.manifest import Manifest
    from mtasr.pipeline import Engine, OrtRunner, PipelineConfig

    manifest = Manifest.load(graphs)
    audio = synth_conversation(seconds, n_speakers=speakers, seed=11)
    warm = audio[: 2 * SAMPLE_RATE]
    masked = mode == "masked"

    def native_run():  # the models go out of scope (memory) before the server starts
        ref = from_manifest(manifest, None, None, preset, masked)
        ref.transcribe(warm, "warm")
        return _timed(lambda: ref.transcribe(audio, "s"))

    def local_run():
        cfg = PipelineConfig.from_manifest(manifest, preset=preset, masked_asr=masked)
        engine = Engine.from_folder(graphs, OrtRunner(graphs), cfg)

        def in_process(x):
            s = engine.new_stream("s", timing="nemo")
            engine.push_audio(s, x, last=True)
            while s.pending:
                engine.step([s])
            return s.transcript.final("s")

        in_process(warm)
        return _timed(lambda: in_process(audio))

    native, native_s = native_run()
    local, local_s = local_run()

    def served_run(precision: str):
        with serving.served(graphs, preset, mode, precision=precision) as server:
            stream_audio(server.grpc_url, warm)
            # NeMo timing: the same SegLST as the native flow's, so the outputs can be compared word for word
            return _timed(lambda: stream_audio(server.grpc_url, audio, session_id="s", timing="nemo"))

    served, served_s = served_run(FP32)
    words = [[(s["speaker"], s["words"]) for s in x] for x in (native, local, served.seglst)]
    int8_figures = {}
    if int8 and manifest.int8:
        served8, served8_s = served_run(INT8)
        int8_figures = {"served_int8_seconds": round(served8_s, 2), "served_int8_rtf": round(served8_s / seconds, 3),
                "int8_speedup": round(served_s / served8_s, 2),
                "int8_word_agreement": round(word_agreement(served.seglst, served8.seglst), 3)}
    return {
        "audio_seconds": seconds, "speakers": speakers, "preset": preset, "speaker_mode": mode,
        "native_seconds": round(native_s, 2), "served_seconds": round(served_s, 2),
        "in_process_seconds": round(local_s, 2),
        "native_rtf": round(native_s / seconds, 3), "served_rtf": round(served_s / seconds, 3),
        "in_process_rtf": round(local_s / seconds, 3),
        "served_vs_native": round(native_s / served_s, 2), "in_process_vs_native": round(native_s / local_s, 2),
        "outputs_agree": words[0] == words[1] == words[2], **int8_figures,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--graphs", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--preset", default="70_13")
    ap.add_argument("--speaker-mode", choices=("kernel", "masked"), default="kernel")
    args = ap.parse_args(argv)
    print(json.dumps(run(args.graphs, args.seconds, args.preset, args.speaker_mode), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Score the demo models on held-out sessions: cpWER (meeteval) from SegLST and DER (0.25 s collar) from RTTM.

    python -m demo_models.evaluate [--sessions N] [--diar-nemo ...] [--asr-nemo ...] [--out DIR] [--no-served]
                                   [--precision fp32|int8|fp16]

Generates held-out sessions (demo_models.data, split `heldout`), then
- served stack: exports the .nemo files to ONNX, builds a CPU model repository, starts tritonserver and streams
  every session with `mtasr-client` (SegLST + RTTM per session);
- NeMo reference: NeMo's own streaming multitalker flow (export.reference: the tutorial's `SpeakerTaggedASR`,
  speaker-kernel mode, preset [70,13]): its SegLST, and its diarizer sigmoids binarized like the client does.
Both in audio timing: words at their audio times, utterances split at pauses (the reference maps NeMo's own
hypotheses the same way, `mtasr-reference --timing audio`).
Prints `eval: cpwer=<pct> cpwer_overlap=<pct> tcpwer=<pct> der=<pct> sessions=<n> pipeline=<served|nemo-reference>`
for each (with `--precision int8` the served stack runs twice, fp32 then the int8 graphs, `pipeline=served-int8`,
and a last line `eval-int8: cpwer_delta=... der_delta=...` gives int8 minus fp32 in points; with `--precision fp16`
the fp32 and the fp16 graphs, the GPU target's, run through the in-process pipeline on ONNX Runtime CPU,
`pipeline=in-process` and `pipeline=in-process-fp16`, and `eval-fp16: ...` gives fp16 minus fp32: no GPU is needed,
and the in-process pipeline is the one the served tests prove equal to the served stack), where `cpwer` is over
the sessions without overlap, `cpwer_overlap` over those with overlap, and
`tcpwer` meeteval's time-constrained cpWER over all sessions (collar 5 s, as in CHiME-8: a hypothesis word counts
only if its time falls within 5 s of the reference word's, words placed inside reference turns by characters);
writes `<out>/scores.json` (the same figures plus per-pipeline wall time).

The diarization service (the tutorial's Step 1, `mtasr-client --task diarize`) is scored beside it from its RTTM
(NeMo's post-processed turns) and NeMo's own streaming diarization on the same sessions:
`diarize: der=<pct> sessions=<n> pipeline=<served|nemo-reference>`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from demo_models.data import write_split
from mtasr.spec import SAMPLE_RATE

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EVAL_SEED = 20260


def read_rttm(path: Path) -> list[tuple[str, float, float]]:
    """(speaker, start, end) per RTTM line."""
    out = []
    for line in Path(path).read_text().splitlines():
        f = line.split()
        if f and f[0] == "SPEAKER":
            out.append((f[7], float(f[3]), float(f[3]) + float(f[4])))
    return out


def der(ref: list[tuple[str, float, float]], hyp: list[tuple[str, float, float]], collar: float = 0.25) -> tuple:
    """(error seconds, scored reference seconds) with pyannote.metrics; `collar` is +- seconds like md-eval -c."""
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    r, h = Annotation(), Annotation()
    for i, (spk, s, e) in enumerate(ref):
        r[Segment(s, e), i] = spk
    for i, (spk, s, e) in enumerate(hyp):
        h[Segment(s, e), i] = spk
    metric = DiarizationErrorRate(collar=2 * collar, skip_overlap=False)
    comp = metric(r, h, detailed=True, uem=Segment(0, max([e for _, _, e in ref + hyp] + [0.0])))
    return comp["confusion"] + comp["missed detection"] + comp["false alarm"], comp["total"]


def cpwer(refs: list[dict], hyps: list[dict]):
    """meeteval cpWER of SegLST lists (all sessions together) -> combined ErrorRate."""
    from meeteval.io import SegLST
    from meeteval.wer.api import cpwer as mt_cpwer
    from meeteval.wer.wer.error_rate import combine_error_rates

    results = mt_cpwer(SegLST(refs), SegLST(hyps))
    return combine_error_rates(*results.values())


TCPWER_COLLAR = 5.0


def word_level(hyps: list[dict]) -> list[dict]:
    """One SegLST entry per word at its own time (segments carry `word_times` in audio timing)."""
    out = []
    for h in hyps:
        times = h.get("word_times") or []
        words = h["words"].split()
        if len(times) != len(words):  # no word times: the segment as it is
            out.append(h)
            continue
        out += [{**h, "words": w, "start_time": a, "end_time": b, "word_times": [[a, b]]}
                for w, (a, b) in zip(words, times, strict=True)]
    return out


def tcpwer(refs: list[dict], hyps: list[dict], collar: float = TCPWER_COLLAR):
    """meeteval tcpWER of SegLST lists (all sessions together) -> combined ErrorRate."""
    from meeteval.io import SegLST
    from meeteval.wer.api import tcpwer as mt_tcpwer
    from meeteval.wer.wer.error_rate import combine_error_rates

    keep = ("session_id", "speaker", "start_time", "end_time", "words")
    hyp = [{k: h[k] for k in keep} for h in word_level(hyps)]
    results = mt_tcpwer(SegLST([{k: r[k] for k in keep} for r in refs]), SegLST(hyp), collar=collar)
    return combine_error_rates(*results.values())


def score(sessions: list[dict], out: Path, label: str) -> dict:
    """Read `<out>/<id>.seglst.json` and `<out>/<id>.rttm` hypotheses; print and return the scores."""
    groups: dict[str, tuple[list, list]] = {"clean": ([], []), "overlap": ([], [])}
    err = total = 0.0
    for s in sessions:
        refs = json.loads(Path(s["seglst_filepath"]).read_text())
        hyps = json.loads((out / f"{s['session_id']}.seglst.json").read_text())
        for h in hyps:
            h["session_id"] = s["session_id"]
        if not hyps:  # an empty transcript: all reference words are deletions
            hyps = [{"session_id": s["session_id"], "speaker": "none", "words": "", "start_time": 0.0,
                     "end_time": 0.0}]
        key = "overlap" if s["overlap_ratio"] > 0 else "clean"
        groups[key][0].extend(refs)
        groups[key][1].extend(hyps)
        e, t = der(read_rttm(Path(s["rttm_filepath"])), read_rttm(out / f"{s['session_id']}.rttm"))
        err, total = err + e, total + t
    result = {"sessions": len(sessions), "der": 100 * err / max(total, 1e-9)}
    for key, (refs, hyps) in groups.items():
        result[f"sessions_{key}"] = len({r["session_id"] for r in refs})
        result[f"cpwer_{key}"] = 100 * cpwer(refs, hyps).error_rate if refs else float("nan")
    all_refs = [r for refs, _ in groups.values() for r in refs]
    result["tcpwer"] = 100 * tcpwer(all_refs, [h for _, hyps in groups.values() for h in hyps]).error_rate
    print(eval_line(result, label), flush=True)
    return result


def score_diarization(sessions: list[dict], out: Path, label: str) -> dict:
    """DER of `<out>/<id>.rttm` (speaker turns) against the sessions' reference RTTM."""
    err = total = 0.0
    for s in sessions:
        e, t = der(read_rttm(Path(s["rttm_filepath"])), read_rttm(out / f"{s['session_id']}.rttm"))
        err, total = err + e, total + t
    result = {"sessions": len(sessions), "der": 100 * err / max(total, 1e-9)}
    print(diarize_line(result, label), flush=True)
    return result


def diarize_line(result: dict, label: str) -> str:
    return f"diarize: der={result['der']:.1f} sessions={result['sessions']} pipeline={label}"


def run_diarization_reference(sessions: list[dict], diar_nemo: Path, out: Path) -> float:
    """NeMo's streaming diarization (Step 1, 1.04 s setting) on every session: RTTM from its post-processed turns."""
    import soundfile as sf

    from client.stream import turn_rttm_lines
    from export.diarization_reference import DiarizationReference

    ref = DiarizationReference(str(diar_nemo))
    out.mkdir(parents=True, exist_ok=True)
    t0, audio_s = time.monotonic(), 0.0
    for s in sessions:
        audio, rate = sf.read(s["audio_filepath"], dtype="float32")
        audio_s += len(audio) / rate
        turns = ref.diarize(audio, s["session_id"]).turns
        (out / f"{s['session_id']}.rttm").write_text("\n".join(turn_rttm_lines(s["session_id"], turns)) + "\n")
    return (time.monotonic() - t0) / max(audio_s, 1e-9)


def eval_line(result: dict, label: str) -> str:
    return (f"eval: cpwer={result['cpwer_clean']:.1f} cpwer_overlap={result['cpwer_overlap']:.1f} "
            f"tcpwer={result['tcpwer']:.1f} der={result['der']:.1f} sessions={result['sessions']} pipeline={label}")


def run_reference(sessions: list[dict], diar_nemo: Path, asr_nemo: Path, out: Path, masked: bool) -> float:
    """NeMo's streaming flow on every session: SegLST from SpeakerTaggedASR, RTTM from that flow's diarizer outputs."""
    import soundfile as sf

    from client.stream import rttm_lines  # the client's binarisation, so both pipelines are scored alike
    from export.reference import Reference

    ref = Reference(str(diar_nemo), str(asr_nemo), (70, 13), masked_asr=masked)
    out.mkdir(parents=True, exist_ok=True)
    t0, audio_s = time.monotonic(), 0.0
    for s in sessions:
        audio, rate = sf.read(s["audio_filepath"], dtype="float32")
        assert rate == SAMPLE_RATE
        audio_s += len(audio) / rate
        segs = ref.transcribe(audio, s["session_id"], timing="audio")
        (out / f"{s['session_id']}.seglst.json").write_text(json.dumps(segs, indent=1))
        rttm = rttm_lines(s["session_id"], ref.diar_preds)
        (out / f"{s['session_id']}.rttm").write_text("\n".join(rttm) + "\n")
    return (time.monotonic() - t0) / max(audio_s, 1e-9)


def export_graphs(diar_nemo: Path, asr_nemo: Path, graphs: Path, presets: tuple[str, ...] = ("70,13",)) -> Path:
    """Export the .nemo files at `presets` with int8 and fp16 copies into `graphs`, unless it already holds them."""
    import subprocess
    import sys

    from mtasr.manifest import Manifest, ManifestError

    try:
        manifest = Manifest.load(graphs)
        if manifest.int8 and any(g.endswith("_fp16") for g in manifest.graphs) and \
                {p.replace(",", "_") for p in presets} <= set(manifest.presets):
            return graphs
    except ManifestError:
        pass
    subprocess.run([sys.executable, "-m", "export", "--nemo", str(diar_nemo), str(asr_nemo), "--out", str(graphs),
                    "--presets", *presets, "--int8", "--fp16"], check=True)
    return graphs


def run_in_process(sessions: list[dict], graphs: Path, out: Path, fp16: bool = False,
                   keep: dict | None = None) -> float:
    """The in-process pipeline (`mtasr.pipeline`, kernel mode, [70,13], timing audio) on every session with the
    fp32 graphs or their fp16 copies (ONNX Runtime CPU): SegLST and RTTM per session as the client writes them;
    `keep` (a dict) receives each session id's (finished session, diarizer activity). Returns the real-time factor
    (process CPU time / audio seconds)."""
    import soundfile as sf

    from client.stream import rttm_lines
    from export.parity.fp16 import Fp16Runner, stream
    from mtasr.pipeline import OrtRunner

    runner = Fp16Runner(graphs) if fp16 else OrtRunner(graphs)
    out.mkdir(parents=True, exist_ok=True)
    t0, audio_s = time.process_time(), 0.0
    for s in sessions:
        audio, rate = sf.read(s["audio_filepath"], dtype="float32")
        assert rate == SAMPLE_RATE
        audio_s += len(audio) / rate
        session, activity = stream(graphs, runner, audio, s["session_id"], preset="70_13")
        if keep is not None:
            keep[s["session_id"]] = (session, activity)
        segs = [{**g, "session_id": s["session_id"]} for g in session.segments.seglst()]
        (out / f"{s['session_id']}.seglst.json").write_text(json.dumps(segs, indent=1))
        (out / f"{s['session_id']}.rttm").write_text("\n".join(rttm_lines(s["session_id"], activity)) + "\n")
    return (time.process_time() - t0) / max(audio_s, 1e-9)


def run_served(sessions: list[dict], graphs: Path, work: Path, out: Path, triton_dir: Path, serve_venv: Path,
               precision: str = "fp32", diarize_out: Path | None = None) -> float:
    """Build a CPU repository serving the `precision` graphs, start tritonserver, stream every session with
    mtasr-client (and, with `diarize_out`, again with `--task diarize` into that folder)."""
    from client import cli
    from client.server import TritonServer
    from model_repository.build import build

    repo = build(graphs, "cpu", work / f"repo_{precision}", preset="70_13", speaker_mode="kernel",
                 precision=precision, admission_headroom=0.0)  # by count: accuracy must not depend on the load
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    log = work / f"tritonserver_{precision}.log"
    with TritonServer(repo, log_path=log, triton_dir=triton_dir, venv=serve_venv) as server:
        status = cli.main([*(s["audio_filepath"] for s in sessions), "--out", str(out), "--url", server.grpc_url,
                           "--quiet", "--no-plot", "--concurrency", "2"])
        if diarize_out is not None and not status:
            status = cli.main([*(s["audio_filepath"] for s in sessions), "--out", str(diarize_out), "--url",
                               server.grpc_url, "--quiet", "--no-plot", "--concurrency", "2", "--task", "diarize"])
    if status:
        raise RuntimeError(f"mtasr-client exited with {status}")
    for s in sessions:  # the client names outputs after the file stem, which is the session id
        assert (out / f"{s['session_id']}.seglst.json").is_file()
    return time.monotonic() - t0


def delta_line(fp32: dict, other: dict, precision: str = "int8") -> str:
    """`precision` minus fp32, in points, for each figure of the eval line."""
    keys = ("cpwer_clean", "cpwer_overlap", "tcpwer", "der")
    names = ("cpwer", "cpwer_overlap", "tcpwer", "der")
    return f"eval-{precision}: " + " ".join(f"{n}_delta={other[k] - fp32[k]:+.1f}"
                                            for n, k in zip(names, keys, strict=True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demo_models.evaluate", description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--max-seconds", type=float, default=20.0)
    ap.add_argument("--data", type=Path, default=Path("artifacts/eval/heldout"))
    ap.add_argument("--out", type=Path, default=Path("artifacts/eval"))
    ap.add_argument("--diar-nemo", type=Path, default=HERE / "diar_demo.nemo")
    ap.add_argument("--asr-nemo", type=Path, default=HERE / "asr_demo.nemo")
    ap.add_argument("--masked", action="store_true", help="feature-masking mode instead of speaker kernels")
    ap.add_argument("--no-served", action="store_true", help="skip the Triton pipeline")
    ap.add_argument("--no-reference", action="store_true", help="skip NeMo's reference pipeline")
    ap.add_argument("--precision", choices=("fp32", "int8", "fp16"), default="fp32",
                    help="int8: also serve the int8 diarizer and encoder graphs and print their scores beside fp32's; "
                         "fp16: also run the fp32 and fp16 graphs in process (ONNX Runtime CPU) and print both")
    ap.add_argument("--triton-dir", type=Path, default=ROOT / ".triton")
    ap.add_argument("--serve-venv", type=Path, default=ROOT / ".venv-serve")
    args = ap.parse_args(argv)

    from nemo.utils import logging

    logging.setLevel(logging.ERROR)
    summary = args.data / "sessions.jsonl"
    if not summary.exists() or sum(1 for _ in summary.open()) != args.sessions:
        write_split(args.data, args.sessions, "heldout", EVAL_SEED, args.max_seconds)
    sessions = [json.loads(line) for line in summary.read_text().splitlines()]
    results, diarize = {}, {}
    work = args.out / "served_work"
    if args.precision == "fp16":
        graphs = export_graphs(args.diar_nemo, args.asr_nemo, work / "model")
        for label, fp16 in (("in-process", False), ("in-process-fp16", True)):
            out = args.out / label.replace("-", "_")
            rtf = run_in_process(sessions, graphs, out, fp16=fp16)
            results[label] = {**score(sessions, out, label), "cpu_rtf": round(rtf, 3)}
    if not args.no_served:
        graphs = export_graphs(args.diar_nemo, args.asr_nemo, work / "model")
        for precision in ("fp32", "int8") if args.precision == "int8" else ("fp32",):
            label = "served" if precision == "fp32" else f"served-{precision}"
            out = args.out / label.replace("-", "_")
            diarize_out = args.out / f"diarize_{label.replace('-', '_')}"
            wall = run_served(sessions, graphs, work, out, args.triton_dir, args.serve_venv, precision, diarize_out)
            results[label] = {**score(sessions, out, label), "wall_s": round(wall, 1)}
            diarize[label] = score_diarization(sessions, diarize_out, label)
    if not args.no_reference:
        rtf = run_reference(sessions, args.diar_nemo, args.asr_nemo, args.out / "nemo", args.masked)
        results["nemo-reference"] = {**score(sessions, args.out / "nemo", "nemo-reference"), "rtf": round(rtf, 3)}
        rtf = run_diarization_reference(sessions, args.diar_nemo, args.out / "diarize_nemo")
        diarize["nemo-reference"] = {**score_diarization(sessions, args.out / "diarize_nemo", "nemo-reference"),
                                     "rtf": round(rtf, 3)}
    for name, r in results.items():  # the lines together at the end
        print(eval_line(r, name))
    if "served-int8" in results:
        print(delta_line(results["served"], results["served-int8"]))
    if "in-process-fp16" in results:
        print(delta_line(results["in-process"], results["in-process-fp16"], "fp16"))
    for name, r in diarize.items():
        print(diarize_line(r, name))
    (args.out / "scores.json").write_text(json.dumps({**results, "diarize": diarize}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

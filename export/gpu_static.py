"""`make gpu-static`: what of the GPU path can be checked without a GPU, on the trained demo models.

    python -m export.gpu_static [--graphs DIR] [--sessions N] [--out DIR]

1. Shapes: ONNX Runtime's symbolic shape inference on every exported graph (fp32, fp16 and int8 twins, both
   diarizers, two encoder presets): each output dim must follow from the input dims (`export.shapes`).
2. fp16 with trained weights (ONNX Runtime CPU): the in-process pipeline with the fp32 graphs and with the fp16
   diarizer and encoder on the committed samples (tests/data) and the held-out eval sessions: (token, frame)
   agreement (`export.parity.fp16`) and the eval's cpWER/DER of both (`demo_models.evaluate`); the largest |x| of
   every intermediate tensor of the fp32 graphs on the committed samples against 65504, the nodes that must stay in
   fp32 and whether the fp16 graphs keep them so (`export.fp16_ranges`).

Last line: `gpu-static: shapes_from_inputs=<k>/<graphs> fp16_tokens=<same>/<total> fp16_cpwer_delta=<x>
fp16_headroom=<min over tensors of 65504 / max |x|>`; details in `<out>/gpu_static.json`. Exits non-zero when a
graph has a value-sized output, a tensor was non-finite in fp32, or an fp16 graph computes in fp16 a node that must
stay in fp32. Token agreement and the cpWER delta are measured and reported, not judged.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import soundfile as sf

from export.fp16_ranges import RangeRunner, missing_fp32
from export.parity.fp16 import FP16_SUFFIX, Agreement, Fp16Runner, stream
from export.shapes import check_folder
from mtasr.manifest import Manifest, ManifestError

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "tests" / "data"
PRESETS = ("70,13", "70,0")  # the served default and the lowest latency: both encoder geometries


def line(shapes_ok: int, graphs: int, agreement: Agreement, cpwer_delta: float, headroom: float) -> str:
    return (f"gpu-static: shapes_from_inputs={shapes_ok}/{graphs} fp16_tokens={agreement.same}/{agreement.total} "
            f"fp16_cpwer_delta={cpwer_delta:+.1f} fp16_headroom={headroom:.1f}")


def main(argv: list[str] | None = None) -> int:
    from demo_models import evaluate

    ap = argparse.ArgumentParser(prog="python -m export.gpu_static", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("artifacts/gpu_static"))
    ap.add_argument("--graphs", type=Path, default=None, help="an exported folder with fp16 copies, checked as it "
                                                               "is (default: <out>/graphs, exported from --diar-nemo "
                                                               "and --asr-nemo when missing)")
    ap.add_argument("--sessions", type=int, default=20, help="held-out eval sessions")
    ap.add_argument("--diar-nemo", type=Path, default=ROOT / "demo_models" / "diar_demo.nemo")
    ap.add_argument("--asr-nemo", type=Path, default=ROOT / "demo_models" / "asr_demo.nemo")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    if args.graphs is None:
        graphs = evaluate.export_graphs(args.diar_nemo, args.asr_nemo, args.out / "graphs", PRESETS)
    else:  # never re-exported: it may be someone's full-size export
        graphs = args.graphs
        try:
            names = Manifest.load(graphs).graphs
        except ManifestError as exc:
            ap.error(str(exc))
        if not any(g.endswith(FP16_SUFFIX) for g in names):
            ap.error(f"{graphs} has no fp16 graphs: export with --fp16")
    manifest = Manifest.load(graphs)
    report: dict = {"graphs": str(graphs)}

    shapes = check_folder(graphs)
    shapes_ok = sum(not bad for bad in shapes.values())
    report["shapes"] = {"from_inputs": f"{shapes_ok}/{len(shapes)}", "value_sized": {k: v for k, v in shapes.items()
                                                                                       if v}}

    samples = {p.stem: sf.read(str(p), dtype="float32")[0] for p in sorted(SAMPLES.glob("*.flac"))}
    names = manifest.graph_names()
    measured = {names["diarizer"], names["encoder"]}
    ranges_runner = RangeRunner(graphs, measured)
    agreement, fp16 = Agreement(), Fp16Runner(graphs)
    for name, audio in samples.items():  # the fp32 run is the range run: same graphs, every tensor exposed
        agreement.add(name, stream(graphs, ranges_runner, audio, name), stream(graphs, fp16, audio, name))

    data = args.out / "heldout"
    summary = data / "sessions.jsonl"
    if not summary.exists() or sum(1 for _ in summary.open()) != args.sessions:
        evaluate.write_split(data, args.sessions, "heldout", evaluate.EVAL_SEED, 20.0)
    sessions = [json.loads(x) for x in summary.read_text().splitlines()]
    scores, runs = {}, {}
    for label, use_fp16 in (("in-process", False), ("in-process-fp16", True)):
        out = args.out / label.replace("-", "_")
        evaluate.run_in_process(sessions, graphs, out, fp16=use_fp16, keep=runs.setdefault(label, {}))
        scores[label] = evaluate.score(sessions, out, label)
    for s in sessions:  # token agreement on the eval sessions too
        sid = s["session_id"]
        agreement.add(sid, runs["in-process"][sid], runs["in-process-fp16"][sid])
    cpwer_delta = scores["in-process-fp16"]["cpwer_clean"] - scores["in-process"]["cpwer_clean"]
    der_delta = scores["in-process-fp16"]["der"] - scores["in-process"]["der"]

    failures = [f"{g}: value-sized outputs {bad}" for g, bad in shapes.items() if bad]
    headroom = min(r.headroom() for r in ranges_runner.ranges.values())
    report["fp16"] = {
        "tokens": f"{agreement.same}/{agreement.total}", "sessions": agreement.sessions,
        "same_words_sessions": agreement.same_words, "diarizer_decisions_differ": agreement.decisions_differ,
        "diarizer_decisions": agreement.decisions, "activity_max_abs": agreement.activity_max_abs,
        "eval": scores, "cpwer_delta": cpwer_delta, "der_delta": der_delta,
        "eval_delta_line": evaluate.delta_line(scores["in-process"], scores["in-process-fp16"], "fp16"),
        "per_session": agreement.per_session}
    report["ranges"] = {}
    for graph, r in ranges_runner.ranges.items():
        keep = r.keep_fp32()
        missing = missing_fp32(graphs / (graph + FP16_SUFFIX), list(keep))
        non_finite = {k: t.non_finite for k, t in r.tensors.items() if t.non_finite}
        failures += [f"{graph}: node {n} must stay fp32 ({keep[n]}) but is fp16 in {graph}{FP16_SUFFIX}"
                     for n in missing]
        failures += [f"{graph}: {n} non-finite values in fp32 tensor {k}" for k, n in non_finite.items()]
        squared = r.squared_headroom()
        report["ranges"][graph] = {
            "calls": r.calls, "tensors": len(r.tensors), "headroom": r.headroom(), "worst": r.worst(8),
            "mask_path_max_abs": r.mask_max(), "mask_path_tensors": sum(t.mask_path for t in r.tensors.values()),
            "layer_norms": len(squared), "layer_norm_sum_squares_headroom": min(squared.values(), default=None),
            "keep_fp32": keep, "keep_fp32_missing_in_fp16_graph": missing, "max_abs_by_op": r.by_op()}
    report["failures"] = failures
    report["seconds"] = round(time.monotonic() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_static.json").write_text(json.dumps(report, indent=1, default=str))
    for graph, r in report["ranges"].items():
        print(f"{graph}: headroom={r['headroom']:.1f} layer_norm_sum_squares_headroom="
              f"{r['layer_norm_sum_squares_headroom']:.1f} keep_fp32={len(r['keep_fp32'])} "
              f"missing={len(r['keep_fp32_missing_in_fp16_graph'])} mask_max={r['mask_path_max_abs']:.0f}")
    print(report["fp16"]["eval_delta_line"])
    for failure in failures:
        print(f"FAILED: {failure}")
    print(line(shapes_ok, len(shapes), agreement, cpwer_delta, headroom))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

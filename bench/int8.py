"""int8 vs fp32 graphs side by side: one steady-state step of each, alternating in one process, medians.

    python -m bench.int8 --graphs DIR [--preset 70_13] [--rows 2] [--repeats 20] [--threads 0]

`DIR` is an exported folder with int8 twins (`python -m export ... --int8`). Steps: the diarizer with a full speaker
cache and FIFO (1 row), the encoder at the preset with `rows` speaker rows, caches half full (as `bench.roofline`).
fp32 and int8 calls alternate so that both see the same machine load; the figure is fp32 ms / int8 ms (> 1: int8
faster), with the max abs of the int8 outputs vs the fp32 ones on the same inputs.

Also per step: where the time goes (an ONNX Runtime profile of the optimised fp32 and int8 sessions: share of the
step per operator type) and a roofline row for int8: the step's arithmetic (counted as in `bench.roofline`) per
int8 second against the measured int8 GEMM peak, i.e. a square GEMM quantised by the exporter's own recipe
(`export.int8`: weights int8 per channel, activations quantised per call) and run by ONNX Runtime.
Prints tables and `int8: diarizer=<x>x encoder=<x>x`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.batching import best_ms, encoder_feeds
from bench.roofline import diarizer_feeds, kernel_events, profile_flops
from mtasr.manifest import INT8, Manifest
from mtasr.pipeline import PipelineConfig
from mtasr.pipeline.runner import ort_session


def alternating_ms(calls: dict[str, object], repeats: int) -> dict[str, float]:
    """Median ms per call of each named function, the functions called in turn `repeats` times (after a warm-up)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for fn in calls.values():
        fn()
    for _ in range(repeats):
        for name, fn in calls.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1000)
    return {name: statistics.median(v) for name, v in times.items()}


def int8_gemm_peak(n: int = 2048, repeats: int = 10, threads: int = 0) -> dict:
    """GOP/s (2 x multiply-adds) of an n x n x n GEMM with a constant weight quantised by `export.int8.to_int8`,
    next to the same fp32 GEMM: the int8 ceiling a quantised graph's MatMuls can reach here."""
    import tempfile

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from export.int8 import to_int8
    from export.onnx_export import MODEL_FILE

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32), "w")
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])
    model = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["c"])], "mm", [a], [c],
                                                initializer=[w]), opset_imports=[helper.make_opsetid("", 17)])
    x = {"a": rng.standard_normal((n, n), dtype=np.float32)}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "fp32").mkdir()
        onnx.save(model, str(Path(tmp) / "fp32" / MODEL_FILE))
        sessions = {"fp32": ort_session(Path(tmp) / "fp32" / MODEL_FILE, threads),
                    "int8": ort_session(to_int8(Path(tmp) / "fp32", Path(tmp) / "int8"), threads)}
        gops = {p: 2.0 * n**3 / best_ms(lambda s=s: s.run(None, x), repeats) / 1e6 for p, s in sessions.items()}
    return {"n": n, "int8_gops": round(gops["int8"], 1), "fp32_gflops": round(gops["fp32"], 1),
            "int8_vs_fp32": round(gops["int8"] / gops["fp32"], 2)}


def op_profile(path: Path, feeds: dict[str, np.ndarray], threads: int = 0, runs: int = 3) -> dict[str, float]:
    """Share of one step's operator time per operator type (optimised session, as served; `runs` profiled runs
    after a warm-up), largest first."""
    by_op: dict[str, float] = {}
    for e in kernel_events(path, feeds, runs, threads=threads):
        by_op[e["args"]["op_name"]] = by_op.get(e["args"]["op_name"], 0.0) + e["dur"]
    total = sum(by_op.values()) or 1.0
    return {op: round(v / total, 3) for op, v in sorted(by_op.items(), key=lambda kv: -kv[1])}


def run(graphs: Path, preset: str = "70_13", rows: int = 2, repeats: int = 20, threads: int = 0,
        profile: bool = True) -> dict:
    """Per step: fp32 and int8 median ms, their ratio and the int8 outputs' max abs vs fp32; with `profile`, the
    operator shares of both and the int8 roofline row (GOP, GOP/s, fraction of the int8 GEMM peak)."""
    graphs = Path(graphs)
    manifest = Manifest.load(graphs)
    fp32 = PipelineConfig.from_manifest(manifest, preset=preset)
    int8 = PipelineConfig.from_manifest(manifest, preset=preset, precision=INT8)
    feeds = {"diarizer": diarizer_feeds(fp32), "encoder": encoder_feeds(fp32, rows)}
    out: dict = {"preset": preset, "encoder_rows": rows, "threads": threads, "repeats": repeats, "steps": {}}
    if profile:
        out["peak"] = int8_gemm_peak(repeats=max(3, repeats // 4), threads=threads)
    for role, feed in feeds.items():
        sessions = {p: ort_session(graphs / cfg.graphs[role] / "model.onnx", threads)
                    for p, cfg in (("fp32", fp32), ("int8", int8))}
        results = {p: s.run(None, feed) for p, s in sessions.items()}
        diff = max(float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
                   for a, b in zip(results["int8"], results["fp32"], strict=True))
        ms = alternating_ms({p: (lambda s=s, f=feed: s.run(None, f)) for p, s in sessions.items()}, repeats)
        out["steps"][role] = {"graphs": {"fp32": fp32.graphs[role], "int8": int8.graphs[role]},
                              "fp32_ms": round(ms["fp32"], 2), "int8_ms": round(ms["int8"], 2),
                              "speedup": round(ms["fp32"] / ms["int8"], 2), "max_abs": diff}
        if profile:
            step = out["steps"][role]
            gop = profile_flops(graphs / fp32.graphs[role] / "model.onnx", feed)["gflops"]
            step["gop"] = round(gop, 3)
            step["int8_gops_per_s"] = round(gop / ms["int8"] * 1000, 1)
            step["int8_peak_fraction"] = round(step["int8_gops_per_s"] / out["peak"]["int8_gops"], 3)
            step["ops"] = {p: op_profile(graphs / cfg.graphs[role] / "model.onnx", feed, threads)
                           for p, cfg in (("fp32", fp32), ("int8", int8))}
    return out


def table(result: dict) -> str:
    lines = ["| step | fp32 ms | int8 ms | fp32 / int8 | int8 max abs vs fp32 |", "|---|---|---|---|---|"]
    for role, s in result["steps"].items():
        label = f"encoder ({result['encoder_rows']} rows)" if role == "encoder" else "diarizer (full cache + FIFO)"
        lines.append(f"| {label} | {s['fp32_ms']} | {s['int8_ms']} | {s['speedup']:.2f}× | {s['max_abs']:.3g} |")
    return "\n".join(lines)


def roofline_table(result: dict) -> str:
    """int8 roofline rows and the operator shares (top 5 per precision) of each step."""
    p = result["peak"]
    lines = [f"int8 GEMM {p['n']}³ peak (the exporter's recipe): {p['int8_gops']} GOP/s = {p['int8_vs_fp32']}× "
             f"the fp32 GEMM's {p['fp32_gflops']} GFLOP/s", "",
             "| step | GOP | int8 ms | GOP/s | fraction of int8 peak | fp32 time by operator "
             "| int8 time by operator |",
             "|---|---|---|---|---|---|---|"]
    for role, s in result["steps"].items():
        ops = {q: ", ".join(f"{op} {share:.0%}" for op, share in list(s["ops"][q].items())[:5]) for q in s["ops"]}
        lines.append(f"| {role} | {s['gop']} | {s['int8_ms']} | {s['int8_gops_per_s']} | "
                     f"{s['int8_peak_fraction']:.0%} | {ops['fp32']} | {ops['int8']} |")
    return "\n".join(lines)


def line(result: dict) -> str:
    return "int8: " + " ".join(f"{role}={s['speedup']:.2f}x" for role, s in result["steps"].items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.int8", description=__doc__.split("\n")[0])
    ap.add_argument("--graphs", type=Path, required=True, help="exported graphs folder with int8 twins")
    ap.add_argument("--preset", default="70_13")
    ap.add_argument("--rows", type=int, default=2, help="encoder rows (active speakers) per step")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    args = ap.parse_args(argv)
    result = run(args.graphs, args.preset, args.rows, args.repeats, args.threads)
    print(table(result))
    print(roofline_table(result))
    print(json.dumps(result))
    print(line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Roofline: this machine's measured fp32 matmul peak, the FLOPs of one diarizer and one encoder step counted from
the graphs, and the fraction of the peak each step reaches with ONNX Runtime.

    python -m bench.roofline --graphs DIR [--preset 70_13] [--rows 2] [--repeats 10]

FLOPs are counted from an ONNX Runtime profile of the step run unoptimised (every MatMul / Gemm / Conv node with
its actual input shapes: 2 x multiply-adds), so they are the graph's own arithmetic at the streaming shapes.
The step is then timed with the optimised session that serving uses. The peak is the best of ONNX Runtime and
numpy on a square fp32 GEMM with all cores (the same thread count as the steps), fastest of the repeats.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.batching import best_ms, encoder_feeds, median_ms
from mtasr.examples import example_feed
from mtasr.pipeline import PipelineConfig
from mtasr.pipeline.runner import ort_session
from mtasr.spec import DiarizerInputs, diarizer_spec, encoder_spec

DI = DiarizerInputs.tensor_names()  # tensor names by attribute

MATMUL_OPS = {"MatMul", "Gemm", "FusedMatMul", "FusedGemm"}
CONV_OPS = {"Conv", "FusedConv"}


def matmul_peak(n: int = 2048, repeats: int = 10, threads: int = 0) -> dict:
    """GFLOP/s of an n x n x n fp32 GEMM: ONNX Runtime (a one-node graph) and numpy; the best is the peak."""
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])
    model = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm", [a, b], [c]),
                              opset_imports=[helper.make_opsetid("", 17)])
    sess = ort_session(model.SerializeToString(), threads)
    x = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    flops = 2.0 * n**3
    ort_gflops = flops / best_ms(lambda: sess.run(None, {"a": x, "b": x}), repeats) / 1e6
    np_gflops = flops / best_ms(lambda: x @ x, repeats) / 1e6
    return {"n": n, "onnxruntime_gflops": round(ort_gflops, 1), "numpy_gflops": round(np_gflops, 1),
            "peak_gflops": round(max(ort_gflops, np_gflops), 1)}


def _node_flops(op: str, first_input: list[int], output: list[int], weight: list[int] | None) -> float:
    """2 x multiply-adds: MatMul/Gemm from the first input's inner dim; Conv from the weight (Cout, Cin/g, *k)."""
    if op in MATMUL_OPS:
        return 2.0 * math.prod(output) * first_input[-1]
    if op in CONV_OPS and weight:
        return 2.0 * math.prod(output) * math.prod(weight[1:])
    return 0.0


def _weight_shapes(path: Path) -> dict[str, list[int]]:
    """Node name -> shape of its second input when that is an initializer (Conv / MatMul weights)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {t.name: list(t.dims) for t in graph.initializer}
    return {n.name: inits[n.input[1]] for n in graph.node if len(n.input) > 1 and n.input[1] in inits}


KERNEL_SUFFIX = "_kernel_time"


def kernel_events(path: Path, feeds: dict[str, np.ndarray], runs: int = 1, optimize: bool = True,
                  threads: int = 0, warm_up: bool = True) -> list[dict]:
    """ONNX Runtime's per-node kernel events of `runs` profiled runs of the graph at `path` on `feeds` (after one
    unrecorded warm-up run when `warm_up`), each with its `op_name` in `args`."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = ort_session(path, threads, optimize=optimize, profile_prefix=str(Path(tmp) / "prof"))
        for _ in range(runs + warm_up):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    first = next((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), None)
    after = first["ts"] + first["dur"] if warm_up and first else 0
    return [e for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})
            and e.get("name", "").endswith(KERNEL_SUFFIX) and e["ts"] >= after]


def profile_flops(path: Path, feeds: dict[str, np.ndarray]) -> dict:
    """GFLOPs of one run of the graph at `path` on `feeds`, from an unoptimised ONNX Runtime profile."""
    weights = _weight_shapes(path)
    by_op: dict[str, float] = {}
    for e in kernel_events(path, feeds, optimize=False, warm_up=False):
        args = e["args"]
        shapes = [list(next(iter(d.values()))) for d in args.get("input_type_shape", [])]
        outs = [list(next(iter(d.values()))) for d in args.get("output_type_shape", [])]
        if not shapes or not outs:
            continue
        node = e["name"][: -len(KERNEL_SUFFIX)]
        weight = weights.get(node) or (shapes[1] if len(shapes) > 1 else None)
        f = _node_flops(args["op_name"], shapes[0], outs[0], weight)
        if f:
            by_op[args["op_name"]] = by_op.get(args["op_name"], 0.0) + f
    return {"gflops": sum(by_op.values()) / 1e9, "by_op_flops": {k: int(v) for k, v in by_op.items()}}


def diarizer_feeds(cfg: PipelineConfig, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """One streaming diarizer step with a full speaker cache and FIFO (the steady state)."""
    d, frames = cfg.dims, cfg.geometry.step_frames
    sizes = {"batch": batch, "chunk_frames": frames, "spkcache_frames": d.spkcache_len, "fifo_frames": d.fifo_len}
    ints = {DI.chunk_lengths: frames, DI.spkcache_lengths: d.spkcache_len, DI.fifo_lengths: d.fifo_len}
    return example_feed(diarizer_spec(d), sizes, ints, seed)


def run(graphs: Path, preset: str = "70_13", rows: int = 2, repeats: int = 10, threads: int = 0,
        peak: dict | None = None) -> dict:
    """Peak, and per step (diarizer with 1 row; encoder with `rows` speaker rows): GFLOPs, ms, GFLOP/s, fraction."""
    graphs = Path(graphs)
    cfg = PipelineConfig.from_folder(graphs, preset=preset)
    peak = peak or matmul_peak(threads=threads)
    steps = {"diarizer": (cfg.graphs["diarizer"], diarizer_feeds(cfg)),
             "encoder": (cfg.graphs["encoder"], encoder_feeds(cfg, rows))}
    out: dict = {"peak": peak, "preset": preset, "encoder_rows": rows, "steps": {}}
    for name, (graph, feeds) in steps.items():
        path = graphs / graph / "model.onnx"
        counted = profile_flops(path, feeds)
        sess = ort_session(path, threads)
        outputs = (diarizer_spec if name == "diarizer" else encoder_spec)(cfg.dims).output_names
        seconds = median_ms(lambda s=sess, f=feeds, o=outputs: s.run(o, f), repeats) / 1000
        gflops_s = counted["gflops"] / seconds
        out["steps"][name] = {"graph": graph, "gflops": round(counted["gflops"], 3), "ms": round(seconds * 1000, 2),
                              "gflops_per_s": round(gflops_s, 1),
                              "peak_fraction": round(gflops_s / peak["peak_gflops"], 3),
                              "by_op_gflops": {k: round(v / 1e9, 4) for k, v in counted["by_op_flops"].items()}}
    return out


def table(result: dict) -> str:
    p = result["peak"]
    lines = [f"fp32 GEMM {p['n']}³ peak: {p['peak_gflops']} GFLOP/s (onnxruntime {p['onnxruntime_gflops']}, "
             f"numpy {p['numpy_gflops']})", "",
             "| step | GFLOPs | ms | GFLOP/s | fraction of peak |", "|---|---|---|---|---|"]
    for name, s in result["steps"].items():
        label = f"{name} ({result['encoder_rows']} rows)" if name == "encoder" else f"{name} (1 row)"
        lines.append(f"| {label} | {s['gflops']} | {s['ms']} | {s['gflops_per_s']} | {s['peak_fraction']:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.roofline", description=__doc__.split("\n")[0])
    ap.add_argument("--graphs", type=Path, required=True, help="exported graphs folder (with manifest.json)")
    ap.add_argument("--preset", default="70_13")
    ap.add_argument("--rows", type=int, default=2, help="encoder rows (active speakers) per step")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    args = ap.parse_args(argv)
    result = run(args.graphs, args.preset, args.rows, args.repeats, args.threads)
    print(table(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Roofline: the FLOPs of one diarizer and one encoder step counted from the graphs, this machine's fp32 GEMM peak
measured at the shapes and threading those steps use, and the fraction of the peak each step reaches.

    python -m bench.roofline --graphs DIR [--preset 70_13] [--rows 2] [--repeats 10] [--size tiny|full]

Counted FLOPs come from an ONNX Runtime profile of the step run unoptimised (every MatMul / Gemm / Conv node with
its actual input shapes: 2 x multiply-adds), so they are the graph's own arithmetic at the streaming shapes; with
`--size` (random-init graphs of a known architecture) the diarizer's count is checked against an analytic count
of the Sortformer step (`sortformer_step_flops`). The step is timed with the optimised session serving uses.

The peak is what ONNX Runtime's GEMM does on this machine with the steps' own settings: the same intra-op threads,
weights as constant initializers (ONNX Runtime pre-packs them, as it does in the exported graphs), and every
distinct MatMul / Gemm / Conv node of the steps timed alone as a one-node graph at its profiled shapes, next to a
square 2048³ GEMM; the peak is the fastest of them (best of the repeats). Per step, its GEMMs alone (each node at
its own measured speed, summed) are the step's GEMM floor: no run of the step can take less, and no step can run
above the peak; `check` says when a measurement breaks either (a bad peak, not a fast step).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.batching import best_ms, encoder_feeds, median_ms
from mtasr.examples import example_feed
from mtasr.manifest import Manifest
from mtasr.pipeline import PipelineConfig
from mtasr.pipeline.runner import ort_session
from mtasr.spec import DiarizerInputs, diarizer_spec, encoder_spec

DI = DiarizerInputs.tensor_names()  # tensor names by attribute

MATMUL_OPS = {"MatMul", "Gemm", "FusedMatMul", "FusedGemm"}
CONV_OPS = {"Conv", "FusedConv"}
SQUARE_N = 2048
ANALYTIC_TOLERANCE = 0.01  # counted vs analytic FLOPs of the diarizer step


def _node_flops(op: str, first_input: list[int], output: list[int], weight: list[int] | None) -> float:
    """2 x multiply-adds: MatMul/Gemm from the first input's inner dim; Conv from the weight (Cout, Cin/g, *k)."""
    if op in MATMUL_OPS:
        return 2.0 * math.prod(output) * first_input[-1]
    if op in CONV_OPS and weight:
        return 2.0 * math.prod(output) * math.prod(weight[1:])
    return 0.0


def _load_graph(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False)


KERNEL_SUFFIX = "_kernel_time"


def kernel_events(path: Path | bytes, feeds: dict[str, np.ndarray], runs: int = 1, optimize: bool = True,
                  threads: int = 0, warm_up: bool = True) -> list[dict]:
    """ONNX Runtime's per-node kernel events of `runs` profiled runs of the graph at `path` (or serialised) on
    `feeds` (after one unrecorded warm-up run when `warm_up`), each with its `op_name` in `args`."""
    with tempfile.TemporaryDirectory() as tmp:
        sess = ort_session(path, threads, optimize=optimize, profile_prefix=str(Path(tmp) / "prof"))
        for _ in range(runs + warm_up):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    first = next((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), None)
    after = first["ts"] + first["dur"] if warm_up and first else 0
    return [e for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})
            and e.get("name", "").endswith(KERNEL_SUFFIX) and e["ts"] >= after]


def _shapes(entries: list[dict]) -> list[list[int]]:
    return [list(next(iter(d.values()))) for d in entries]


@dataclass(frozen=True)
class GemmNode:
    """One counted node of a profiled run: its FLOPs and what a one-node copy of it needs (inputs' shapes, which
    inputs are constant, the node itself)."""

    name: str
    op: str
    flops: float
    inputs: tuple[tuple[tuple[int, ...], bool], ...]  # (shape, constant) per input, "" inputs left out
    signature: str  # op, attributes and inputs: nodes with equal signatures run the same kernel


def _named(path: Path):
    """The graph at `path` with every unnamed node named (profile events and one-node copies go by name)."""
    model = _load_graph(path)
    for i, node in enumerate(model.graph.node):
        node.name = node.name or f"{node.op_type}_{i}"
    return model


def _constants(graph) -> set[str]:
    """Tensors that do not depend on the graph's inputs: initializers and what nodes compute from them alone
    (ONNX Runtime folds these, so a weight reached through a Transpose is as constant as an initializer)."""
    consts = {t.name for t in graph.initializer}
    for node in graph.node:  # topological order
        if node.op_type == "Constant" or (node.input and all(i in consts or not i for i in node.input)):
            consts.update(node.output)
    return consts


def gemm_nodes(path: Path, feeds: dict[str, np.ndarray]) -> list[GemmNode]:
    """Every MatMul / Gemm / Conv node of one unoptimised run of the graph at `path` on `feeds`, with its FLOPs."""
    model = _named(path)
    graph = model.graph
    inits = {t.name: tuple(t.dims) for t in graph.initializer}
    consts = _constants(graph)
    nodes = {n.name: n for n in graph.node}
    out = []
    renamed = any(n.name != m.name for n, m in zip(model.graph.node, _load_graph(path).graph.node, strict=True))
    # a graph with external data must run from its own path (exported graphs name every node)
    for e in kernel_events(model.SerializeToString() if renamed else path, feeds, optimize=False, warm_up=False):
        args, name = e["args"], e["name"][: -len(KERNEL_SUFFIX)]
        op, node = args["op_name"], nodes.get(e["name"][: -len(KERNEL_SUFFIX)])
        listed, outs = _shapes(args.get("input_type_shape", [])), _shapes(args.get("output_type_shape", []))
        if op not in MATMUL_OPS | CONV_OPS or node is None or not outs:
            continue
        # the profile lists the non-initializer inputs' shapes, in order; initializers' shapes are in the graph
        it, inputs = iter(listed), []
        for i in node.input:
            if i:
                inputs.append((tuple(inits[i]) if i in inits else tuple(next(it)), i in consts))
        weight = list(inputs[1][0]) if len(inputs) > 1 else None
        flops = _node_flops(op, list(inputs[0][0]), outs[0], weight)
        if not flops:
            continue
        attrs = sorted(str(a).replace("\n", " ") for a in node.attribute)
        out.append(GemmNode(name, op, flops, tuple(inputs), f"{op}|{attrs}|{inputs}"))
    return out


def profile_flops(path: Path, feeds: dict[str, np.ndarray]) -> dict:
    """GFLOPs of one run of the graph at `path` on `feeds`, from an unoptimised ONNX Runtime profile."""
    by_op: dict[str, float] = {}
    for n in gemm_nodes(path, feeds):
        by_op[n.op] = by_op.get(n.op, 0.0) + n.flops
    return {"gflops": sum(by_op.values()) / 1e9, "by_op_flops": {k: int(v) for k, v in by_op.items()}}


def _one_node_model(node, inputs: tuple[tuple[tuple[int, ...], bool], ...], opsets) -> tuple[bytes, dict]:
    """A graph of `node` alone: constant inputs as initializers, the others as graph inputs; and its feeds."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph_inputs, inits, feeds, names = [], [], {}, []
    for k, (shape, constant) in enumerate(inputs):
        name = f"x{k}"
        data = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        names.append(name)
        if constant:
            inits.append(numpy_helper.from_array(data, name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
            feeds[name] = data
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    del copy.input[:], copy.output[:]
    copy.input.extend(names)
    copy.output.append("y")
    copy.name = "gemm"
    graph = helper.make_graph([copy], "gemm", graph_inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                             None)], initializer=inits)
    return helper.make_model(graph, opset_imports=list(opsets)).SerializeToString(), feeds


def node_rates(path: Path, nodes: list[GemmNode], repeats: int = 10, threads: int = 0) -> dict[str, float]:
    """GFLOP/s of each distinct node (by signature) run alone, with `threads`, best of `repeats`."""
    model = _named(path)
    by_name = {n.name: n for n in model.graph.node}
    rates: dict[str, float] = {}
    for n in nodes:
        if n.signature in rates:
            continue
        proto, feeds = _one_node_model(by_name[n.name], n.inputs, model.opset_import)
        sess = ort_session(proto, threads)
        rates[n.signature] = n.flops / best_ms(lambda s=sess, f=feeds: s.run(None, f), repeats) / 1e6
    return rates


def matmul_peak(n: int = SQUARE_N, repeats: int = 10, threads: int = 0) -> dict:
    """GFLOP/s of an n x n x n fp32 GEMM in ONNX Runtime with a constant (pre-packed) weight, as the graphs' weights
    are; numpy's (its own BLAS, threads as configured) beside it for reference, not as the peak."""
    from onnx import TensorProto, helper, numpy_helper

    x = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["c"])], "mm", [a], [c],
                              initializer=[numpy_helper.from_array(x, "w")])
    sess = ort_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                       threads)
    flops = 2.0 * n**3
    ort_gflops = flops / best_ms(lambda: sess.run(None, {"a": x}), repeats) / 1e6
    np_gflops = flops / best_ms(lambda: x @ x, repeats) / 1e6
    return {"n": n, "threads": threads, "onnxruntime_gflops": round(ort_gflops, 1),
            "numpy_gflops": round(np_gflops, 1), "peak_gflops": round(ort_gflops, 1), "peak_shape": f"{n}x{n}x{n}"}


def step_gemms(path: Path, feeds: dict[str, np.ndarray], repeats: int = 10, threads: int = 0) -> dict:
    """A step's counted FLOPs by operator, its GEMM floor (every counted node at its own measured speed, summed)
    and its fastest node shape."""
    nodes = gemm_nodes(path, feeds)
    rates = node_rates(path, nodes, repeats, threads)
    by_op: dict[str, float] = {}
    for n in nodes:
        by_op[n.op] = by_op.get(n.op, 0.0) + n.flops
    fastest = max(nodes, key=lambda n: rates[n.signature])
    shape = "x".join(map(str, fastest.inputs[0][0])) + " @ " + "x".join(map(str, fastest.inputs[1][0])) \
        if len(fastest.inputs) > 1 else "x".join(map(str, fastest.inputs[0][0]))
    return {"gflops": sum(by_op.values()) / 1e9, "by_op_flops": {k: int(v) for k, v in by_op.items()},
            "gemm_floor_ms": sum(n.flops / rates[n.signature] for n in nodes) / 1e6,
            "distinct_nodes": len(rates), "best_node_gflops": max(rates.values()),
            "best_node": f"{fastest.op} {shape}"}


def graph_peak(path: Path, feeds: dict[str, np.ndarray], repeats: int = 10, threads: int = 0) -> dict:
    """One graph's counted GFLOPs, GEMM floor, and the fp32 peak at its shapes: the fastest of its distinct
    GEMM nodes and the square GEMM, all with constant weights and `threads`."""
    counted = step_gemms(path, feeds, repeats, threads)
    square = matmul_peak(repeats=repeats, threads=threads)
    use_square = square["peak_gflops"] >= counted["best_node_gflops"]
    return {"gflops": counted["gflops"], "gemm_floor_ms": counted["gemm_floor_ms"],
            "peak_gflops": round(max(square["peak_gflops"], counted["best_node_gflops"]), 1),
            "peak_shape": square["peak_shape"] if use_square else counted["best_node"]}


# --- analytic count of one Sortformer step -------------------------------------------------------------------


@dataclass(frozen=True)
class SortformerArch:
    """What fixes a streaming Sortformer step's arithmetic (NeMo's config fields)."""

    feat_in: int
    sub_channels: int  # dw_striding x8 pre-encode
    fc_d: int
    fc_layers: int
    conv_kernel: int
    tf_d: int
    tf_layers: int
    tf_inner: int
    n_spk: int

    @classmethod
    def from_config(cls, cfg: dict) -> SortformerArch:
        enc, tf = cfg["encoder"], cfg["transformer_encoder"]
        return cls(enc["feat_in"], enc["subsampling_conv_channels"], enc["d_model"], enc["n_layers"],
                   enc["conv_kernel_size"], tf["hidden_size"], tf["num_layers"], tf["inner_size"],
                   cfg["sortformer_modules"]["num_spks"])

    @classmethod
    def random_init(cls, size: str) -> SortformerArch:
        """The architecture `export --random-init <size>` builds."""
        from export.builders import diarizer_config

        return cls.from_config(diarizer_config(size))


def _conv_out(n: int) -> int:
    return (n + 2 - 3) // 2 + 1  # kernel 3, stride 2, padding 1


def sortformer_step_flops(a: SortformerArch, mel_frames: int, spkcache: int, fifo: int, drop: int = 0) -> float:
    """2 x multiply-adds of the MatMul / Gemm / Conv work of one diarizer step (one row), from the architecture.

    Pre-encode (dw_striding: a 3x3 stride-2 conv, then twice a depthwise 3x3 stride-2 conv and a pointwise conv,
    then a linear) on the chunk's `mel_frames`; the FastConformer layers on T = spkcache + fifo + the chunk's
    frames (less `drop` pre-encoded frames), relative-position attention over 2T - 1 positions; the projection,
    the transformer layers and the sigmoid head on T."""
    c, d, f = a.sub_channels, a.fc_d, a.feat_in
    t1, f1 = _conv_out(mel_frames), _conv_out(f)
    t2, f2 = _conv_out(t1), _conv_out(f1)
    t3, f3 = _conv_out(t2), _conv_out(f2)
    pre = 2 * c * t1 * f1 * 9 + sum(2 * c * t * w * 9 + 2 * c * c * t * w for t, w in ((t2, f2), (t3, f3))) \
        + 2 * t3 * c * f3 * d
    t = spkcache + fifo + t3 - drop
    p = 2 * t - 1
    conformer = (2 * 2 * (2 * t * d * 4 * d)  # two feed-forward modules, d -> 4d -> d
                 + 4 * 2 * t * d * d + 2 * p * d * d  # q, k, v, out projections; the position projection
                 + 2 * t * t * d + 2 * t * p * d + 2 * t * t * d  # content scores, position scores, weighted values
                 + 2 * t * d * 2 * d + 2 * t * d * a.conv_kernel + 2 * t * d * d)  # conv module: pw 2d, dw, pw
    e = a.tf_d
    transformer = 4 * 2 * t * e * e + 2 * 2 * t * t * e + 2 * 2 * t * e * a.tf_inner
    head = 2 * t * d * e + 2 * t * e * e + 2 * t * e * a.n_spk  # encoder_proj, hidden, speakers
    return float(pre + a.fc_layers * conformer + a.tf_layers * transformer + head)


def diarizer_feeds(cfg: PipelineConfig, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """One streaming diarizer step with a full speaker cache and FIFO (the steady state)."""
    d, frames = cfg.dims, cfg.geometry.step_frames
    sizes = {"batch": batch, "chunk_frames": frames, "spkcache_frames": d.spkcache_len, "fifo_frames": d.fifo_len}
    ints = {DI.chunk_lengths: frames, DI.spkcache_lengths: d.spkcache_len, DI.fifo_lengths: d.fifo_len}
    return example_feed(diarizer_spec(d), sizes, ints, seed)


def run(graphs: Path, preset: str = "70_13", rows: int = 2, repeats: int = 10, threads: int = 0,
        peak: dict | None = None, size: str | None = None) -> dict:
    """Peak, and per step (diarizer with 1 row; encoder with `rows` speaker rows): counted GFLOPs (and the
    diarizer's analytic count when `size` names a random-init architecture), ms, GFLOP/s, fraction of the peak,
    the GEMM floor and the share of the step it is."""
    graphs = Path(graphs)
    cfg = PipelineConfig.from_folder(graphs, preset=preset)
    square = peak or matmul_peak(repeats=repeats, threads=threads)
    steps = {"diarizer": (cfg.graphs["diarizer"], diarizer_feeds(cfg)),
             "encoder": (cfg.graphs["encoder"], encoder_feeds(cfg, rows))}
    out: dict = {"preset": preset, "encoder_rows": rows, "threads": threads, "steps": {}}
    for name, (graph, feeds) in steps.items():
        path = graphs / graph / "model.onnx"
        counted = step_gemms(path, feeds, repeats, threads)
        sess = ort_session(path, threads)
        outputs = (diarizer_spec if name == "diarizer" else encoder_spec)(cfg.dims).output_names
        seconds = median_ms(lambda s=sess, f=feeds, o=outputs: s.run(o, f), repeats) / 1000
        out["steps"][name] = {"graph": graph, "gflops": round(counted["gflops"], 3), "ms": round(seconds * 1000, 2),
                              "gflops_per_s": round(counted["gflops"] / seconds, 1),
                              "gemm_floor_ms": round(counted["gemm_floor_ms"], 2),
                              "gemm_share": round(counted["gemm_floor_ms"] / (seconds * 1000), 3),
                              "best_node_gflops": round(counted["best_node_gflops"], 1),
                              "best_node": counted["best_node"], "distinct_nodes": counted["distinct_nodes"],
                              "by_op_gflops": {k: round(v / 1e9, 4) for k, v in counted["by_op_flops"].items()}}
        if name == "diarizer" and size:
            analytic = sortformer_step_flops(SortformerArch.random_init(size), feeds[DI.chunk].shape[1],
                                             cfg.dims.spkcache_len, cfg.dims.fifo_len,
                                             Manifest.load(graphs).diarizer.drop_extra_pre_encoded) / 1e9
            out["steps"][name]["analytic_gflops"] = round(analytic, 3)
    best = max(out["steps"].values(), key=lambda s: s["best_node_gflops"])
    use_square = square["peak_gflops"] >= best["best_node_gflops"]
    out["peak"] = {**square, "peak_gflops": square["peak_gflops"] if use_square else best["best_node_gflops"],
                   "peak_shape": square["peak_shape"] if use_square else best["best_node"]}
    for s in out["steps"].values():
        s["peak_fraction"] = round(s["gflops_per_s"] / out["peak"]["peak_gflops"], 3)
    return out


def check(result: dict, label: str = "roofline") -> list[str]:
    """What makes a roofline result wrong: a step above the peak or faster than its own GEMMs (the peak or the
    floor was mis-measured), a counted FLOP total off its analytic count."""
    problems = []
    for name, s in result["steps"].items():
        if s["gflops_per_s"] > result["peak"]["peak_gflops"]:
            problems.append(f"{label}: {name} ran at {s['gflops_per_s']} GFLOP/s, above the measured peak "
                            f"{result['peak']['peak_gflops']}")
        if "gemm_floor_ms" in s and s["gemm_floor_ms"] > s["ms"]:
            problems.append(f"{label}: {name} took {s['ms']} ms, less than its GEMMs alone ({s['gemm_floor_ms']} ms)")
        if "analytic_gflops" in s and abs(s["gflops"] - s["analytic_gflops"]) > ANALYTIC_TOLERANCE * s["gflops"]:
            problems.append(f"{label}: {name} counted {s['gflops']} GFLOPs, analytic {s['analytic_gflops']}")
    return problems


def table(result: dict) -> str:
    p = result["peak"]
    lines = [f"fp32 GEMM peak: {p['peak_gflops']} GFLOP/s at {p['peak_shape']} (ONNX Runtime, weights constant, "
             f"the steps' threads; square {p['n']}³: {p['onnxruntime_gflops']}; numpy {p['numpy_gflops']}, "
             "for reference)", "",
             "| step | GFLOPs counted | GFLOPs analytic | ms | GFLOP/s | fraction of peak | its GEMMs alone ms "
             "| share of the step |", "|---|---|---|---|---|---|---|---|"]
    for name, s in result["steps"].items():
        label = f"{name} ({result['encoder_rows']} rows)" if name == "encoder" else f"{name} (1 row)"
        lines.append(f"| {label} | {s['gflops']} | {s.get('analytic_gflops', '–')} | {s['ms']} | "
                     f"{s['gflops_per_s']} | {s['peak_fraction']:.0%} | {s['gemm_floor_ms']} | "
                     f"{s['gemm_share']:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.roofline", description=__doc__.split("\n")[0])
    ap.add_argument("--graphs", type=Path, required=True, help="exported graphs folder (with manifest.json)")
    ap.add_argument("--preset", default="70_13")
    ap.add_argument("--rows", type=int, default=2, help="encoder rows (active speakers) per step")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    ap.add_argument("--size", choices=("tiny", "full"), help="random-init architecture: check the analytic count")
    args = ap.parse_args(argv)
    result = run(args.graphs, args.preset, args.rows, args.repeats, args.threads, size=args.size)
    print(table(result))
    print(json.dumps(result))
    for problem in check(result):
        print(problem, file=sys.stderr)
    return 1 if check(result) else 0


if __name__ == "__main__":
    sys.exit(main())

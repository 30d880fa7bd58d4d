"""The largest |x| of every intermediate tensor of the fp32 diarizer and encoder graphs on real audio, against
fp16's range (65504), through the in-process pipeline (each graph fed the state it returned, as served).

Every float tensor a node produces becomes a graph output of an instrumented copy of the graph (ONNX Runtime CPU,
no graph optimisation, so each tensor is the node's own); `RangeRunner` runs that copy in place of the graph and
keeps each tensor's largest finite |x|. A tensor's headroom is 65504 / max |x|: how far its values stay from
overflowing to inf in fp16.

NeMo's attention masks padded positions with -10000 (`INF_VAL`, `NEG_INF`): a constant, exact in fp16, that
cannot grow with the audio. Tensors downstream of that constant up to the Softmax (`mask_path`) are judged on
their other values (those more than `MASK_BAND` away from 10000 in magnitude); their full maximum is reported too.
A LayerNormalization is judged on its input's largest sum of squares over the normalised axis as well: what an
fp16 accumulator of its variance would hold (TensorRT warns that fp16 Reduce/Pow in a layer norm may overflow).

`keep_fp32` names the nodes below `MIN_HEADROOM`; `missing_fp32` checks that an fp16 graph (`export --fp16`, which
keeps every LayerNormalization in fp32: `export.onnx_export.FP32_OPS`) has them in fp32. The TensorRT plans are
built strongly typed from that graph, so they keep the same nodes in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from export.onnx_export import MODEL_FILE
from mtasr.pipeline.runner import OrtRunner, ort_session

FP16_MAX = 65504.0
# Keep a node in fp32 when its output comes within this factor of fp16's largest value on the measured audio:
# 16x (24 dB) leaves room for louder or longer audio than the samples, and for TensorRT's fp16 kernels, which
# may keep intermediate sums (a LayerNorm's mean of squares, a MatMul's accumulator) in fp16 where ONNX Runtime's
# CPU kernels upcast.
MIN_HEADROOM = 16.0
MASK_VALUE = 10000.0  # NeMo's attention mask fill (nemo ... multi_head_attention.INF_VAL, transformer_utils.NEG_INF)
MASK_BAND = 1000.0  # values within this of +-MASK_VALUE on a mask-path tensor are mask fills (+- a score)
SQUARED_OPS = ("LayerNormalization",)  # judged on their input's sum of squares over the last axis too


@dataclass
class TensorRange:
    """One tensor: the node that makes it, its op type, its largest finite |x|, non-finite values seen."""

    node: str
    op: str
    mask_path: bool = False
    max_abs: float = 0.0  # every finite value
    max_abs_data: float = 0.0  # without mask fills (= max_abs off the mask path)
    non_finite: int = 0
    sum_squares: bool = False  # also track the largest sum of squares over the last axis (a layer norm's input)
    max_sum_squares: float = 0.0

    @property
    def headroom(self) -> float:
        return FP16_MAX / self.max_abs_data if self.max_abs_data > 0 else float("inf")

    def update(self, v: np.ndarray) -> None:
        finite = np.isfinite(v)
        if not finite.all():
            self.non_finite += int((~finite).sum())
            v = v[finite]
        if not v.size:
            return
        if self.sum_squares and v.ndim:
            squares = np.square(v.astype(np.float64)).sum(axis=-1)
            self.max_sum_squares = max(self.max_sum_squares, float(squares.max(initial=0.0)))
        a = np.abs(v)
        self.max_abs = max(self.max_abs, float(a.max()))
        if self.mask_path:
            a = a[np.abs(a - MASK_VALUE) > MASK_BAND]
        if a.size:
            self.max_abs_data = max(self.max_abs_data, float(a.max()))


@dataclass
class GraphRanges:
    """Every float intermediate tensor of one graph, by name, and how many calls were measured."""

    tensors: dict[str, TensorRange] = field(default_factory=dict)
    squared: dict[str, str] = field(default_factory=dict)  # SQUARED_OPS node -> its data input tensor
    calls: int = 0

    def headroom(self) -> float:
        """The smallest headroom of any tensor (mask fills aside)."""
        return min((t.headroom for t in self.tensors.values()), default=float("inf"))

    def squared_headroom(self) -> dict[str, float]:
        """SQUARED_OPS node -> 65504 / its input's largest sum of squares over the normalised axis."""
        out = {}
        for node, tensor in self.squared.items():
            m = self.tensors[tensor].max_sum_squares if tensor in self.tensors else 0.0
            out[node] = FP16_MAX / m if m > 0 else float("inf")
        return out

    def keep_fp32(self, min_headroom: float = MIN_HEADROOM) -> dict[str, str]:
        """Node -> why it stays in fp32: its output's headroom below `min_headroom` (or non-finite values), or, for
        a LayerNormalization, its input's squared maximum."""
        out = {}
        for t in self.tensors.values():
            if t.non_finite:
                out[t.node] = f"{t.non_finite} non-finite values in fp32"
            elif t.headroom < min_headroom:
                out[t.node] = f"{t.op} output max |x| {t.max_abs_data:.4g}: headroom {t.headroom:.1f}"
        for node, h in self.squared_headroom().items():
            if h < min_headroom and node not in out:
                out[node] = f"input sum of squares {FP16_MAX / h:.4g}: headroom {h:.1f}"
        return dict(sorted(out.items()))

    def mask_max(self) -> float:
        """The largest |x| on the mask path (the -10000 fills)."""
        return max((t.max_abs for t in self.tensors.values() if t.mask_path), default=0.0)

    def worst(self, n: int = 5) -> list[dict]:
        rows = sorted(self.tensors.items(), key=lambda kv: kv[1].headroom)[:n]
        return [{"tensor": k, "node": t.node, "op": t.op, "max_abs": t.max_abs_data, "headroom": round(t.headroom, 1)}
                for k, t in rows]

    def by_op(self) -> dict[str, float]:
        """Op type -> the largest |x| of any of its outputs."""
        out: dict[str, float] = {}
        for t in self.tensors.values():
            out[t.op] = max(out.get(t.op, 0.0), t.max_abs_data)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _holds_mask_value(tensor: onnx.TensorProto) -> bool:
    values = onnx.numpy_helper.to_array(tensor)
    return values.size <= 16 and bool(np.any(np.isclose(np.abs(values.astype(np.float64)), MASK_VALUE)))


def mask_path(model: onnx.ModelProto) -> set[str]:
    """Tensors that carry NeMo's -10000 mask fill: from each small constant holding +-10000 forward through the
    graph, stopping at Softmax (whose output holds the masked positions as 0)."""
    marked = {t.name for t in model.graph.initializer if _holds_mask_value(t)}
    for node in model.graph.node:  # nodes are topologically sorted
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None and _holds_mask_value(value):
                marked.update(node.output)
        elif node.op_type != "Softmax" and any(i in marked for i in node.input):
            marked.update(o for o in node.output if o)
    return marked


def instrumented(path: Path) -> tuple[bytes, dict[str, TensorRange], dict[str, str]]:
    """The graph with every float node output added as a graph output: the model, tensor name -> its (empty)
    range record, and SQUARED_OPS node -> its data input."""
    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    types.update({o.name: o.type.tensor_type.elem_type for o in model.graph.output})
    existing = {o.name for o in model.graph.output}
    masked = mask_path(model)
    tensors: dict[str, TensorRange] = {}
    squared: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type in SQUARED_OPS:
            squared[node.name] = node.input[0]
    reduced = set(squared.values())
    for node in model.graph.node:
        for name in node.output:
            if name and types.get(name) == onnx.TensorProto.FLOAT:
                tensors[name] = TensorRange(node.name, node.op_type, mask_path=name in masked,
                                            sum_squares=name in reduced)
                if name not in existing:
                    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return model.SerializeToString(), tensors, squared


def missing_fp32(fp16_graph: Path, nodes: list[str]) -> list[str]:
    """Those of `nodes` that the fp16 graph at `fp16_graph` (a folder or model.onnx) does not compute in fp32 (a node
    counts as fp32 when its first input is float32)."""
    path = Path(fp16_graph)
    model = onnx.load(str(path / MODEL_FILE if path.is_dir() else path), load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    by_name = {n.name: n for n in model.graph.node}
    out = []
    for name in nodes:
        node = by_name.get(name)
        if node is None or node.op_type == "Constant":  # constants: folded into whatever reads them
            continue
        if types.get(node.input[0]) != onnx.TensorProto.FLOAT:
            out.append(name)
    return out


class RangeRunner:
    """Runs `graphs` (folder names) of an exported folder instrumented and records their tensors' ranges; every
    other graph runs as it is."""

    def __init__(self, folder: Path, graphs: set[str]) -> None:
        self.folder = Path(folder)
        self.plain = OrtRunner(folder)
        self.measured = set(graphs)
        self.ranges: dict[str, GraphRanges] = {}
        self._sessions: dict = {}

    def _session(self, graph: str):
        if graph not in self._sessions:
            blob, tensors, squared = instrumented(self.folder / graph / MODEL_FILE)
            sess = ort_session(blob, optimize=False)
            self._sessions[graph] = (sess, [o.name for o in sess.get_outputs()])
            self.ranges[graph] = GraphRanges(tensors, squared)
        return self._sessions[graph]

    def __call__(self, graph: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        if graph not in self.measured:
            return self.plain(graph, feeds, outputs)
        sess, names = self._session(graph)
        values = dict(zip(names, sess.run(names, feeds), strict=True))
        ranges = self.ranges[graph]
        ranges.calls += 1
        for name, t in ranges.tensors.items():
            t.update(values[name])
        return [values[o] for o in outputs]

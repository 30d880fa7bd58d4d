"""int8 copies of the diarizer and encoder graphs for CPU serving (ONNX Runtime dynamic quantisation).

The recipe, measured on this project's graphs (2-core CPU, ONNX Runtime 1.32, one steady-state step):
1. save the graph after ONNX Runtime's *basic* optimisation level (constant folding, redundant nodes removed:
   standard ONNX ops only), so that the quantiser sees the MatMuls ONNX Runtime would run;
2. rewrite the pointwise (1-wide) convolutions of the Conformer conv modules as MatMuls (`pointwise_convs_as_matmuls`:
   the same arithmetic, now eligible for the fused int8 MatMul kernel);
3. `quantize_dynamic` of the MatMuls with a constant weight only, weights int8 per output channel, activations
   quantised on the fly (uint8) per call; ONNX Runtime fuses each into DynamicQuantizeMatMul / MatMulIntegerToFloat
   when the session loads.
Full-size random-init graphs, one steady-state step, fp32 vs int8 alternating: steps 1 + 3 ran the diarizer 1.72x and
the 2-row encoder 2.19x; step 2 took them to 1.91x and 2.66x. Quantising every supported op as is ran 0.81x
(diarizer) / 1.07x (encoder): unfused quantise/dequantise pairs; per-tensor weights 1.36x, uint8 weights 1.06x
(diarizer).

Kept in float, on purpose:
- the other convolutions (depthwise, the subsampling stack): ConvInteger ran slower than the float Conv (demo models:
  diarizer 0.94x, encoder 0.52x of fp32 with every Conv quantised vs 1.11x / 1.04x without) and moved the outputs
  3-4x more;
- MatMuls of two activations (attention scores and their weighted sum; `MatMulConstBOnly`): quantising them too
  (both sides per call) ran the full-size diarizer 1.05x and the encoder 1.01x faster than this recipe, with 1.2x
  its error: not worth it;
- every other op (LayerNorm, softmax, sigmoid, the LSTM); `decoder_joint` gets no int8 copy: 9 M params at full
  size, called once per symbol and frame, its time is call overhead, not arithmetic.

Graphs over 2 GB (the full encoder) are read and written with external data (`model.onnx.data`); checked on a
synthetic 2.2 GB chain of MatMuls: 54 s, peak RSS 6.5 GB, a 0.55 GB int8 copy.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from export.onnx_export import DATA_FILE, MODEL_FILE, TWO_GB

OP_TYPES = ("MatMul",)
INT8_SUFFIX = "_int8"  # `<graph>_int8`: the int8 twin of each diarizer/encoder graph (mtasr.manifest.INT8_ROLES)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _attr(node, name: str, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def pointwise_conv(node, inits: dict):
    """(weight, bias or None) initializers when `node` is a plain 1-D convolution with a 1-wide kernel (no groups,
    stride, dilation or padding; constant weight and bias), else None."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
        return None
    w = inits[node.input[1]]
    has_bias = len(node.input) > 2 and bool(node.input[2])
    if len(w.dims) != 3 or w.dims[2] != 1 or (has_bias and node.input[2] not in inits):
        return None
    if (_attr(node, "group", 1) != 1 or list(_attr(node, "strides", [1])) != [1]
            or list(_attr(node, "dilations", [1])) != [1] or any(_attr(node, "pads", [0, 0]))
            or _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")):
        return None
    return w, inits[node.input[2]] if has_bias else None


def pointwise_convs_as_matmuls(model) -> int:
    """Rewrite every 1-D convolution with a 1-wide kernel (the Conformer conv module's pointwise convolutions) as
    Transpose -> MatMul (constant weight) [-> Add bias] -> Transpose, in place; the number rewritten.

    The same arithmetic, but as a MatMul the quantiser gives it the fused int8 kernel (weights per channel), where a
    quantised Conv would run ConvInteger (slower here than the float Conv); ONNX Runtime's transpose optimiser
    folds most of the added transposes into their neighbours when the session loads."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    nodes, rewritten, dropped = [], 0, set()
    for node in graph.node:
        params = pointwise_conv(node, inits)
        if params is None:
            nodes.append(node)
            continue
        w, b = params
        x, y, base = node.input[0], node.output[0], node.name or node.output[0]
        weight = numpy_helper.to_array(w)[:, :, 0].T.copy()  # (Cin, Cout)
        graph.initializer.append(numpy_helper.from_array(weight, f"{base}/pointwise_weight"))
        mm_in = [f"{base}/pointwise_in", f"{base}/pointwise_weight"]
        nodes.append(helper.make_node("Transpose", [x], [mm_in[0]], f"{base}/pointwise_t_in", perm=[0, 2, 1]))
        out = f"{base}/pointwise_mm"
        nodes.append(helper.make_node("MatMul", mm_in, [out], f"{base}/pointwise_matmul"))
        if b is not None:
            nodes.append(helper.make_node("Add", [out, b.name], [f"{base}/pointwise_bias"], f"{base}/pointwise_add"))
            out = f"{base}/pointwise_bias"
        nodes.append(helper.make_node("Transpose", [out], [y], f"{base}/pointwise_t_out", perm=[0, 2, 1]))
        uses[w.name] -= 1
        if not uses[w.name]:
            dropped.add(w.name)
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [t for t in graph.initializer if t.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return rewritten


def to_int8(src_dir: Path, dst_dir: Path) -> Path:
    """int8 copy of the graph in `src_dir` into `dst_dir` (same tensors: float32 inputs and outputs), by the
    recipe above; weights in one `model.onnx.data` when the fp32 graph needed external data."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    large = _folder_bytes(src_dir) >= TWO_GB
    shutil.rmtree(dst_dir, ignore_errors=True)
    dst_dir.mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=dst_dir.parent, prefix=f".{dst_dir.name}-") as tmp:
        pre = Path(tmp) / MODEL_FILE
        # Step 1 is the library's pre-processing: ONNX Runtime at ORT_ENABLE_BASIC, then ONNX shape inference.
        # Its symbolic shape inference stops at the Sortformer's Range ops ("Incomplete symbolic shape
        # inference"); without it the same MatMuls are quantised.
        quant_pre_process(src_dir / MODEL_FILE, pre, skip_symbolic_shape=True, save_as_external_data=large,
                          all_tensors_to_one_file=True, external_data_location=MODEL_FILE + ".data")
        model = onnx.load(str(pre))
        if pointwise_convs_as_matmuls(model):
            for f in Path(tmp).iterdir():
                f.unlink()
            onnx.save(model, str(pre), save_as_external_data=large, all_tensors_to_one_file=True,
                      location=MODEL_FILE + ".data")
        del model
        quantize_dynamic(pre, dst_dir / MODEL_FILE, op_types_to_quantize=list(OP_TYPES), per_channel=True,
                         weight_type=QuantType.QInt8, use_external_data_format=large,
                         extra_options={"MatMulConstBOnly": True})
    if large and not (dst_dir / DATA_FILE).is_file():
        raise RuntimeError(f"{dst_dir}: the quantiser wrote no {DATA_FILE}")
    return dst_dir / MODEL_FILE

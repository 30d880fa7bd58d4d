"""torch -> ONNX for the wrappers, driven by the tensor specs; fp16 copies for GPU serving."""

from __future__ import annotations

import inspect
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import torch

from mtasr.files import atomic_folder
from mtasr.spec import GraphSpec

OPSET = 17
TWO_GB = 2**31 - 1
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
# Ops the fp16 copies keep in fp32 besides ONNX Runtime's own block list: a LayerNormalization's variance sums the
# squares of its input over the model dim, where fp16 overflows first (`export.fp16_ranges` measures it: on the
# trained demo encoder, d_model 144 of the full model's 1024, the largest such sum is 1.9e4, 3.5x below 65504);
# TensorRT plans built strongly typed from the fp16 graph keep the same types.
FP32_OPS = ("LayerNormalization",)


def check_signature(module: torch.nn.Module, spec: GraphSpec) -> None:
    """TypeError unless `module.forward`'s parameters are the spec's input names in the spec's order: ONNX input
    names are given by position, so a wrapper with two inputs swapped would export a graph that reads each one
    as the other."""
    params = [p.name for p in inspect.signature(module.forward).parameters.values()]
    if params != spec.input_names:
        raise TypeError(f"{type(module).__name__}.forward({', '.join(params)}) does not take the {spec.name} spec's "
                        f"inputs in order ({', '.join(spec.input_names)})")


def export_graph(module: torch.nn.Module, spec: GraphSpec, example: Mapping[str, np.ndarray], out_dir: Path) -> Path:
    """Export `module` called on `example` (input name -> array, `mtasr.examples.example_feed`) into
    `out_dir/model.onnx` with the spec's names and dynamic axes; the module's forward must take the spec's inputs
    in order (`check_signature`).

    Graphs over 2 GB keep their weights in one external file `model.onnx.data` beside it.
    Written through `atomic_folder`, so a failure leaves nothing half-written.
    """
    check_signature(module, spec)
    if set(example) != set(spec.input_names):
        raise ValueError(f"{spec.name} example has inputs {sorted(example)}, the spec {spec.input_names}")
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[name])) for name in spec.input_names)
    out_dir = Path(out_dir)
    with atomic_folder(out_dir) as tmp:
        path = tmp / MODEL_FILE
        dynamic_axes = {t.name: t.dynamic_axes for t in spec.inputs + spec.outputs if t.dynamic_axes}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=dynamic_axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        _consolidate(path)
    return out_dir / MODEL_FILE


def _consolidate(path: Path) -> None:
    """Re-save a graph so that large weights live in exactly one external file named after the graph."""
    folder = path.parent
    extra = [p for p in folder.iterdir() if p.name != MODEL_FILE]
    size = sum(p.stat().st_size for p in folder.iterdir())
    if not extra and size < TWO_GB:
        return
    model = onnx.load(str(path), load_external_data=True)
    for p in extra:
        p.unlink()
    if size < TWO_GB:
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DATA_FILE, size_threshold=1024)


def _fp32_weights(model: onnx.ModelProto, nodes: set[str]) -> None:
    """Give the fp32-kept `nodes` fp32 copies of the fp16 initializers they read (the converter casts their
    activations back to fp32 but leaves a shared weight such as a LayerNormalization's scale in fp16)."""
    inits = {t.name: t for t in model.graph.initializer}
    copies: dict[str, str] = {}
    for node in model.graph.node:
        if node.name not in nodes:
            continue
        for i, name in enumerate(node.input):
            t = inits.get(name)
            if t is None or t.data_type != onnx.TensorProto.FLOAT16:
                continue
            if name not in copies:
                copy = onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t).astype(np.float32), name + "_fp32")
                model.graph.initializer.append(copy)
                copies[name] = copy.name
            node.input[i] = copies[name]


def to_fp16(src_dir: Path, dst_dir: Path, keep_fp32: tuple[str, ...] = ()) -> Path:
    """fp16 copy of a graph with float32 inputs/outputs kept, so it serves under the same tensor spec; the `FP32_OPS`
    and the nodes named in `keep_fp32` stay in fp32 (casts around them)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    src = Path(src_dir) / MODEL_FILE
    large = sum(p.stat().st_size for p in Path(src_dir).iterdir()) // 2 >= TWO_GB
    model = onnx.load(str(src), load_external_data=True)
    # The converter places its casts around the fp32-kept nodes from value_info: inferred on the graph without its
    # external weights (shapes need only their dims; a proto over 2 GB cannot be inferred whole).
    shapes = onnx.shape_inference.infer_shapes(onnx.load(str(src), load_external_data=False))
    del model.graph.value_info[:]
    model.graph.value_info.extend(shapes.graph.value_info)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True,
                                        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OPS],
                                        node_block_list=list(keep_fp32) or None)
    _fp32_weights(half, {n.name for n in half.graph.node if n.op_type in FP32_OPS or n.name in keep_fp32})
    dst_dir = Path(dst_dir)
    shutil.rmtree(dst_dir, ignore_errors=True)
    dst_dir.mkdir(parents=True)
    if large:
        onnx.save_model(half, str(dst_dir / MODEL_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DATA_FILE, size_threshold=1024)
    else:
        onnx.save_model(half, str(dst_dir / MODEL_FILE))
    return dst_dir / MODEL_FILE


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


def to_fp16(src_dir: Path, dst_dir: Path) -> Path:
    """fp16 copy of a graph with float32 inputs/outputs kept, so it serves under the same tensor spec."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src = Path(src_dir) / MODEL_FILE
    model = onnx.load(str(src), load_external_data=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    dst_dir = Path(dst_dir)
    shutil.rmtree(dst_dir, ignore_errors=True)
    dst_dir.mkdir(parents=True)
    large = sum(p.stat().st_size for p in Path(src_dir).iterdir()) // 2 >= TWO_GB
    if large:
        onnx.save_model(half, str(dst_dir / MODEL_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=DATA_FILE, size_threshold=1024)
    else:
        onnx.save_model(half, str(dst_dir / MODEL_FILE))
    return dst_dir / MODEL_FILE


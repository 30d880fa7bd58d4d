"""Is every output shape of an exported graph a function of its input shapes?

ONNX Runtime's symbolic shape inference (`onnxruntime.tools.symbolic_shape_infer`) runs on the graph with its
declared output shapes cleared, so that each output dim is what the graph computes: a number, an expression of
the input dims (`spkcache_frames + fifo_frames + floor(...)`), or a new symbol that inference had to invent
because the size comes from tensor values (`Range_542_o0__d0`, `NonZero_...`). TensorRT plans memory and CUDA
graphs from the first two; the third needs runtime output allocation. `data_dependent` lists the third kind.

    python -m export.shapes artifacts/model      # one line per graph folder, non-zero exit if any is value-sized
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
import sympy

from export.onnx_export import MODEL_FILE

Dim = int | str


class ShapeInferenceError(Exception):
    """Symbolic shape inference could not finish on a graph."""


@dataclass(frozen=True)
class GraphShapes:
    """Inferred output dims of one graph and the input dim names they may use."""

    inputs: frozenset[str]
    outputs: dict[str, tuple[Dim, ...]]

    def data_dependent(self) -> dict[str, list[str]]:
        """Output name -> its dims that are not numbers or expressions of input dims (empty when all follow)."""
        bad = {name: [str(d) for d in dims if not _from_inputs(d, self.inputs)] for name, dims in self.outputs.items()}
        return {name: dims for name, dims in bad.items() if dims}


def _from_inputs(dim: Dim, inputs: frozenset[str]) -> bool:
    if isinstance(dim, int):
        return dim >= 0
    if not dim:  # no dim at all: inference gave up
        return False
    try:
        expr = sympy.sympify(dim, locals={name: sympy.Symbol(name, integer=True) for name in inputs})
    except (sympy.SympifyError, SyntaxError, TypeError):
        return False
    return {s.name for s in expr.free_symbols} <= inputs


def infer(path: Path | str) -> GraphShapes:
    """Symbolic shape inference on the graph at `path` (a `model.onnx`, or its folder) with the declared output
    shapes removed. External weights are not read: shapes come from the tensors' dims."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    path = Path(path)
    path = path / MODEL_FILE if path.is_dir() else path
    model = onnx.load(str(path), load_external_data=False)
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    quiet = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "Cannot determine if ... < 0" notes on clamped slices
    # an incomplete inference saves the model into the working folder before it raises: give it a scratch one
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
        try:
            inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=False)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises a bare Exception for incomplete inference
            raise ShapeInferenceError(f"{path}: symbolic shape inference failed: {exc}") from None
        finally:
            quiet.setLevel(level)
    inputs = frozenset(d.dim_param for i in inferred.graph.input for d in i.type.tensor_type.shape.dim
                       if d.dim_param)
    outputs = {}
    for out in inferred.graph.output:
        shape = out.type.tensor_type.shape
        outputs[out.name] = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in shape.dim)
    return GraphShapes(inputs, outputs)


def check_folder(graphs: Path) -> dict[str, dict[str, list[str]]]:
    """Graph folder name -> its data-dependent output dims (every output, when inference failed), for every graph of
    an exported folder."""
    out = {}
    for path in sorted(Path(graphs).glob(f"*/{MODEL_FILE}")):
        try:
            out[path.parent.name] = infer(path).data_dependent()
        except ShapeInferenceError as exc:
            out[path.parent.name] = {"(inference)": [str(exc)]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.shapes", description=__doc__.split("\n")[0])
    ap.add_argument("graphs", type=Path, help="an exported folder (python -m export)")
    args = ap.parse_args(argv)
    result = check_folder(args.graphs)
    for name, bad in result.items():
        print(f"{name}: " + ("every output dim follows from input dims" if not bad else f"value-sized {bad}"))
    ok = sum(not bad for bad in result.values())
    print(f"shapes: shapes_from_inputs={ok}/{len(result)}")
    return 0 if result and ok == len(result) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The spec is the single source of truth: graphs and docs follow it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from mtasr import spec
from mtasr.manifest import Manifest

ROOT = Path(__file__).resolve().parents[1]
ONNX_TYPES = {np.float32: onnx.TensorProto.FLOAT, np.int64: onnx.TensorProto.INT64}


def test_presets():
    assert spec.parse_preset("70,13") == (70, 13)
    assert spec.parse_preset("[70, 0]") == (70, 0)
    with pytest.raises(ValueError, match="unknown latency preset"):
        spec.parse_preset("70,5")
    with pytest.raises(ValueError, match="bad latency preset"):
        spec.parse_preset("fast")


@pytest.mark.parametrize("folder", ["graphs", "speakers8/graphs"])  # the 4- and the 8-speaker diarizer
def test_exported_graphs_match_spec(tiny_parity, folder):
    graphs = tiny_parity["work"] / folder
    manifest = Manifest.load(graphs)
    specs = spec.graph_specs(manifest.dims)
    assert manifest.graphs, "no graphs exported"
    for folder, kind in manifest.graphs.items():
        model = onnx.load(str(graphs / folder / "model.onnx"), load_external_data=False)
        g = specs[kind]
        for io, tensors, infos in (("in", g.inputs, model.graph.input), ("out", g.outputs, model.graph.output)):
            assert [t.name for t in tensors] == [i.name for i in infos], folder
            for t, info in zip(tensors, infos, strict=True):
                tt = info.type.tensor_type
                assert tt.elem_type == ONNX_TYPES[t.dtype], (folder, t.name)
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
                assert len(dims) == len(t.dims), (folder, t.name)
                for want, got in zip(t.shape, dims, strict=True):
                    # outputs may stay symbolic where the exporter cannot prove a size (e.g. sliced caches)
                    assert want == -1 or got == want or (io == "out" and got == -1), (folder, t.name, dims)


def test_docs_tensor_table_is_generated():
    text = (ROOT / spec.TENSOR_TABLE_DOC).read_text()
    begin, end = text.index(spec.TENSOR_TABLE_BEGIN), text.index(spec.TENSOR_TABLE_END)
    current = text[begin + len(spec.TENSOR_TABLE_BEGIN) : end].strip()
    assert current == spec.tensor_table_markdown(spec.PUBLIC_CHECKPOINT_DIMS), "run: python -m mtasr.spec"

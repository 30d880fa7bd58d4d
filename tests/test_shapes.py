"""Every exported graph's output shapes follow from its input shapes (ONNX Runtime's symbolic shape inference), so
TensorRT can plan memory for them; the fp16 and int8 twins, the standalone diarizer and the 8-output diarizer too."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import sympy
from onnx import TensorProto, helper

from export.shapes import check_folder, infer
from mtasr.manifest import Manifest
from mtasr.spec import graph_specs


def test_every_exported_graph_has_input_sized_outputs(tiny_graphs):
    folders = [tiny_graphs, tiny_graphs.parent / "speakers8" / "graphs"]
    checked = {}
    for graphs in folders:
        manifest = Manifest.load(graphs)
        result = check_folder(graphs)
        assert set(result) == set(manifest.graphs), "every graph of the manifest was inferred"
        checked.update({f"{graphs.parent.name}/{k}": v for k, v in result.items()})
    assert not {name: bad for name, bad in checked.items() if bad}
    assert {"diarizer_standalone", "diarizer_fp16", "diarizer_int8", "encoder_70_13_int8", "encoder_70_0_fp16",
            "decoder_joint"} <= set(Manifest.load(folders[0]).graphs)

def test_diarizer_output_frames_are_the_input_frames(tiny_graphs):
    """The concatenated speaker cache + FIFO + chunk predictions are exactly as long as the three inputs together:
    spkcache_frames + fifo_frames + the pre-encoded chunk's frames, symbolically."""
    graphs = tiny_graphs
    shapes = infer(graphs / "diarizer_standalone")
    preds = sympy.sympify(shapes.outputs["spkcache_fifo_chunk_preds"][1])
    embs = sympy.sympify(shapes.outputs["chunk_pre_encode_embs"][1])
    assert sympy.simplify(preds - embs - sympy.Symbol("spkcache_frames") - sympy.Symbol("fifo_frames")) == 0
    spec = graph_specs(Manifest.load(graphs).dims)["diarizer"]
    for out in spec.outputs:  # ranks as the spec says
        assert len(shapes.outputs[out.name]) == len(out.dims)


def test_a_value_sized_output_is_caught(tmp_path):
    """A graph whose output length is read from a tensor's values (Range up to ReduceMax(lengths), as NeMo's
    concat_and_pad does) is flagged; the same graph sized by a Shape is not."""
    def graph(limit_from_values: bool) -> onnx.ModelProto:
        lengths = helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"])
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "frames"])
        out = helper.make_tensor_value_info("positions", TensorProto.INT64, None)
        zero = helper.make_tensor("zero", TensorProto.INT64, [], [0])
        one = helper.make_tensor("one", TensorProto.INT64, [], [1])
        idx = helper.make_tensor("idx", TensorProto.INT64, [], [1])
        if limit_from_values:
            nodes = [helper.make_node("ReduceMax", ["lengths"], ["limit"], keepdims=0)]
        else:
            nodes = [helper.make_node("Shape", ["x"], ["shape"]),
                     helper.make_node("Gather", ["shape", "idx"], ["limit"])]
        nodes.append(helper.make_node("Range", ["zero", "limit", "one"], ["positions"]))
        inits = [zero, one] + ([] if limit_from_values else [idx])
        g = helper.make_graph(nodes, "g", [lengths, x], [out], initializer=inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    for flagged in (True, False):
        path = tmp_path / f"value_sized_{flagged}.onnx"
        onnx.save(graph(flagged), str(path))
        bad = infer(path).data_dependent()
        assert bool(bad) is flagged, bad
    # and the value-sized graph really is: its output length changes with the values, not the shapes
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "value_sized_True.onnx"), providers=["CPUExecutionProvider"])
    x = np.zeros((2, 5), np.float32)
    sizes = {sess.run(None, {"lengths": np.array(v, np.int64), "x": x})[0].shape for v in ([1, 2], [3, 4])}
    assert len(sizes) == 2


@pytest.mark.parametrize("name", ["diarizer", "diarizer_standalone"])
def test_padded_predictions_beyond_the_lengths_are_zero(tiny_graphs, name):
    """The frames past each row's total length are padding (masked to 0), so the pipeline's slice to the total
    is all there is to read."""
    from export.parity.figures import random_feed, session

    graphs = tiny_graphs
    manifest = Manifest.load(graphs)
    feed = random_feed("diarizer", manifest, name)
    feed["spkcache_lengths"] = np.array([3, manifest.dims.spkcache_len], np.int64)
    feed["fifo_lengths"] = np.array([0, 5], np.int64)
    preds, embs, emb_lengths = session(graphs / name / "model.onnx").run(None, feed)
    assert preds.shape[1] == feed["spkcache"].shape[1] + feed["fifo"].shape[1] + embs.shape[1]
    for row in range(2):
        total = int(feed["spkcache_lengths"][row] + feed["fifo_lengths"][row] + emb_lengths[row])
        assert total < preds.shape[1]
        assert np.all(preds[row, total:] == 0) and np.any(preds[row, :total] != 0)

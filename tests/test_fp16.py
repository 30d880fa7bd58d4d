"""fp16 export and the range check on small hand-built graphs: a LayerNormalization stays fp32 in the fp16 copy (and
the copy runs), a tensor near 65504 is caught and named, NeMo's -10000 attention-mask fill is not mistaken for an
activation, and a layer norm's sum of squares is judged too."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.fp16_ranges import FP16_MAX, MASK_VALUE, RangeRunner, missing_fp32
from export.onnx_export import MODEL_FILE, to_fp16
from mtasr.pipeline.runner import ort_session

DIM = 8


def _graph(scale: float) -> onnx.ModelProto:
    """x (B, DIM) -> MatMul by `scale` * I -> y; LayerNorm(y) -> normed; scores masked with -10000 -> Softmax."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", DIM])
    mask = helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", DIM])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", DIM]) for n in ("normed", "probs")]
    inits = [numpy_helper.from_array((scale * np.eye(DIM)).astype(np.float32), "w"),
             numpy_helper.from_array(np.ones(DIM, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(DIM, np.float32), "beta")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj"),
             helper.make_node("LayerNormalization", ["y", "gamma", "beta"], ["normed"], name="norm", axis=-1),
             helper.make_node("Constant", [], ["fill"], name="fill_value",
                              value=numpy_helper.from_array(np.array(-MASK_VALUE, np.float32))),
             helper.make_node("Where", ["mask", "fill", "x"], ["scores"], name="masked_fill"),
             helper.make_node("Softmax", ["scores"], ["probs"], name="softmax", axis=-1)]
    g = helper.make_graph(nodes, "g", [x, mask], outs, initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _folder(tmp_path, name: str, scale: float):
    (tmp_path / name).mkdir()
    onnx.save(_graph(scale), str(tmp_path / name / MODEL_FILE))
    return tmp_path


def _feed(rng, batch: int = 3) -> dict[str, np.ndarray]:
    mask = np.zeros((batch, DIM), bool)
    mask[:, -2:] = True
    return {"x": rng.uniform(-1, 1, (batch, DIM)).astype(np.float32), "mask": mask}


def test_layer_norm_stays_fp32_and_the_copy_runs(tmp_path):
    folder = _folder(tmp_path, "g", 4.0)
    to_fp16(folder / "g", folder / "g_fp16")
    assert missing_fp32(folder / "g_fp16", ["norm"]) == []  # kept in fp32, weights and input cast
    assert missing_fp32(folder / "g_fp16", ["proj", "norm"]) == ["proj"]  # the MatMul is fp16
    feed = _feed(np.random.default_rng(0))
    want = ort_session(folder / "g" / MODEL_FILE).run(None, feed)
    got = ort_session(folder / "g_fp16" / MODEL_FILE).run(None, feed)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == np.float32 and np.abs(a - b).max() < 1e-2
    to_fp16(folder / "g", folder / "g_kept", keep_fp32=("proj",))  # and a named node on request
    assert missing_fp32(folder / "g_kept", ["proj", "norm"]) == []


def test_ranges_catch_a_tensor_near_fp16s_limit_and_not_the_mask_fill(tmp_path):
    rng = np.random.default_rng(1)
    for scale, flagged in ((4.0, set()), (FP16_MAX / 8, {"proj"})):
        (tmp_path / str(scale)).mkdir()
        runner = RangeRunner(_folder(tmp_path / str(scale), "g", scale), {"g"})
        outs = runner("g", _feed(rng), ["normed", "probs"])
        assert [o.shape for o in outs] == [(3, DIM), (3, DIM)]
        ranges = runner.ranges["g"]
        scores = ranges.tensors["scores"]
        assert scores.mask_path and scores.max_abs == MASK_VALUE and scores.max_abs_data <= 1.0
        assert not ranges.tensors["probs"].mask_path  # Softmax ends the mask path
        keep = ranges.keep_fp32()
        assert set(keep) - {"norm"} == flagged, keep
        # the layer norm's input: DIM values of up to `scale` squared and summed
        assert ("norm" in keep) is (scale * scale * DIM > FP16_MAX / 16)
        assert ranges.headroom() == FP16_MAX / ranges.tensors["y"].max_abs_data

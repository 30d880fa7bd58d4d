"""int8 graphs end to end: exported beside fp32 and recorded in the manifest, chosen per repository with
`--precision int8`, and served (the orchestrator assembled from that repository, and a real tritonserver)."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import pytest
from conftest import parse_pbtxt
from google.protobuf.json_format import MessageToDict

from export.int8 import pointwise_conv, pointwise_convs_as_matmuls
from model_repository import build as builder
from mtasr.audio import synth_conversation
from mtasr.manifest import Manifest
from mtasr.pipeline.service import sequence_manager
from mtasr.pipeline.validation import AudioRequest
from mtasr.spec import ORCHESTRATOR

TWINS = {"diarizer": "diarizer_int8", "diarizer_standalone": "diarizer_standalone_int8",
         "encoder_70_13": "encoder_70_13_int8", "encoder_70_0": "encoder_70_0_int8"}


@pytest.fixture(scope="module")
def graphs(tiny_parity):
    return tiny_parity["work"] / "graphs"


def _ops(path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_manifest_records_the_int8_twins(graphs):
    m = Manifest.load(graphs)
    assert m.int8 == TWINS
    assert all(m.graphs[twin] == m.graphs[name] for name, twin in TWINS.items())
    assert m.graph_names("70_13", "int8") == {"diarizer": "diarizer_int8", "encoder": "encoder_70_13_int8",
                                              "decoder_joint": "decoder_joint"}  # decoder_joint stays fp32
    for name, twin in TWINS.items():  # constant-weight MatMuls (pointwise convolutions too) are int8, the other
        ops, fp32 = _ops(graphs / twin / "model.onnx"), _ops(graphs / name / "model.onnx")  # convolutions float
        model = onnx.load(str(graphs / name / "model.onnx"))
        inits = {t.name: t for t in model.graph.initializer}
        pointwise = sum(pointwise_conv(n, inits) is not None for n in model.graph.node)
        assert ops["MatMulInteger"] > 0 and ops["DynamicQuantizeLinear"] > 0, (twin, ops)
        assert pointwise > 0 and ops["ConvInteger"] == 0 and ops["Conv"] == fp32["Conv"] - pointwise > 0, (twin, ops)


def _conv_model(rng: np.random.Generator) -> onnx.ModelProto:
    """x (1, 8, 5) -> pointwise Conv with bias -> depthwise Conv (k=3) -> pointwise Conv without bias -> y."""
    from onnx import TensorProto, helper, numpy_helper

    w = {"w1": rng.standard_normal((16, 8, 1)), "b1": rng.standard_normal(16), "wd": rng.standard_normal((16, 1, 3)),
         "w2": rng.standard_normal((4, 16, 1))}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h1"], "pw1"),
             helper.make_node("Conv", ["h1", "wd"], ["h2"], "dw", group=16, pads=[1, 1]),
             helper.make_node("Conv", ["h2", "w2"], ["y"], "pw2")]
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5])],
                              initializer=[numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_pointwise_convolutions_become_matmuls_with_the_same_outputs():
    from mtasr.pipeline.runner import ort_session

    rng = np.random.default_rng(0)
    model = _conv_model(rng)
    x = {"x": rng.standard_normal((1, 8, 5)).astype(np.float32)}
    before = ort_session(model.SerializeToString(), optimize=False).run(None, x)[0]
    assert pointwise_convs_as_matmuls(model) == 2  # the depthwise convolution is left alone
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Transpose", "MatMul", "Add", "Transpose", "Conv", "Transpose",
                                                     "MatMul", "Transpose"]
    assert {t.name for t in model.graph.initializer} == {"b1", "wd", "pw1/pointwise_weight", "pw2/pointwise_weight"}
    after = ort_session(model.SerializeToString(), optimize=False).run(None, x)[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


def test_int8_repository(graphs, tmp_path):
    out = tmp_path / "repo"
    assert builder.main(["--graphs", str(graphs), "--out", str(out), "--precision", "int8", "--preset", "70_13"]) == 0
    local = out / ORCHESTRATOR / "1" / "graphs"  # cpu: every graph in the orchestrator's process
    want = {"diarizer": "diarizer_int8", "encoder": "encoder_70_13_int8", "decoder_joint": "decoder_joint"}
    for model, folder in want.items():
        assert (local / model / "model.onnx").resolve() == (graphs / folder / "model.onnx").resolve()
    served = Manifest.load(out / ORCHESTRATOR / "1").serving
    assert served is not None and served.precision == "int8"
    assert json.loads((out / builder.MARKER).read_text())["models"] == want
    # as Triton models too (BLS), and an fp32 rebuild goes back to the fp32 graphs
    builder.build(graphs, "cpu", out, preset="70_13", in_process=(), precision="int8")
    assert (out / "diarizer" / "1" / "model.onnx").resolve() == (graphs / "diarizer_int8" / "model.onnx").resolve()
    builder.build(graphs, "cpu", out, preset="70_13")
    assert (local / "encoder" / "model.onnx").resolve() == (graphs / "encoder_70_13" / "model.onnx").resolve()
    assert Manifest.load(out / ORCHESTRATOR / "1").serving.precision == "fp32"


def test_int8_build_errors(graphs, tiny_parity, tmp_path):
    with pytest.raises(builder.BuildError, match="precision int8 is served on target cpu only"):
        builder.build(graphs, "gpu", tmp_path / "repo", precision="int8")
    plain = tiny_parity["work"] / "speakers8" / "graphs"  # exported without --int8
    with pytest.raises(builder.BuildError, match=r"no int8 copy of diarizer, encoder_70_13 \(export with --int8\)"):
        builder.build(plain, "cpu", tmp_path / "repo", precision="int8")
    assert not (tmp_path / "repo").exists()


def _session_requests(audio: np.ndarray, corrid: int, piece: int = 2560) -> list[AudioRequest]:
    key = f"int8-session-key-{corrid:06d}"
    return [AudioRequest(corrid=corrid, start=pos == 0, end=pos + piece >= audio.size,
                         audio=audio[None, pos : pos + piece], session_key=key)
            for pos in range(0, audio.size, piece)]


def test_orchestrator_serves_the_int8_graphs(graphs, tmp_path):
    """The orchestrator built from an int8 repository (Triton-free) transcribes; its diarizer activity is the fp32
    repository's within the int8 error (so the int8 graphs ran: not bit-equal) and names the same speakers."""
    audio = synth_conversation(8.0, 2, seed=3)
    transcripts, activity = {}, {}
    for precision in ("fp32", "int8"):
        repo = builder.build(graphs, "cpu", tmp_path / precision, preset="70_13", precision=precision)
        config = MessageToDict(parse_pbtxt((repo / ORCHESTRATOR / "config.pbtxt").read_text()),
                               preserving_proto_field_name=True)
        manager = sequence_manager(repo / ORCHESTRATOR / "1", config, bls=None)
        replies = [r for req in _session_requests(audio, 11) for r in manager.handle([req])]
        assert all(r.error is None for r in replies), [r.error for r in replies if r.error]
        assert replies[-1].final and replies[-1].transcript
        transcripts[precision] = replies[-1].transcript
        activity[precision] = np.concatenate([r.activity for r in replies])
    assert 0.0 < np.abs(activity["int8"] - activity["fp32"]).max() < 0.1
    speakers = {p: {s["speaker"] for s in t} for p, t in transcripts.items()}
    assert speakers["int8"] == speakers["fp32"] and len(speakers["fp32"]) >= 2


def test_tritonserver_serves_int8(graphs, tmp_path):
    """A real tritonserver on the int8 repository, diarizer and encoder as Triton models (BLS): one session."""
    from client.server import TritonServer
    from client.stream import stream_audio

    repo = builder.build(graphs, "cpu", tmp_path / "repo", preset="70_13", in_process=("decoder_joint",),
                         precision="int8")
    audio = synth_conversation(5.0, 2, seed=4)
    with TritonServer(repo, log_path=tmp_path / "server.log") as server:
        result = stream_audio(server.grpc_url, audio, session_id="int8", chunk_ms=160)
    assert result.seglst and len({s["speaker"] for s in result.seglst}) >= 1

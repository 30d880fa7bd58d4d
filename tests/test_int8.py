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

from model_repository import build as builder
from mtasr.audio import synth_conversation
from mtasr.manifest import Manifest
from mtasr.pipeline.sequences import AudioRequest
from mtasr.pipeline.service import sequence_manager
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
    for name, twin in TWINS.items():  # the constant-weight MatMuls are int8, convolutions stay float
        ops, fp32 = _ops(graphs / twin / "model.onnx"), _ops(graphs / name / "model.onnx")
        assert ops["MatMulInteger"] > 0 and ops["DynamicQuantizeLinear"] > 0, (twin, ops)
        assert ops["ConvInteger"] == 0 and ops["Conv"] == fp32["Conv"] > 0, (twin, ops)


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

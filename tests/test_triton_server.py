"""A real tritonserver (CPU, Python backend + ONNX Runtime) on tiny random-init graphs vs ONNX Runtime run directly."""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tritonclient.grpc import InferenceServerClient, InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from client.server import TRITON_DIR, TritonServer
from model_repository.build import build
from model_repository.triton_config import GRAPH_MODELS, graph_config, graph_max_batch
from mtasr.manifest import Manifest
from mtasr.spec import graph_specs

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5



# tiny_graphs: the run's one tiny export, shared by every test file (tests/conftest.py)


@pytest.fixture(scope="session")
def server(request, tmp_path_factory):
    # The server must run in CI; elsewhere a missing local Triton only skips (with the command that installs it).
    if not (TRITON_DIR / "bin" / "tritonserver").is_file() and not os.environ.get("CI"):
        pytest.skip(f"no local Triton in {TRITON_DIR}: run `make serve-setup` (CI unset)")
    repo = build(request.getfixturevalue("tiny_graphs"), "cpu", tmp_path_factory.mktemp("triton_repo") / "repo",
                 in_process=(), preset="70_13")  # every graph as its own Triton model; inputs at [70,13]
    with TritonServer(repo, models=list(GRAPH_MODELS)) as srv:
        yield srv
    assert srv.proc.returncode is not None, "tritonserver still running after the fixture"
    with pytest.raises(ProcessLookupError):
        os.kill(srv.pid, 0)


@pytest.fixture(scope="session")
def client(server):
    with InferenceServerClient(server.grpc_url) as c:
        yield c


def _inputs(graphs: Path, model: str, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Random inputs at the 70,13 streaming chunk (121 mel frames in, 14 encoder frames out)."""
    manifest = Manifest.load(graphs)
    d, cfg = manifest.dims, manifest.preset("70_13").streaming_cfg
    frames, out_frames = cfg.step_frames, cfg.valid_out_len
    rng = np.random.default_rng(seed)

    def f32(*shape: int) -> np.ndarray:
        return rng.standard_normal((batch, *shape), dtype=np.float32)

    def lengths(high: int, low: int = 1) -> np.ndarray:
        return rng.integers(low, high + 1, size=batch, dtype=np.int64)

    if model == "diarizer":
        return {"chunk": f32(frames, 128), "chunk_lengths": lengths(frames, frames - 8),
                "spkcache": f32(30, d.diar_emb_dim), "spkcache_lengths": lengths(30),
                "fifo": f32(20, d.diar_emb_dim), "fifo_lengths": lengths(20)}
    if model == "encoder":
        return {"audio_signal": f32(128, frames), "length": np.full(batch, frames, np.int64),
                "cache_last_channel": f32(d.enc_layers, d.enc_last_channel, d.enc_d_model),
                "cache_last_time": f32(d.enc_layers, d.enc_d_model, d.enc_last_time),
                "cache_last_channel_len": lengths(d.enc_last_channel, 0),
                "spk_targets": rng.random((batch, out_frames), dtype=np.float32),
                "bg_spk_targets": rng.random((batch, out_frames), dtype=np.float32)}
    return {"encoder_frame": f32(d.enc_d_model), "targets": lengths(d.vocab_size, 0),
            "h_in": f32(d.pred_layers, d.pred_hidden), "c_in": f32(d.pred_layers, d.pred_hidden)}


def _request(feeds: dict[str, np.ndarray]) -> list[InferInput]:
    """Triton inputs; batch-only tensors go as [B, 1] (config: dims [1], reshape [])."""
    inputs = []
    for name, value in feeds.items():
        value = value[:, None] if value.ndim == 1 else value
        inputs.append(InferInput(name, list(value.shape), np_to_triton_dtype(value.dtype)))
        inputs[-1].set_data_from_numpy(value)
    return inputs


def _direct(graphs: Path, model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    folder = {"encoder": "encoder_70_13"}.get(model, model)
    sess = ort.InferenceSession(str(graphs / folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def _max_abs(result, expected: dict[str, np.ndarray]) -> float:
    worst = 0.0
    for name, want in expected.items():
        got = result.as_numpy(name)
        want = want[:, None] if want.ndim == 1 else want  # batch-only outputs come back as [B, 1]
        assert got.dtype == want.dtype and got.shape == want.shape, (name, got.dtype, got.shape, want.shape)
        worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - want))) if want.size else 0.0)
    return worst


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("model", GRAPH_MODELS)
def test_graph_matches_onnxruntime(client, tiny_graphs, model, batch):
    feeds = _inputs(tiny_graphs, model, batch, seed=batch)
    spec = graph_specs(Manifest.load(tiny_graphs).dims)[model]
    outputs = [InferRequestedOutput(n) for n in spec.output_names]
    result = client.infer(model, _request(feeds), outputs=outputs)
    err = _max_abs(result, _direct(tiny_graphs, model, feeds))
    print(f"{model} batch={batch}: max abs {err:.2e}")
    assert err <= TOL


def _executions(client, model: str, headers: dict[str, str]) -> int:
    return int(client.get_inference_statistics(model, headers=headers).model_stats[0].execution_count)


def test_concurrent_requests_are_batched_correctly(client, server, tiny_graphs):
    """Several requests in flight at once (the dynamic batcher may merge them): each gets its own rows."""
    feeds = [_inputs(tiny_graphs, "decoder_joint", 1 + i % 2, seed=10 + i) for i in range(6)]
    before = _executions(client, "decoder_joint", server.admin_headers())
    done: queue.Queue = queue.Queue()
    for i, f in enumerate(feeds):
        client.async_infer("decoder_joint", _request(f),
                           callback=lambda result, error, i=i: done.put((i, result, error)))
    results = {i: (r, e) for i, r, e in (done.get(timeout=60) for _ in feeds)}
    assert all(e is None for _, e in results.values()), results
    errs = [_max_abs(results[i][0], _direct(tiny_graphs, "decoder_joint", f)) for i, f in enumerate(feeds)]
    executions = _executions(client, "decoder_joint", server.admin_headers()) - before
    print(f"decoder_joint: {len(feeds)} concurrent requests in {executions} "
          f"executions, max abs {max(errs):.2e}")
    assert max(errs) <= TOL


def test_bad_input_gives_clear_error(client, tiny_graphs):
    feeds = _inputs(tiny_graphs, "encoder", 1, seed=0)
    feeds["spk_targets"] = feeds["spk_targets"][:, :3]  # not the encoder's output frame count
    with pytest.raises(InferenceServerException, match="encoder: .*Mul"):
        client.infer("encoder", _request(feeds))
    ok = client.infer("decoder_joint", _request(_inputs(tiny_graphs, "decoder_joint", 1, seed=0)))
    assert ok.as_numpy("logits") is not None  # the server keeps serving



class _FakeTensor:
    def __init__(self, name: str, value: np.ndarray) -> None:
        self._name, self._value = name, value

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._value


class _FakeResponse:
    def __init__(self, output_tensors=None, error=None) -> None:
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors or []}
        self.error = error


def test_backend_groups_requests(tiny_graphs, tmp_path, monkeypatch):
    """onnx_model.py under a stand-in for Triton's pb_utils: same-shape requests run as one batch, bad ones fail
    alone with a TritonError, outputs equal ONNX Runtime's."""
    from google.protobuf.json_format import MessageToDict

    fake = types.SimpleNamespace(
        Tensor=_FakeTensor, InferenceResponse=_FakeResponse, TritonError=str, TritonModelException=RuntimeError,
        get_input_tensor_by_name=lambda request, name: _FakeTensor(name, request[name]) if name in request else None,
        triton_string_to_numpy=lambda s: np.dtype(s.removeprefix("TYPE_").lower().replace("fp", "float")).type)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    module_spec = importlib.util.spec_from_file_location("onnx_model", ROOT / "model_repository" / "onnx_model.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)

    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "model.onnx").symlink_to(tiny_graphs / "decoder_joint" / "model.onnx")
    dims = Manifest.load(tiny_graphs).dims
    config = MessageToDict(graph_config(graph_specs(dims)["decoder_joint"], "cpu", graph_max_batch(dims)),
                           preserving_proto_field_name=True)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(tmp_path), "model_version": "1"})
    runs = []
    run = model.session.run
    model.session = types.SimpleNamespace(run=lambda *a: runs.append(1) or run(*a))

    good = [_inputs(tiny_graphs, "decoder_joint", b, seed=20 + b) for b in (1, 2, 1)]
    missing = {k: v for k, v in good[0].items() if k != "c_in"}
    wrong = {**good[0], "h_in": np.zeros((1, dims.pred_layers, dims.pred_hidden + 1), np.float32)}
    responses = model.execute([good[0], missing, good[1], wrong, good[2]])
    assert [r.error is not None for r in responses] == [False, True, False, True, False]
    assert "missing input 'c_in'" in responses[1].error and responses[3].error.startswith("decoder_joint: ")
    assert len(runs) == 2  # the three good requests as one batch, then the wrong-shaped one alone
    for r, feeds in zip([responses[0], responses[2], responses[4]], good, strict=True):
        want = _direct(tiny_graphs, "decoder_joint", feeds)
        assert max(float(np.max(np.abs(r.outputs[n] - want[n]))) for n in want) <= TOL


# ------------------------------------------------------------- what the orchestrator's schedule relies on
LATE_MODEL = '''
import threading, time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Answers nothing in execute: a thread answers the pending requests once 5 are pending (or 1 s after the
    first), each with the count it answered together (negative input: an UNAVAILABLE error)."""

    def initialize(self, args):
        self.received, self.lock = [], threading.Lock()
        threading.Thread(target=self.answer, daemon=True).start()

    def execute(self, requests):
        with self.lock:
            for r in requests:
                n = int(pb_utils.get_input_tensor_by_name(r, "IN").as_numpy().reshape(-1)[0])
                self.received.append((n, r.get_response_sender(), time.monotonic()))
        return None

    def answer(self):
        while True:
            time.sleep(0.01)
            with self.lock:
                if not self.received:
                    continue
                if len(self.received) < 5 and time.monotonic() - self.received[0][2] < 1:
                    continue
                batch, seen = list(self.received), len(self.received)
                self.received.clear()
            for n, sender, _ in batch:
                if n < 0:
                    response = pb_utils.InferenceResponse(
                        error=pb_utils.TritonError("refused", pb_utils.TritonError.UNAVAILABLE))
                else:
                    out = pb_utils.Tensor("OUT", np.array([[seen]], dtype=np.int32))
                    response = pb_utils.InferenceResponse(output_tensors=[out])
                sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''
LATE_CONFIG = '''
name: "late"
backend: "python"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_INT32 dims: [1] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [1] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  oldest { max_candidate_sequences: 4 max_queue_delay_microseconds: 0 }
  control_input [ { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [0, 1] } ] },
                  { name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [0, 1] } ] },
                  { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] } ]
}
'''


@pytest.mark.server
def test_sequence_batcher_passes_requests_whose_predecessors_are_unanswered(tmp_path):
    """The orchestrator returns from `execute` at once and answers from its engine thread through each request's
    response sender (a non-decoupled model). That relies on Triton 2.51 passing a sequence's next requests to the
    model while the earlier ones are unanswered, and on one final response per request reaching unary and
    streaming clients, errors with their status."""
    if not (TRITON_DIR / "bin" / "tritonserver").is_file() and not os.environ.get("CI"):
        pytest.skip(f"no local Triton in {TRITON_DIR}: run `make serve-setup` (CI unset)")
    (tmp_path / "repo" / "late" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "late" / "config.pbtxt").write_text(LATE_CONFIG)
    (tmp_path / "repo" / "late" / "1" / "model.py").write_text(LATE_MODEL)

    def value(n: int) -> list[InferInput]:
        x = InferInput("IN", [1, 1], "INT32")
        x.set_data_from_numpy(np.array([[n]], np.int32))
        return [x]

    with TritonServer(tmp_path / "repo") as srv, InferenceServerClient(srv.grpc_url) as c:
        got: queue.Queue = queue.Queue()
        c.start_stream(callback=lambda result, error: got.put((result, error)))
        for i in range(5):  # one sequence, sent back to back
            c.async_stream_infer("late", value(i), request_id=str(i), sequence_id=7, sequence_start=i == 0,
                                 sequence_end=i == 4)
        replies = [got.get(timeout=30) for _ in range(5)]
        c.stop_stream()
        assert all(error is None for _, error in replies)
        assert [r.get_response().id for r, _ in replies] == ["0", "1", "2", "3", "4"]
        assert [int(r.as_numpy("OUT")[0, 0]) for r, _ in replies] == [5] * 5  # all 5 arrived before any answer
        assert int(c.infer("late", value(1), sequence_id=8, sequence_start=True).as_numpy("OUT")[0, 0]) == 1
        with pytest.raises(InferenceServerException) as refused:
            c.infer("late", value(-1), sequence_id=8, sequence_end=True)
        assert "UNAVAILABLE" in str(refused.value.status()) and "refused" in refused.value.message(), refused.value

"""Triton configs: generated from mtasr.spec, committed references without drift, repository builder layout."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import parse_pbtxt
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import np_to_triton_dtype

from model_repository import build as builder
from model_repository.triton_config import (
    GRAPH_MODELS,
    IN_PROCESS_DEFAULT,
    NUMPY_TO_TRITON,
    ORCHESTRATOR_MAX_BATCH,
    STREAMING_MAX_BATCH,
    TARGETS,
    repository_configs,
    triton_dtype,
)
from mtasr.manifest import AsrInfo, DiarizerInfo, FeatureFiles, Manifest, Preset, StreamingCfg
from mtasr.pipeline.params import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_LAG_LIMIT_S,
    DEFAULT_MAX_SESSIONS,
    DiarizationParams,
    OrchestratorParams,
    pipeline_of,
)
from mtasr.spec import (
    DIARIZATION,
    NUM_SPEAKERS,
    ORCHESTRATOR,
    PUBLIC_CHECKPOINT_DIMS,
    GraphSpec,
    ModelDims,
    TensorSpec,
    diarization_spec,
    graph_specs,
    orchestrator_spec,
    parse_preset,
)

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "regenerate with `python -m model_repository.build --write-committed`"


def _committed() -> dict[str, str]:
    return {str(p.relative_to(builder.COMMITTED_DIR)): p.read_text()
            for p in sorted(builder.COMMITTED_DIR.rglob("config.pbtxt"))}


def test_committed_configs_match_a_fresh_generation():
    fresh, committed = builder.committed_configs(), _committed()
    assert sorted(committed) == sorted(fresh), REGENERATE
    for rel, text in fresh.items():
        assert committed[rel] == text, f"{rel} drifted from mtasr.spec: {REGENERATE}"


@pytest.mark.parametrize("target", TARGETS)
def test_committed_configs_parse_back(target):
    expected = repository_configs(PUBLIC_CHECKPOINT_DIMS, target, builder.COMMITTED_PRESET, "kernel")
    for name, cfg in expected.items():
        parsed = parse_pbtxt((builder.COMMITTED_DIR / target / name / "config.pbtxt").read_text())
        assert isinstance(parsed, mc.ModelConfig) and parsed == cfg and parsed.name == name


def _check_tensors(configured, tensors: tuple[TensorSpec, ...]) -> None:
    assert [c.name for c in configured] == [t.name for t in tensors]
    for c, t in zip(configured, tensors, strict=True):
        assert mc.DataType.Name(c.data_type) == NUMPY_TO_TRITON[np.dtype(t.dtype).type], t.name
        if t.shape[1:]:
            assert list(c.dims) == list(t.shape[1:]) and not c.HasField("reshape"), t.name
        else:  # batch-only: Triton wants dims [1] and a reshape to the model's [batch]
            assert list(c.dims) == [1] and c.HasField("reshape") and list(c.reshape.shape) == [], t.name


def _check_io(cfg: mc.ModelConfig, spec: GraphSpec) -> None:
    _check_tensors(cfg.input, spec.inputs)
    _check_tensors(cfg.output, spec.outputs)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dims", [PUBLIC_CHECKPOINT_DIMS, ModelDims(64, 188, 188, 2, 64, 70, 8, 2, 64, 64)])
def test_graph_configs_follow_the_spec(target, dims):
    configs = repository_configs(dims, target, "70_13", in_process=())
    for name, spec in graph_specs(dims).items():
        cfg = configs[name]
        _check_io(cfg, spec)
        # one graph call carries the rows of ORCHESTRATOR_MAX_BATCH sessions x 4 speakers
        assert cfg.max_batch_size == ORCHESTRATOR_MAX_BATCH * NUM_SPEAKERS == 128
        assert cfg.dynamic_batching.max_queue_delay_microseconds > 0
        assert max(cfg.dynamic_batching.preferred_batch_size) <= cfg.max_batch_size
        [group] = cfg.instance_group
        if target == "gpu":
            assert cfg.platform == "onnxruntime_onnx" and not cfg.backend
            assert group.kind == mc.ModelInstanceGroup.KIND_GPU and cfg.default_model_filename == "model.onnx"
        elif target == "tensorrt":
            assert cfg.platform == "tensorrt_plan" and not cfg.backend
            assert group.kind == mc.ModelInstanceGroup.KIND_GPU and cfg.default_model_filename == "model.plan"
        else:
            assert cfg.backend == "python" and not cfg.platform
            assert group.kind == mc.ModelInstanceGroup.KIND_CPU


@pytest.mark.parametrize("target", TARGETS)
def test_in_process_models(target):
    """Graphs the orchestrator runs itself are not Triton models; the orchestrator's parameter names them."""
    default = repository_configs(PUBLIC_CHECKPOINT_DIMS, target, "70_13")
    assert set(default) == {ORCHESTRATOR, DIARIZATION,
                            *(m for m in GRAPH_MODELS if m not in IN_PROCESS_DEFAULT[target])}
    assert IN_PROCESS_DEFAULT["cpu"] == GRAPH_MODELS and IN_PROCESS_DEFAULT["gpu"] == ("decoder_joint",)
    for in_process in [(), ("decoder_joint",), GRAPH_MODELS]:
        configs = repository_configs(PUBLIC_CHECKPOINT_DIMS, target, "70_13", in_process=in_process)
        assert set(configs) == {ORCHESTRATOR, DIARIZATION, *(m for m in GRAPH_MODELS if m not in in_process)}
        assert configs[ORCHESTRATOR].parameters["in_process_models"].string_value == ",".join(in_process)
    with pytest.raises(ValueError, match="in-process models"):
        repository_configs(PUBLIC_CHECKPOINT_DIMS, target, "70_13", in_process=("joint",))


@pytest.mark.parametrize("target", TARGETS)
def test_orchestrator_config(target):
    cfg = repository_configs(PUBLIC_CHECKPOINT_DIMS, target, "70_6", "masked")[ORCHESTRATOR]
    _check_io(cfg, orchestrator_spec())
    assert all(i.optional for i in cfg.input) and {i.name for i in cfg.input} == {"audio", "audio_int16"}
    assert [o.data_type for o in cfg.output[:2]] == [mc.TYPE_STRING, mc.TYPE_STRING]
    # execute only hands requests to the engine thread: Triton's batch never bounds the engine's (>= 256 sessions)
    assert cfg.backend == "python" and cfg.max_batch_size == STREAMING_MAX_BATCH >= 256
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU and cfg.instance_group[0].count == 1
    seq = cfg.sequence_batching
    assert seq.WhichOneof("strategy_choice") == "oldest"
    assert seq.oldest.max_queue_delay_microseconds == 0 and not seq.oldest.preferred_batch_size
    # room in the batcher beyond the session cap, so a START over the cap reaches the orchestrator's refusal
    assert seq.oldest.max_candidate_sequences >= 4 * DEFAULT_MAX_SESSIONS >= cfg.max_batch_size
    # the batcher keeps a sequence for the idle timeout plus the lag limit: the orchestrator expires it first
    assert seq.max_sequence_idle_microseconds == (DEFAULT_IDLE_TIMEOUT_S + DEFAULT_LAG_LIMIT_S) * 1e6 < 30e6
    controls = {c.name: c.control[0] for c in seq.control_input}
    kind = mc.ModelSequenceBatching.Control
    assert {n: kind.Kind.Name(c.kind) for n, c in controls.items()} == {
        "START": "CONTROL_SEQUENCE_START", "END": "CONTROL_SEQUENCE_END", "READY": "CONTROL_SEQUENCE_READY",
        "CORRID": "CONTROL_SEQUENCE_CORRID"}
    assert all(list(controls[n].bool_false_true) == [False, True] for n in ("START", "END", "READY"))
    assert controls["CORRID"].data_type == mc.TYPE_UINT64
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert set(params) == {f.name for f in dataclasses.fields(OrchestratorParams)}  # every parameter is written
    assert params.items() >= {"pipeline": "multitalker", "diarizer_model": "diarizer", "encoder_model": "encoder",
                      "decoder_joint_model": "decoder_joint",
                      "preset": "70_6", "speaker_mode": "masked", "intra_op_threads": "0",
                      "max_sessions": str(DEFAULT_MAX_SESSIONS), "timing": "audio",
                      "in_process_models": ",".join(IN_PROCESS_DEFAULT[target]),
                      "idle_timeout_s": str(DEFAULT_IDLE_TIMEOUT_S), "admission_headroom": "0.7",
                      "lag_limit_s": str(DEFAULT_LAG_LIMIT_S), "reply_budget_s": "0.16"}.items()
    # every parameter written is one the orchestrator reads back, and nothing else
    parsed = OrchestratorParams.from_params(params)
    assert parsed.to_params() == params and parsed.masked_asr and parsed.preset == "70_6"
    with pytest.raises(ValueError, match="unknown OrchestratorParams parameters"):
        OrchestratorParams.from_params({**params, "manifest": "manifest.json"})


@pytest.mark.parametrize("target", TARGETS)
def test_diarization_config(target):
    """The diarization service: the same streaming model shape (inputs, outputs, sequence batching, session cap),
    its own parameters, read back as they were written."""
    cfg = repository_configs(PUBLIC_CHECKPOINT_DIMS, target, "70_13", max_sessions=7, idle_timeout_s=3.0,
                             diarization_preset="ultra_low")[DIARIZATION]
    _check_io(cfg, diarization_spec())
    assert cfg.backend == "python" and cfg.sequence_batching.WhichOneof("strategy_choice") == "oldest"
    assert cfg.sequence_batching.max_sequence_idle_microseconds == 13_000_000
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params == {"pipeline": "diarization", "diarization_preset": "ultra_low", "intra_op_threads": "0",
                      "max_sessions": "7", "idle_timeout_s": "3.0", "admission_headroom": "0.7",
                      "lag_limit_s": "10.0", "reply_budget_s": "0.16"}
    assert pipeline_of(params) == "diarization" and DiarizationParams.from_params(params).to_params() == params
    with pytest.raises(ValueError, match="unknown diarization preset"):
        repository_configs(PUBLIC_CHECKPOINT_DIMS, target, "70_13", diarization_preset="instant")


def test_session_limits_reach_the_config():
    configs = repository_configs(PUBLIC_CHECKPOINT_DIMS, "cpu", "70_13", max_sessions=100, idle_timeout_s=2.5,
                                 admission_headroom=0.5, lag_limit_s=4.0, instances=2, reply_budget_s=1.12)
    for cfg in (configs[ORCHESTRATOR], configs[DIARIZATION]):
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        assert (params["max_sessions"], params["idle_timeout_s"], params["admission_headroom"],
                params["lag_limit_s"], params["reply_budget_s"]) == ("100", "2.5", "0.5", "4.0", "1.12")
        assert cfg.sequence_batching.max_sequence_idle_microseconds == 6_500_000
        assert cfg.sequence_batching.oldest.max_candidate_sequences == 512  # 2 x the batch, above 4 x 100
        assert cfg.instance_group[0].count == 2
    with pytest.raises(ValueError, match="admission_headroom"):
        repository_configs(PUBLIC_CHECKPOINT_DIMS, "cpu", "70_13", admission_headroom=1.5)


def test_dtype_table_agrees_with_tritonclient():
    for dtype, name in NUMPY_TO_TRITON.items():
        expected = "TYPE_STRING" if dtype is np.object_ else "TYPE_" + np_to_triton_dtype(np.dtype(dtype))
        assert name == expected and mc.DataType.Name(triton_dtype(dtype)) == name
    with pytest.raises(KeyError):
        triton_dtype(np.complex64)


def test_serving_modules_do_not_import_torch():
    """The core imports neither torch, nemo nor tritonclient; the config generator adds only tritonclient."""
    core = "mtasr, mtasr.spec, mtasr.manifest, mtasr.examples, mtasr.pipeline, mtasr.pipeline.service"
    heavy = "[m for m in ('torch', 'nemo', 'tritonclient') if m in sys.modules]"
    for modules, allowed in ((core, []), (f"{core}, model_repository.triton_config", ["tritonclient"])):
        code = f"import sys, {modules}; print({heavy})"
        out = subprocess.check_output([sys.executable, "-c", code], cwd=ROOT, text=True).strip()
        assert out == str(allowed), (modules, out)


# ---- repository builder, on a fake exported folder (placeholder files: nothing is loaded) ----

def _fake_graphs(root: Path, fp16: bool) -> Path:
    folders = {"diarizer": "diarizer", "diarizer_standalone": "diarizer", "encoder_70_13": "encoder",
               "encoder_70_0": "encoder", "decoder_joint": "decoder_joint"}
    if fp16:
        folders |= {f"{k}_fp16": v for k, v in folders.items()}
    for folder in folders:
        (root / folder).mkdir(parents=True)
        (root / folder / "model.onnx").write_text(folder)
    (root / "encoder_70_13" / "model.onnx.data").write_text("weights")
    features = FeatureFiles()
    for name in (features.asr, features.diarizer, features.rnnt_weights):
        (root / name).write_text(name)
    streaming = StreamingCfg((105, 112), (105, 112), (0, 9), 2, 14)
    Manifest(dims=PUBLIC_CHECKPOINT_DIMS, default_preset="70_0", graphs=folders,
             presets={p: Preset(parse_preset(p), f"encoder_{p}", streaming) for p in ("70_13", "70_0")},
             diarizer=DiarizerInfo("diarizer", 2, "diarizer_standalone", {"spkcache_len": 188}),
             asr=AsrInfo("decoder_joint", 1024, 10, ("a", "b"), 8), features=features).save(root)
    return root


@pytest.mark.parametrize("target", ["cpu", "gpu"])  # tensorrt: tests/test_tensorrt.py, on real tiny graphs
@pytest.mark.parametrize("in_process", [None, ()])
def test_build_layout(tmp_path, target, in_process):
    graphs = _fake_graphs(tmp_path / "graphs", fp16=True)
    repo = builder.build(graphs, target, tmp_path / "repo", preset="70,13", speaker_mode="masked",
                         in_process=in_process)
    local = IN_PROCESS_DEFAULT[target] if in_process is None else in_process
    suffix = "_fp16" if target == "gpu" else ""
    chosen = {"diarizer": "diarizer", "encoder": "encoder_70_13", "decoder_joint": "decoder_joint"}
    for model, folder in chosen.items():
        version = repo / ORCHESTRATOR / "1" / "graphs" / model if model in local else repo / model / "1"
        assert (version / "model.onnx").read_text() == folder + suffix
        assert (version / "model.py").is_file() == (target == "cpu" and model not in local)
        assert (repo / model / "config.pbtxt").is_file() == (model not in local)
        if model not in local:
            assert parse_pbtxt((repo / model / "config.pbtxt").read_text()).name == model
    encoder = repo / ORCHESTRATOR / "1" / "graphs" / "encoder" if "encoder" in local else repo / "encoder" / "1"
    assert (encoder / "model.onnx.data").exists() == (target == "cpu")  # only the fp32 folder has one
    if target == "cpu" and "diarizer" not in local:
        assert (repo / "diarizer" / "1" / "model.py").read_text() == builder.ONNX_MODEL_PY.read_text()
    orchestrator = repo / ORCHESTRATOR
    assert {p.name for p in (orchestrator / "1").iterdir()} >= {"manifest.json", "features_asr.npz",
                                                                "rnnt_weights.npz"}
    diarization = repo / DIARIZATION / "1"
    assert {p.name for p in diarization.iterdir()} == {"manifest.json", "features_diarizer.npz", "graphs", "model.py"}
    assert (diarization / "graphs" / "diarizer_standalone" / "model.onnx").read_text() == "diarizer_standalone"
    assert parse_pbtxt((repo / DIARIZATION / "config.pbtxt").read_text()).parameters["pipeline"].string_value == \
        "diarization"
    params = parse_pbtxt((orchestrator / "config.pbtxt").read_text()).parameters
    assert params["preset"].string_value == "70_13" and params["speaker_mode"].string_value == "masked"
    # a rebuild replaces the repository; the default preset is the manifest's
    builder.build(graphs, target, repo, in_process=in_process)
    assert (encoder / "model.onnx").read_text() == "encoder_70_0" + suffix


def test_build_without_orchestrator_code_warns(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(builder, "ORCHESTRATOR_PY", tmp_path / "absent" / "model.py")
    with caplog.at_level(logging.WARNING, logger="model_repository.build"):
        repo = builder.build(_fake_graphs(tmp_path / "graphs", fp16=False), "cpu", tmp_path / "repo")
    assert (repo / ORCHESTRATOR / "config.pbtxt").is_file() and not (repo / ORCHESTRATOR / "1" / "model.py").exists()
    assert "does not exist yet" in caplog.text


def test_build_errors(tmp_path):
    graphs = _fake_graphs(tmp_path / "graphs", fp16=False)
    with pytest.raises(builder.BuildError, match="preset 70_6 was not exported"):
        builder.build(graphs, "cpu", tmp_path / "repo", preset="70_6")
    with pytest.raises(builder.BuildError, match="unknown latency preset"):
        builder.build(graphs, "cpu", tmp_path / "repo", preset="70,5")
    with pytest.raises(builder.BuildError, match="--in-process takes models among"):
        builder.build(graphs, "cpu", tmp_path / "repo", in_process=("joint",))
    with pytest.raises(builder.BuildError, match="no manifest.json"):
        builder.build(tmp_path, "cpu", tmp_path / "repo")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(builder.BuildError, match="refusing to replace"):
        builder.build(graphs, "cpu", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert not (tmp_path / "repo").exists() and not (tmp_path / "repo.partial").exists()

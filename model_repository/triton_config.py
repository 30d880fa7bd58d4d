"""Triton `config.pbtxt` for every served model, built from `mtasr.spec` through Triton's ModelConfig protobuf.

Targets: "gpu" serves the graphs with Triton's ONNX Runtime backend (`platform: onnxruntime_onnx`, KIND_GPU);
"tensorrt" with Triton's TensorRT backend (`platform: tensorrt_plan`, plans built in the container from the ONNX
graphs, `model_repository.tensorrt`); "cpu" with the Python backend running ONNX Runtime
(`model_repository/onnx_model.py`, KIND_CPU).
The `multitalker` orchestrator is a Python-backend model under the sequence batcher (oldest strategy). Its
control inputs START / END / READY are TYPE_BOOL (false/true) and CORRID is TYPE_UINT64, each shaped
[batch, 1] in the requests the model receives.
"""

from __future__ import annotations

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from mtasr.manifest import GRAPH_ROLES
from mtasr.pipeline.params import (
    DEFAULT_DIARIZATION_PRESET,
    DEFAULT_IDLE_TIMEOUT_S,
    DiarizationParams,
    ModelParams,
    OrchestratorParams,
)
from mtasr.spec import (
    BYTES,
    DIARIZATION,
    ORCHESTRATOR,
    GraphSpec,
    ModelDims,
    TensorSpec,
    diarization_spec,
    graph_specs,
    orchestrator_spec,
)

TARGETS = ("cpu", "gpu", "tensorrt")
GRAPH_MODELS = GRAPH_ROLES  # model names in the repository (= graph kinds)
# Graphs the orchestrator runs in its own ONNX Runtime session instead of through BLS, by target. The RNNT greedy
# loop calls decoder_joint once per emitted symbol and frame (about 50 calls per step for 2 speakers): through BLS
# each call is a round trip between processes (~3 ms), in process ~0.07 ms on the tiny models. On the CPU a BLS
# graph model is one more Python-backend process with its own thread pool on the same cores, so the cpu target
# runs every graph in process; on gpu the diarizer and encoder stay Triton models (ONNX Runtime / TensorRT).
IN_PROCESS_DEFAULT = {"cpu": GRAPH_MODELS, "gpu": ("decoder_joint",), "tensorrt": ("decoder_joint",)}
# Where the engine keeps its device-side state (encoder caches, LSTM state, speaker-cache embeddings) and runs the
# decoder's and the features' arithmetic: host memory on cpu, the GPU's (CuPy, graphs' tensors by DLPack) otherwise.
TARGET_ARRAY_MODULE = {"cpu": "numpy", "gpu": "cupy", "tensorrt": "cupy"}
PLAN_FILE = "model.plan"  # a TensorRT graph model's engine, next to the model.onnx it is built from
ORCHESTRATOR_MAX_BATCH = 32  # sessions whose rows one graph model call carries (graph_max_batch)
# Requests per `execute` of a streaming model. Its execute only queues requests for the orchestrator's engine
# thread, which steps every session with a pending chunk at once whatever the executes were, so this bounds
# nothing but the hand-over; large, so that a busy batcher hands many requests over per round trip.
STREAMING_MAX_BATCH = 256
# Sequence slots the batcher keeps beyond the session cap: a START over the cap must reach the orchestrator (which
# refuses it at once, "server full" / "at capacity") instead of waiting silently in the batcher's backlog; slots of
# the oldest strategy are bookkeeping only. Refused and abandoned sequences hold theirs until the idle timeout.
CANDIDATE_SLOTS_PER_SESSION = 4

# numpy dtype -> Triton data type name, the one mapping used everywhere.
NUMPY_TO_TRITON: dict[type, str] = {
    np.bool_: "TYPE_BOOL",
    np.uint8: "TYPE_UINT8",
    np.uint16: "TYPE_UINT16",
    np.uint32: "TYPE_UINT32",
    np.uint64: "TYPE_UINT64",
    np.int8: "TYPE_INT8",
    np.int16: "TYPE_INT16",
    np.int32: "TYPE_INT32",
    np.int64: "TYPE_INT64",
    np.float16: "TYPE_FP16",
    np.float32: "TYPE_FP32",
    np.float64: "TYPE_FP64",
    BYTES: "TYPE_STRING",
}


def triton_dtype(dtype: type) -> int:
    """numpy dtype -> `model_config_pb2.DataType` value; KeyError for a dtype Triton has no type for."""
    key = BYTES if dtype is BYTES else np.dtype(dtype).type
    return mc.DataType.Value(NUMPY_TO_TRITON[key])


def _io(message, t: TensorSpec, **extra) -> None:
    """Fill a ModelInput / ModelOutput from a spec tensor; the batch axis (dims[0]) is Triton's, not listed.

    A batch-only tensor (spec dims `("batch",)`) gets Triton's convention `dims: [1]` with `reshape: {shape: []}`
    (Triton refuses empty dims): clients send [B, 1], the model sees [B].
    """
    message.name = t.name
    message.data_type = triton_dtype(t.dtype)
    message.dims.extend(t.shape[1:] or (1,))
    if not t.shape[1:]:
        message.reshape.SetInParent()
    for key, value in extra.items():
        setattr(message, key, value)


def _tensors(cfg: mc.ModelConfig, spec: GraphSpec, optional: bool = False) -> None:
    for t in spec.inputs:
        _io(cfg.input.add(), t, **({"optional": True} if optional else {}))
    for t in spec.outputs:
        _io(cfg.output.add(), t)


def _param(cfg: mc.ModelConfig, key: str, value: str) -> None:
    cfg.parameters[key].string_value = str(value)


def graph_max_batch(dims: ModelDims) -> int:
    """Rows one graph call may carry: one orchestrator execute sends every active speaker (up to the diarizer's
    count) of every sequence in one encoder call."""
    return ORCHESTRATOR_MAX_BATCH * dims.n_spk


def graph_config(spec: GraphSpec, target: str, max_batch_size: int, name: str | None = None) -> mc.ModelConfig:
    """A stateless graph model with dynamic batching: ONNX Runtime or TensorRT on GPU, Python backend on CPU."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; use one of {TARGETS}")
    cfg = mc.ModelConfig(name=name or spec.name, max_batch_size=max_batch_size)
    if target == "gpu":
        cfg.platform = "onnxruntime_onnx"
        cfg.default_model_filename = "model.onnx"
        kind = mc.ModelInstanceGroup.KIND_GPU
    elif target == "tensorrt":
        cfg.platform = "tensorrt_plan"
        cfg.default_model_filename = PLAN_FILE
        kind = mc.ModelInstanceGroup.KIND_GPU
    else:
        cfg.backend = "python"
        kind = mc.ModelInstanceGroup.KIND_CPU
    cfg.instance_group.add(count=1, kind=kind)
    _tensors(cfg, spec)
    sizes = [s for s in (8, 16, 32, 64) if s <= max_batch_size]
    cfg.dynamic_batching.preferred_batch_size.extend(sizes)
    cfg.dynamic_batching.max_queue_delay_microseconds = 500
    return cfg


def streaming_model_config(spec: GraphSpec, params: ModelParams, max_batch_size: int = STREAMING_MAX_BATCH,
                           instances: int = 1) -> mc.ModelConfig:
    """A streaming model (`multitalker`, `diarization`): Python backend, sequence batching (oldest), both audio
    inputs optional.

    `params` (e.g. graph model names, latency preset, speaker mode, in-process graphs, admission limits) become
    the model's parameters; the model reads its idle timeout from them and expires idle sessions itself. The
    batcher's `max_sequence_idle_microseconds` is the idle timeout plus the lag limit: a client that waits for each
    reply before it sends the next piece may wait up to the lag limit, and the batcher must not drop a sequence
    the orchestrator still serves. `instances` > 1 runs several orchestrator processes (each its own sessions).
    """
    cfg = mc.ModelConfig(name=spec.name, backend="python", max_batch_size=max_batch_size)
    cfg.instance_group.add(count=instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    _tensors(cfg, spec, optional=True)
    seq = cfg.sequence_batching
    seq.max_sequence_idle_microseconds = round((params.idle_timeout_s + params.lag_limit_s) * 1e6)
    seq.oldest.max_candidate_sequences = max(2 * max_batch_size, CANDIDATE_SLOTS_PER_SESSION * params.max_sessions)
    # no preferred sizes: the model's execute is a hand-over, so whatever is waiting goes at once
    seq.oldest.max_queue_delay_microseconds = 0
    Control = mc.ModelSequenceBatching.Control
    for name, kind in (("START", Control.CONTROL_SEQUENCE_START), ("END", Control.CONTROL_SEQUENCE_END),
                       ("READY", Control.CONTROL_SEQUENCE_READY)):
        seq.control_input.add(name=name).control.add(kind=kind, bool_false_true=[False, True])
    seq.control_input.add(name="CORRID").control.add(kind=Control.CONTROL_SEQUENCE_CORRID,
                                                     data_type=triton_dtype(np.uint64))
    for key, value in params.to_params().items():
        _param(cfg, key, value)
    return cfg


def repository_configs(dims: ModelDims, target: str, preset: str, speaker_mode: str = "kernel",
                       in_process: tuple[str, ...] | None = None, max_sessions: int | None = None,
                       idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S, timing: str | None = None,
                       diarization_preset: str = DEFAULT_DIARIZATION_PRESET, admission_headroom: float | None = None,
                       lag_limit_s: float | None = None, instances: int = 1,
                       reply_budget_s: float | None = None) -> dict[str, mc.ModelConfig]:
    """Model name -> config for a whole repository: `multitalker`, the graph models it calls through BLS (those not
    `in_process`, which defaults to the target's IN_PROCESS_DEFAULT) and the `diarization` service. The admission
    limits (None: the parameters' defaults) go to both streaming models."""
    in_process = IN_PROCESS_DEFAULT[target] if in_process is None else tuple(in_process)
    specs = graph_specs(dims)
    limits = {"max_sessions": max_sessions, "admission_headroom": admission_headroom, "lag_limit_s": lag_limit_s,
              "reply_budget_s": reply_budget_s}
    limits = {"idle_timeout_s": float(idle_timeout_s), **{k: v for k, v in limits.items() if v is not None}}
    params = OrchestratorParams(preset=preset, speaker_mode=speaker_mode, in_process_models=in_process,
                                array_module=TARGET_ARRAY_MODULE[target], **limits,
                                **({"timing": timing} if timing is not None else {}))
    configs = {kind: graph_config(specs[kind], target, graph_max_batch(dims), name=kind)
               for kind in GRAPH_MODELS if kind not in in_process}
    configs[ORCHESTRATOR] = streaming_model_config(orchestrator_spec(), params, instances=instances)
    diar = DiarizationParams(diarization_preset=diarization_preset, **limits)
    configs[DIARIZATION] = streaming_model_config(diarization_spec(), diar, instances=instances)
    return configs


def to_pbtxt(cfg: mc.ModelConfig) -> str:
    return text_format.MessageToString(cfg)

"""Triton Python backend glue for the `multitalker` orchestrator: requests -> `AudioRequest`, `Reply` ->
responses, graph calls -> BLS, session events -> Triton custom metrics. Everything else lives in
`mtasr.pipeline` (no Triton import there).

`execute` only parses its requests and hands each, with its response sender, to the `SequenceManager`, then
returns: the manager's engine thread steps every session with a complete chunk in one engine call, whichever
executes their requests came in, and sends each request's one response (final flag) from that thread (a
non-decoupled model may answer later through `request.get_response_sender()`). Requests so never wait in Triton's
queue behind a step, and the sequence batcher keeps passing a sequence's next request while the previous one's
response is unsent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from mtasr.pipeline import array_friendly_malloc, single_threaded_blas
from mtasr.pipeline.metrics import METRICS, MODEL_LABEL, MetricDef, MetricKind, ServingMetrics
from mtasr.pipeline.replies import Reply
from mtasr.pipeline.service import sequence_manager, tensor_ranks
from mtasr.pipeline.sessions import ErrorCode
from mtasr.pipeline.validation import AudioRequest
from mtasr.spec import (
    HOST_OUTPUTS,
    MAX_SPEAKERS_PARAMETER,
    SESSION_KEY_HEADER,
    TIMING_PARAMETER,
    OrchestratorInputs,
    OrchestratorOutputs,
)

# pb_utils' error codes and metric kinds exist only once the stub has started (not at import for auto-complete).
# Triton 2.51's Python backend has no UNAUTHENTICATED: a missing session key is an invalid argument.
ERROR_CODE_NAMES = {ErrorCode.INVALID_ARGUMENT: "INVALID_ARG", ErrorCode.UNAUTHENTICATED: "INVALID_ARG",
                    ErrorCode.NOT_FOUND: "NOT_FOUND", ErrorCode.ALREADY_EXISTS: "ALREADY_EXISTS",
                    ErrorCode.UNAVAILABLE: "UNAVAILABLE", ErrorCode.INTERNAL: "INTERNAL"}


class BlsRunner:
    """Runs a graph model of the repository through BLS; batch-only tensors travel as [B, 1] (their config).

    With a device array module (`xp`, CuPy), device arrays go in by DLPack, outputs are asked for in GPU memory and
    come back by DLPack as `xp` arrays, except the few the pipeline reads on the host (`HOST_OUTPUTS`), which are
    copied to numpy. With numpy, every output is asked for in CPU memory (a GPU graph model's outputs otherwise
    stay where they were made and `as_numpy` fails)."""

    def __init__(self, ranks: dict[str, int], xp=np) -> None:
        self.ranks = ranks  # tensor name -> rank in the spec (with batch)
        self.xp = xp
        self.on_device = xp is not np
        memory = pb_utils.TRITONSERVER_MEMORY_GPU if self.on_device else pb_utils.TRITONSERVER_MEMORY_CPU
        self.memory = pb_utils.PreferredMemory(memory, 0)

    def _tensor(self, name: str, value):
        if isinstance(value, np.ndarray):
            return pb_utils.Tensor(name, value[:, None] if value.ndim == 1 else value)
        value = value[:, None] if value.ndim == 1 else value
        return pb_utils.Tensor.from_dlpack(name, self.xp.ascontiguousarray(value).toDlpack())

    def _array(self, tensor, name: str):
        if tensor.is_cpu():
            x = tensor.as_numpy()
        else:
            x = self.xp.from_dlpack(tensor.to_dlpack())
            if name in HOST_OUTPUTS:
                x = self.xp.asnumpy(x)
        return x.reshape(x.shape[0]) if self.ranks[name] == 1 else x

    def __call__(self, graph: str, feeds: dict, outputs: list[str]) -> list:
        inputs = [self._tensor(k, v) for k, v in feeds.items()]
        response = pb_utils.InferenceRequest(model_name=graph, requested_output_names=outputs, inputs=inputs,
                                             preferred_memory=self.memory).exec()
        if response.has_error():
            raise RuntimeError(f"{graph}: {response.error().message()}")
        return [self._array(pb_utils.get_output_tensor_by_name(response, name), name) for name in outputs]


class TritonMetricSink:
    """`MetricSink` over Triton's custom metrics (served on the metrics port with Triton's own)."""

    def __init__(self, metrics: tuple[MetricDef, ...], model: str) -> None:
        self.model = model  # every series is labelled with its model: multitalker and diarization share the names
        kind = {k: getattr(pb_utils.MetricFamily, k.name) for k in MetricKind}
        self.families = {m.name: pb_utils.MetricFamily(m.name, m.description, kind[m.kind]) for m in metrics}
        self.series: dict[tuple, object] = {}

    def _metric(self, metric: MetricDef, labels: dict[str, str] | None):
        labels = {**(labels or {}), MODEL_LABEL: self.model}
        key = (metric.name, tuple(sorted(labels.items())))
        if key not in self.series:
            extra = {"buckets": list(metric.buckets)} if metric.kind is MetricKind.HISTOGRAM else {}
            self.series[key] = self.families[metric.name].Metric(labels=labels, **extra)
        return self.series[key]

    def set(self, metric: MetricDef, value: float, labels: dict[str, str] | None = None) -> None:
        self._metric(metric, labels).set(float(value))

    def increment(self, metric: MetricDef, value: float = 1.0, labels: dict[str, str] | None = None) -> None:
        self._metric(metric, labels).increment(float(value))

    def observe(self, metric: MetricDef, value: float) -> None:
        self._metric(metric, None).observe(float(value))

    def declare(self, metric: MetricDef) -> None:
        self._metric(metric, None)


def _scalar(request, name: str, default=0):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return default if t is None else t.as_numpy().reshape(-1)[0]


def _optional(request, name: str) -> np.ndarray | None:
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy()


def _audio_request(request) -> AudioRequest:
    params = json.loads(request.parameters() or "{}")
    key, timing = params.get(SESSION_KEY_HEADER), params.get(TIMING_PARAMETER)
    # the audio is copied out of the request's shared memory: it is processed after `execute` has returned
    inputs = OrchestratorInputs.from_lookup(lambda name: _optional(request, name))
    return AudioRequest(corrid=int(_scalar(request, "CORRID")), start=bool(_scalar(request, "START")),
                        end=bool(_scalar(request, "END")), ready=bool(_scalar(request, "READY", 1)),
                        audio=_copy(inputs.audio), audio_int16=_copy(inputs.audio_int16),
                        session_key=key if isinstance(key, str) else None,
                        timing=str(timing) if timing is not None else None,
                        max_speakers=params.get(MAX_SPEAKERS_PARAMETER))


def _copy(x: np.ndarray | None) -> np.ndarray | None:
    return None if x is None else np.array(x, copy=True)


def _json(text: str) -> np.ndarray:
    return np.array([[text]], dtype=np.object_)


def _response(reply: Reply):
    if reply.error:
        code = getattr(pb_utils.TritonError, ERROR_CODE_NAMES[reply.error_code])
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(reply.error, code))
    out = OrchestratorOutputs(segments=_json(reply.segments_json()), interim=_json(reply.interim_json()),
                              transcript=_json(reply.transcript_json()),
                              speaker_activity=reply.activity[None].astype(np.float32),
                              status=_json(reply.status_json()))
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, v) for n, v in out.feeds().items()])


class _Sender:
    """Sends one request's reply as its one, final response (from the engine thread)."""

    def __init__(self, request) -> None:
        self.sender = request.get_response_sender()

    def __call__(self, reply: Reply) -> None:
        self.sender.send(_response(reply), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        single_threaded_blas()
        array_friendly_malloc()
        folder = Path(args["model_repository"]) / args["model_version"]
        events = ServingMetrics(TritonMetricSink(METRICS, args["model_name"]))
        ranks = tensor_ranks(folder)
        self.manager = sequence_manager(folder, json.loads(args["model_config"]), lambda xp: BlsRunner(ranks, xp),
                                        events)
        self.manager.warm_up()  # the first step-cost estimate, before any client (admission by capacity)
        self.manager.start()  # the engine thread and the idle reaper

    def execute(self, requests):
        for request in requests:
            sender = _Sender(request)
            try:
                parsed = _audio_request(request)
            except Exception as exc:  # noqa: BLE001 - a request Triton passed but this glue cannot read
                sender(Reply(error=f"malformed request: {type(exc).__name__}: {exc}",
                             error_code=ErrorCode.INVALID_ARGUMENT))
                continue
            self.manager.submit(parsed, sender)
        return None  # every response goes through its request's sender

    def finalize(self) -> None:
        self.manager.close()

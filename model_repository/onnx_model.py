"""Python-backend model that runs any exported ONNX graph with ONNX Runtime on the CPU.

One implementation for every graph: the repository builder copies this file as `<model>/1/model.py` and puts
the graph next to it (`<model>/1/model.onnx`, or the config parameter `onnx_model`, relative to `1/`).
Input and output names and dtypes come from the model config. Requests of one `execute` whose inputs share
their non-batch shapes run as one batch; a failing batch is retried request by request so that only bad
requests get an error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from mtasr.pipeline.runner import array_friendly_malloc, ort_session


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        array_friendly_malloc()
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        path = version_dir / params.get("onnx_model", "model.onnx")
        if not path.is_file():
            raise pb_utils.TritonModelException(f"{config['name']}: no ONNX graph at {path}")
        # run errors go back to the client as TritonError
        self.session = ort_session(path, int(params.get("intra_op_threads", os.environ.get("MTASR_ORT_THREADS", "0"))))
        self.name = config["name"]
        self.inputs = {t["name"]: pb_utils.triton_string_to_numpy(t["data_type"]) for t in config["input"]}
        self.outputs = {t["name"]: pb_utils.triton_string_to_numpy(t["data_type"]) for t in config["output"]}
        graph_inputs = {i.name for i in self.session.get_inputs()}
        graph_outputs = {o.name for o in self.session.get_outputs()}
        if graph_inputs != set(self.inputs) or not set(self.outputs) <= graph_outputs:
            raise pb_utils.TritonModelException(
                f"{self.name}: config tensors {sorted(self.inputs)} -> {sorted(self.outputs)} do not match "
                f"graph {path}: {sorted(graph_inputs)} -> {sorted(graph_outputs)}")

    def _feeds(self, request) -> dict[str, np.ndarray]:
        feeds = {}
        for name, dtype in self.inputs.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"missing input {name!r}")
            feeds[name] = np.ascontiguousarray(tensor.as_numpy(), dtype=dtype)
        return feeds

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(list(self.outputs), feeds)
        return {name: np.asarray(v, dtype=self.outputs[name]) for name, v in zip(self.outputs, values, strict=True)}

    def _response(self, outputs: dict[str, np.ndarray]):
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, v) for n, v in outputs.items()])

    def _error(self, exc: Exception):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {exc}"))

    def _run_one(self, feeds: dict[str, np.ndarray] | Exception):
        if isinstance(feeds, Exception):
            return self._error(feeds)
        try:
            return self._response(self._run(feeds))
        except Exception as exc:  # ONNX Runtime errors (bad shapes / values) go back to the client
            return self._error(exc)

    def execute(self, requests: list) -> list:
        feeds: list[dict[str, np.ndarray] | Exception] = []
        for request in requests:
            try:
                feeds.append(self._feeds(request))
            except Exception as exc:
                feeds.append(exc)
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, f in enumerate(feeds):
            key = ("error", i) if isinstance(f, Exception) else tuple((n, a.shape[1:]) for n, a in f.items())
            groups.setdefault(key, []).append(i)
        for idx in groups.values():
            if len(idx) == 1:
                responses[idx[0]] = self._run_one(feeds[idx[0]])
                continue
            try:
                batch = self._run({n: np.concatenate([feeds[i][n] for i in idx]) for n in self.inputs})
            except Exception:  # find the bad request(s)
                for i in idx:
                    responses[i] = self._run_one(feeds[i])
                continue
            bounds = np.cumsum([len(next(iter(feeds[i].values()))) for i in idx])[:-1]
            parts = {n: np.split(v, bounds) for n, v in batch.items()}
            for k, i in enumerate(idx):
                responses[i] = self._response({n: parts[n][k] for n in self.outputs})
        return responses

    def finalize(self) -> None:
        self.session = None

"""Triton Python backend glue for the `multitalker` orchestrator: requests -> `AudioRequest`, `Reply` ->
responses, graph calls -> BLS. Everything else lives in `mtasr.pipeline` (no Triton import there)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from mtasr.features import FeatureParams
from mtasr.pipeline import Engine, OrtRunner, PipelineConfig, RoutedRunner, release_free_memory, single_threaded_blas
from mtasr.pipeline.sequences import AudioRequest, Reply, SequenceManager
from mtasr.spec import ModelDims, graph_specs


class BlsRunner:
    """Runs a graph model of the repository through BLS; batch-only tensors travel as [B, 1] (their config)."""

    def __init__(self, ranks: dict[str, int]) -> None:
        self.ranks = ranks  # tensor name -> rank in the spec (with batch)

    def __call__(self, graph: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        inputs = [pb_utils.Tensor(k, v[:, None] if v.ndim == 1 else v) for k, v in feeds.items()]
        response = pb_utils.InferenceRequest(model_name=graph, requested_output_names=outputs,
                                             inputs=inputs).exec()
        if response.has_error():
            raise RuntimeError(f"{graph}: {response.error().message()}")
        result = []
        for name in outputs:
            x = pb_utils.get_output_tensor_by_name(response, name).as_numpy()
            result.append(x.reshape(x.shape[0]) if self.ranks[name] == 1 else x)
        return result


def _scalar(request, name: str, default=0):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return default if t is None else t.as_numpy().reshape(-1)[0]


def _optional(request, name: str) -> np.ndarray | None:
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy()


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        single_threaded_blas()
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"]) / args["model_version"]
        manifest = json.loads((folder / "manifest.json").read_text())
        graphs = {role: params.get(f"{role}_model", role) for role in ("diarizer", "encoder", "decoder_joint")}
        cfg = PipelineConfig.from_manifest(manifest, preset=params.get("preset") or None,
                                           masked_asr=params.get("speaker_mode", "kernel") == "masked",
                                           graphs=graphs)
        ranks = {t.name: len(t.dims) for g in graph_specs(ModelDims(**manifest["dims"])).values()
                 for t in g.inputs + g.outputs}
        local = [role for role in params.get("in_process_models", "").split(",") if role]
        threads = int(params.get("intra_op_threads", "0"))
        # In-process graphs live in 1/graphs/<model>/; the greedy decoder is small and latency-bound: one thread.
        big, small = OrtRunner(folder / "graphs", threads=threads), OrtRunner(folder / "graphs", threads=1)
        runner = RoutedRunner(BlsRunner(ranks), {graphs[r]: small if r == "decoder_joint" else big for r in local})
        engine = Engine(cfg, FeatureParams.load(folder / "features_asr.npz"), runner)
        idle_us = config.get("sequence_batching", {}).get("max_sequence_idle_microseconds", 30_000_000)
        self.manager = SequenceManager(engine, idle_timeout_s=int(idle_us) / 1e6)

    def execute(self, requests):
        batch = [AudioRequest(corrid=int(_scalar(r, "CORRID")), start=bool(_scalar(r, "START")),
                              end=bool(_scalar(r, "END")), audio=_optional(r, "audio"),
                              audio_int16=_optional(r, "audio_int16")) for r in requests]
        live = len(self.manager.live)
        replies = self.manager.handle(batch)
        if any(r.final for r in replies) or len(self.manager.live) < live:  # sequences ended or expired
            release_free_memory()
        return [self._response(reply) for reply in replies]

    @staticmethod
    def _response(reply: Reply):
        if reply.error:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(reply.error))
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("segments", np.array([[reply.segments_json()]], dtype=np.object_)),
            pb_utils.Tensor("transcript", np.array([[reply.transcript_json()]], dtype=np.object_)),
            pb_utils.Tensor("speaker_activity", reply.activity[None].astype(np.float32)),
        ])

    def finalize(self) -> None:
        self.manager.live.clear()

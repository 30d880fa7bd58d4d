"""The orchestrator assembled from a model repository's version folder and Triton model config (as a dict):
parameters, pipeline config, graph runners, session policy. The Triton glue only adds BLS and metrics."""

from __future__ import annotations

from pathlib import Path

from mtasr.features import FeatureParams
from mtasr.manifest import Manifest
from mtasr.pipeline.config import PipelineConfig
from mtasr.pipeline.engine import Engine
from mtasr.pipeline.params import OrchestratorParams
from mtasr.pipeline.runner import GraphRunner, OrtRunner, RoutedRunner
from mtasr.pipeline.sequences import SequenceManager
from mtasr.pipeline.sessions import SessionEvents, SessionPolicy
from mtasr.spec import graph_specs


def tensor_ranks(folder: Path) -> dict[str, int]:
    """Tensor name -> rank (with batch) for every graph of the manifest in `folder`."""
    dims = Manifest.load(folder).dims
    return {t.name: len(t.dims) for g in graph_specs(dims).values() for t in g.inputs + g.outputs}


def sequence_manager(folder: Path, model_config: dict, bls: GraphRunner,
                     events: SessionEvents | None = None) -> SequenceManager:
    """Everything `multitalker` serves with: graphs named in `in_process_models` run in this process (ONNX
    Runtime, from `folder/graphs/<model>/`), the others through `bls`; idle timeout = the sequence batcher's."""
    folder = Path(folder)
    params = OrchestratorParams.from_params({k: v["string_value"]
                                             for k, v in model_config.get("parameters", {}).items()})
    manifest = Manifest.load(folder)
    cfg = PipelineConfig.from_manifest(manifest, preset=params.preset or None, masked_asr=params.masked_asr,
                                       graphs=params.graphs)
    # The greedy decoder is small and latency-bound: one thread.
    big = OrtRunner(folder / "graphs", threads=params.intra_op_threads)
    small = OrtRunner(folder / "graphs", threads=1)
    local = {params.graphs[r]: small if r == "decoder_joint" else big for r in params.in_process_models}
    engine = Engine(cfg, FeatureParams.load(folder / manifest.features.asr), RoutedRunner(bls, local),
                    capacity=params.max_sessions)
    idle_us = int(model_config["sequence_batching"]["max_sequence_idle_microseconds"])
    policy = SessionPolicy(max_sessions=params.max_sessions, idle_timeout_s=idle_us / 1e6)
    return SequenceManager(engine, policy, events=events, timing=params.timing)

"""A streaming model assembled from a model repository's version folder and Triton model config (as a dict):
parameters, pipeline config, graph runners, session policy. The Triton glue only adds BLS and metrics."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

from mtasr.diarization import DiarizationConfig, DiarizationEngine
from mtasr.features import FeatureParams
from mtasr.manifest import Manifest
from mtasr.pipeline.config import PipelineConfig
from mtasr.pipeline.engine import Engine
from mtasr.pipeline.params import DiarizationParams, OrchestratorParams, pipeline_of
from mtasr.pipeline.runner import GraphRunner, OrtRunner, RoutedRunner
from mtasr.pipeline.sequences import SequenceManager
from mtasr.pipeline.sessions import SessionEvents, SessionPolicy
from mtasr.spec import graph_specs


def tensor_ranks(folder: Path) -> dict[str, int]:
    """Tensor name -> rank (with batch) for every graph of the manifest in `folder`."""
    dims = Manifest.load(folder).dims
    return {t.name: len(t.dims) for g in graph_specs(dims).values() for t in g.inputs + g.outputs}


BlsFactory = Callable[[ModuleType], GraphRunner]
"""Makes the runner of the graphs served as Triton models, for the engine's array module."""


def array_module(name: str) -> ModuleType:
    """The engine's array module by its `OrchestratorParams.array_module` name (CuPy: on the GPU)."""
    if name == "numpy":
        return np
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise RuntimeError(f"array_module {name!r} cannot be imported ({exc}); install it (e.g. cupy-cuda12x in the "
                           "serving image) or build the repository for the cpu target") from None


def sequence_manager(folder: Path, model_config: dict, bls: BlsFactory | None,
                     events: SessionEvents | None = None) -> SequenceManager:
    """The streaming model a config describes: `multitalker` or the `diarization` service (its `pipeline`
    parameter), with the admission limits and idle timeout of its parameters. `bls` makes the runner of the graphs
    that are Triton models (None: every graph must run in process)."""
    folder = Path(folder)
    raw = {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}
    if pipeline_of(raw) == DiarizationParams.pipeline:
        return _diarization(folder, DiarizationParams.from_params(raw), events)
    return _multitalker(folder, OrchestratorParams.from_params(raw), bls, events)


def _diarization(folder: Path, params: DiarizationParams, events: SessionEvents | None) -> SequenceManager:
    """The standalone diarizer runs in this process (ONNX Runtime, from `folder/graphs/<graph>/`)."""
    manifest = Manifest.load(folder)
    cfg = DiarizationConfig.from_manifest(manifest, params.diarization_preset)
    runner = OrtRunner(folder / "graphs", threads=params.intra_op_threads)
    runner.session(cfg.graph)  # loaded with the model, not by the first session's first step
    engine = DiarizationEngine(cfg, FeatureParams.load(folder / manifest.features.diarizer), runner,
                               capacity=params.max_sessions)
    return SequenceManager(engine, SessionPolicy.from_params(params), events=events)  # type: ignore[arg-type]


def _multitalker(folder: Path, params: OrchestratorParams, bls: BlsFactory | None,
                 events: SessionEvents | None) -> SequenceManager:
    """Graphs named in `in_process_models` run in this process (ONNX Runtime, from `folder/graphs/<model>/`),
    the others through `bls`."""
    manifest = Manifest.load(folder)
    cfg = PipelineConfig.from_manifest(manifest, preset=params.preset or None, masked_asr=params.masked_asr,
                                       graphs=params.graphs)
    # The greedy decoder is small and latency-bound: one thread.
    big = OrtRunner(folder / "graphs", threads=params.intra_op_threads)
    small = OrtRunner(folder / "graphs", threads=1)
    local = {params.graphs[r]: small if r == "decoder_joint" else big for r in params.in_process_models}
    for graph, runner in local.items():  # loaded with the model (a full-size encoder takes seconds), not by the
        runner.session(graph)  # first session's first step
    xp = array_module(params.array_module)
    remote = bls(xp) if bls is not None else _none
    engine = Engine.from_folder(folder, RoutedRunner(remote, local), cfg, capacity=params.max_sessions, xp=xp)
    return SequenceManager(engine, SessionPolicy.from_params(params), events=events, timing=params.timing)


def _none(graph: str, feeds: dict, outputs: list[str]) -> list:
    raise RuntimeError(f"graph {graph!r} is not in process and this model has no BLS")

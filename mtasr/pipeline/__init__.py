"""The served multitalker pipeline, Triton-free: NeMo's `SpeakerTaggedASR` flow over stateless graphs.

`Engine` owns no per-stream state; a `Stream` does. A `GraphRunner` runs the graphs (onnxruntime in process,
or BLS calls inside Triton).
"""

from mtasr.pipeline.config import PipelineConfig
from mtasr.pipeline.engine import Engine, StepOutput, Stream
from mtasr.pipeline.runner import (
    GraphRunner,
    OrtRunner,
    RoutedRunner,
    array_friendly_malloc,
    release_free_memory,
    single_threaded_blas,
)

__all__ = ["Engine", "GraphRunner", "OrtRunner", "PipelineConfig", "RoutedRunner", "Stream", "StepOutput",
           "array_friendly_malloc", "release_free_memory", "single_threaded_blas"]

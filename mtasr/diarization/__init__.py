"""The tutorial's Step 1 served on its own: streaming Sortformer diarization ("who spoke when") for many sessions.

Audio pieces -> streaming log-mel (`chunker`) -> one batched diarizer step over every session with a complete
chunk and NeMo's asynchronous speaker-cache update, state in a slot pool (`engine`) -> speaker activity and
speaker turns, final once no later frame can change them (`turns`). Triton-free, like `mtasr.pipeline`.
"""

from mtasr.diarization.engine import DiarizationConfig, DiarizationEngine
from mtasr.diarization.presets import DEFAULT_PRESET, PRESETS, DiarizationPreset

__all__ = ["DEFAULT_PRESET", "PRESETS", "DiarizationConfig", "DiarizationEngine", "DiarizationPreset"]

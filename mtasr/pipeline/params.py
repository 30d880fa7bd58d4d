"""The streaming models' Triton config parameters as typed records: written by the repository builder
(`to_params`), read by the model (`from_params`); a name is spelled only here. `pipeline` says which service a
model runs (the same Python backend glue serves both)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from mtasr.diarization.presets import DEFAULT_PRESET as DEFAULT_DIARIZATION_PRESET
from mtasr.diarization.presets import PRESETS as DIARIZATION_PRESETS
from mtasr.manifest import GRAPH_ROLES
from mtasr.spec import TIMINGS

SPEAKER_MODES = ("kernel", "masked")
ARRAY_MODULES = ("numpy", "cupy")  # the engine's array module: host memory, or a GPU's (CuPy)
# An upper bound only: sessions are admitted by measured capacity (`admission_headroom`) below it. 256 lets one
# engine step batch 256 sessions where the hardware carries them.
DEFAULT_MAX_SESSIONS = 256
DEFAULT_IDLE_TIMEOUT_S = 5.0  # live audio arrives every <= 2 s (the largest piece); 5 s is two pieces missed
# A START is admitted while the predicted step over every live session plus the new one takes <= 70 % of the audio
# that step covers: the rest is room for the steps of sessions whose chunks do not fall together, replies and the
# server's own threads.
DEFAULT_ADMISSION_HEADROOM = 0.7
DEFAULT_LAG_LIMIT_S = 10.0  # a session further behind real time than this is ended with an error
# ... and while the replies that complete a step are predicted within this: the client's default piece (160 ms)
DEFAULT_REPLY_BUDGET_S = 0.16


class ModelParams:
    """Base of the typed parameter records (frozen dataclasses): Triton's name -> string map and back."""

    def to_params(self) -> dict[str, str]:
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = ",".join(value) if isinstance(value, tuple) else str(value)
        return out

    @classmethod
    def from_params(cls, params: dict[str, str]):
        """From Triton's `parameters` (name -> string); unknown names are an error, missing ones default."""
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(params) - set(known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} parameters {sorted(unknown)}; known: {sorted(known)}")
        values: dict = {}
        for name, text in params.items():
            default = known[name].default
            if isinstance(default, tuple):
                values[name] = tuple(x for x in text.split(",") if x)
            elif isinstance(default, int):
                values[name] = int(text)
            elif isinstance(default, float):
                values[name] = float(text)
            else:
                values[name] = text
        return cls(**values)


def pipeline_of(params: dict[str, str]) -> str:
    """Which service a model's parameters describe ("multitalker" when not said)."""
    return params.get("pipeline", OrchestratorParams.pipeline)


@dataclass(frozen=True)
class OrchestratorParams(ModelParams):
    """How the `multitalker` model serves: graph model names, preset, speaker mode, threads, admission."""

    pipeline: str = "multitalker"
    diarizer_model: str = "diarizer"
    encoder_model: str = "encoder"
    decoder_joint_model: str = "decoder_joint"
    preset: str = ""  # latency preset, e.g. "70_13"; "" = the manifest's default
    speaker_mode: str = "kernel"
    in_process_models: tuple[str, ...] = ()  # graph roles run in the orchestrator's own ONNX Runtime session
    intra_op_threads: int = 0  # ONNX Runtime threads for the big graphs (0: its default)
    max_sessions: int = DEFAULT_MAX_SESSIONS
    timing: str = TIMINGS[0]  # a session's timestamps unless its START asks otherwise ("audio" | "nemo")
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    admission_headroom: float = DEFAULT_ADMISSION_HEADROOM  # 0: admit by count only
    lag_limit_s: float = DEFAULT_LAG_LIMIT_S
    reply_budget_s: float = DEFAULT_REPLY_BUDGET_S  # 0: no reply-latency rule
    array_module: str = ARRAY_MODULES[0]  # where device-side state and arithmetic live: numpy (host) or cupy (GPU)

    def __post_init__(self) -> None:
        _check_admission(self)
        if self.array_module not in ARRAY_MODULES:
            raise ValueError(f"unknown array module {self.array_module!r}; use one of {ARRAY_MODULES}")
        if self.pipeline != "multitalker":
            raise ValueError(f"OrchestratorParams are the multitalker model's, not {self.pipeline!r}")
        if self.timing not in TIMINGS:
            raise ValueError(f"unknown timing {self.timing!r}; use one of {TIMINGS}")
        if self.speaker_mode not in SPEAKER_MODES:
            raise ValueError(f"unknown speaker mode {self.speaker_mode!r}; use one of {SPEAKER_MODES}")
        if not set(self.in_process_models) <= set(GRAPH_ROLES):
            raise ValueError(f"in-process models must be among {GRAPH_ROLES}, got {self.in_process_models}")

    @property
    def graphs(self) -> dict[str, str]:
        """Graph role -> repository model name."""
        return {role: getattr(self, f"{role}_model") for role in GRAPH_ROLES}

    @property
    def masked_asr(self) -> bool:
        return self.speaker_mode == "masked"


@dataclass(frozen=True)
class DiarizationParams(ModelParams):
    """How the `diarization` model serves: latency preset, threads, admission."""

    pipeline: str = "diarization"
    diarization_preset: str = DEFAULT_DIARIZATION_PRESET
    intra_op_threads: int = 0
    max_sessions: int = DEFAULT_MAX_SESSIONS
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    admission_headroom: float = DEFAULT_ADMISSION_HEADROOM
    lag_limit_s: float = DEFAULT_LAG_LIMIT_S
    reply_budget_s: float = DEFAULT_REPLY_BUDGET_S

    def __post_init__(self) -> None:
        _check_admission(self)
        if self.diarization_preset not in DIARIZATION_PRESETS:
            raise ValueError(f"unknown diarization preset {self.diarization_preset!r}; use one of "
                             f"{', '.join(DIARIZATION_PRESETS)}")


def _check_admission(p: OrchestratorParams | DiarizationParams) -> None:
    """The limits both streaming models share."""
    if p.max_sessions < 1 or p.intra_op_threads < 0:
        raise ValueError(f"max_sessions must be >= 1 and intra_op_threads >= 0 ({p})")
    if (not 0 < p.idle_timeout_s <= 3600 or not 0 <= p.admission_headroom <= 1 or p.lag_limit_s <= 0
            or p.reply_budget_s < 0):
        raise ValueError(f"need 0 < idle_timeout_s <= 3600, 0 <= admission_headroom <= 1 (0: off), lag_limit_s > 0 "
                         f"and reply_budget_s >= 0 ({p})")

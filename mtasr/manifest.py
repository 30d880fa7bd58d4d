"""`manifest.json`, typed: what an exported graphs folder (or a repository's orchestrator version folder) holds.

The exporter builds a `Manifest` and saves it; every reader goes through `Manifest.load`, which checks each key it
needs and names the file and the key when one is missing or malformed. Keys nobody reads are not written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mtasr.spec import ModelDims, preset_name

MANIFEST_FILE = "manifest.json"
GRAPH_ROLES = ("diarizer", "encoder", "decoder_joint")  # the graphs one served pipeline runs, by role (= kind)
PRECISIONS = ("fp32", "int8")  # which graphs a deployment serves on the CPU (`Manifest.graph_names`)
FP32, INT8 = PRECISIONS
INT8_ROLES = ("diarizer", "encoder")  # roles with int8 twins; decoder_joint stays fp32 (see export.int8)
_REQUIRED: Any = object()


class ManifestError(ValueError):
    """A manifest that is missing, not JSON, or lacks (or mistypes) a key its readers need."""


def dims_from_dict(values: Mapping[str, Any], where: str = "") -> ModelDims:
    """The one place a `ModelDims` is built from a mapping: unknown keys are ignored, missing keys fall back to the
    field's default (an error when it has none), every value must be an int. `where` prefixes error messages."""
    prefix = f"{where}: " if where else ""
    known = {f.name for f in fields(ModelDims)}
    kwargs = {}
    for name, value in values.items():
        if name not in known:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise ManifestError(f"{prefix}'dims.{name}' must be an int, got {_short(value)}")
        kwargs[name] = value
    try:
        return ModelDims(**kwargs)
    except TypeError:
        required = {f.name for f in fields(ModelDims) if f.default is MISSING and f.default_factory is MISSING}
        missing = ", ".join(f"'dims.{m}'" for m in sorted(required - set(kwargs)))
        raise ManifestError(f"{prefix}missing key {missing}") from None


class _Reader:
    """Typed reads from the parsed JSON; errors name the file and the dotted key path."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, path: str, problem: str) -> ManifestError:
        return ManifestError(f"{self.where}: {path!r} {problem}")

    def value(self, obj: Mapping[str, Any], path: str, key: str, default: Any = _REQUIRED) -> Any:
        if key not in obj:
            if default is _REQUIRED:
                raise ManifestError(f"{self.where}: missing key {_join(path, key)!r}")
            return default
        return obj[key]

    def obj(self, obj: Mapping[str, Any], path: str, key: str, default: Any = _REQUIRED) -> dict[str, Any]:
        value = self.value(obj, path, key, default)
        if not isinstance(value, dict):
            raise self.fail(_join(path, key), f"must be an object, got {_short(value)}")
        return value

    def integer(self, obj: Mapping[str, Any], path: str, key: str) -> int:
        value = self.value(obj, path, key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(_join(path, key), f"must be an int, got {_short(value)}")
        return value

    def text(self, obj: Mapping[str, Any], path: str, key: str, default: Any = _REQUIRED) -> str:
        value = self.value(obj, path, key, default)
        if not isinstance(value, str):
            raise self.fail(_join(path, key), f"must be a string, got {_short(value)}")
        return value

    def ints(self, obj: Mapping[str, Any], path: str, key: str) -> tuple[int, ...]:
        """A list of ints (a single int reads as a one-element tuple, as NeMo's streaming sizes may be)."""
        value = self.value(obj, path, key)
        items = [value] if isinstance(value, int) else value
        if not isinstance(items, list) or not items or not all(isinstance(v, int) and not isinstance(v, bool)
                                                               for v in items):
            raise self.fail(_join(path, key), f"must be an int or a list of ints, got {_short(value)}")
        return tuple(items)

    def texts(self, obj: Mapping[str, Any], path: str, key: str) -> tuple[str, ...]:
        value = self.value(obj, path, key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(_join(path, key), f"must be a list of strings, got {_short(value)}")
        return tuple(value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class StreamingCfg:
    """The cache-aware encoder's streaming sizes for one preset (NeMo's `streaming_cfg`; sizes are [first, rest])."""

    chunk_size: tuple[int, ...]  # mel frames of new audio per step
    shift_size: tuple[int, ...]
    pre_encode_cache_size: tuple[int, ...]  # mel frames of the previous chunk prepended
    drop_extra_pre_encoded: int
    valid_out_len: int  # encoder frames per full step

    @property
    def step_frames(self) -> int:
        """Mel frames of a full (non-first) step: pre-encode cache + new frames."""
        return self.chunk_size[-1] + self.pre_encode_cache_size[-1]

    @classmethod
    def _read(cls, r: _Reader, d: dict[str, Any], path: str) -> StreamingCfg:
        return cls(r.ints(d, path, "chunk_size"), r.ints(d, path, "shift_size"),
                   r.ints(d, path, "pre_encode_cache_size"), r.integer(d, path, "drop_extra_pre_encoded"),
                   r.integer(d, path, "valid_out_len"))


@dataclass(frozen=True)
class Preset:
    """One exported latency preset: its attention context, encoder graph folder and streaming sizes."""

    att_context_size: tuple[int, int]
    graph: str
    streaming_cfg: StreamingCfg

    @property
    def name(self) -> str:
        return preset_name(self.att_context_size)

    @classmethod
    def _read(cls, r: _Reader, d: dict[str, Any], path: str) -> Preset:
        ctx = r.ints(d, path, "att_context_size")
        if len(ctx) != 2:
            raise r.fail(f"{path}.att_context_size", f"must be [left, right], got {list(ctx)}")
        return cls((ctx[0], ctx[1]), r.text(d, path, "graph"),
                   StreamingCfg._read(r, r.obj(d, path, "streaming_cfg"), f"{path}.streaming_cfg"))


@dataclass(frozen=True)
class DiarizerInfo:
    """The Sortformer graphs: the multitalker flow's step (dropping the ASR's extra pre-encoded frames) and the
    tutorial's standalone step, plus the speaker-cache parameters (`SpeakerCacheParams` fields and NeMo's)."""

    graph: str
    drop_extra_pre_encoded: int
    standalone_graph: str
    spkcache: dict[str, int | float]

    @classmethod
    def _read(cls, r: _Reader, d: dict[str, Any], path: str) -> DiarizerInfo:
        spkcache = r.obj(d, path, "spkcache")
        for key, value in spkcache.items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise r.fail(f"{path}.spkcache.{key}", f"must be a number, got {_short(value)}")
        return cls(r.text(d, path, "graph"), r.integer(d, path, "drop_extra_pre_encoded"),
                   r.text(d, path, "standalone_graph"), dict(spkcache))


@dataclass(frozen=True)
class AsrInfo:
    """The RNNT side: prediction net + joint graph folder and greedy decoding settings."""

    decoder_joint: str
    blank_id: int
    max_symbols: int
    vocabulary: tuple[str, ...]
    subsampling_factor: int

    @classmethod
    def _read(cls, r: _Reader, d: dict[str, Any], path: str) -> AsrInfo:
        return cls(r.text(d, path, "decoder_joint"), r.integer(d, path, "blank_id"), r.integer(d, path, "max_symbols"),
                   r.texts(d, path, "vocabulary"), r.integer(d, path, "subsampling_factor"))


@dataclass(frozen=True)
class FeatureFiles:
    """Parameter files beside the manifest: the feature parameters (`mtasr.features.FeatureParams`) and the RNNT
    decoder's weights (`mtasr.rnnt.RnntWeights`)."""

    asr: str = "features_asr.npz"
    diarizer: str = "features_diarizer.npz"
    rnnt_weights: str = "rnnt_weights.npz"


@dataclass(frozen=True)
class Sources:
    """Where the graphs came from: `.nemo` paths or pretrained names ("" when not recorded)."""

    diarizer: str = ""
    asr: str = ""


@dataclass(frozen=True)
class Serving:
    """How a repository serves (written by the repository builder into the orchestrator's copy)."""

    preset: str
    speaker_mode: str
    timing: str
    precision: str = PRECISIONS[0]

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"serving precision must be one of {PRECISIONS}, got {self.precision!r}")


@dataclass(frozen=True)
class Manifest:
    """Everything an exported graphs folder records; `graphs` maps each graph folder to its kind (a role), `int8`
    each fp32 diarizer/encoder folder to its int8 twin (`export --int8`; empty when none were written)."""

    dims: ModelDims
    presets: dict[str, Preset]
    default_preset: str
    diarizer: DiarizerInfo
    asr: AsrInfo
    graphs: dict[str, str]
    features: FeatureFiles = field(default_factory=FeatureFiles)
    sources: Sources = field(default_factory=Sources)
    serving: Serving | None = None
    int8: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.preset(self.default_preset)
        for name, p in self.presets.items():
            if p.name != name:
                raise ValueError(f"preset {name!r} has att_context_size {list(p.att_context_size)}")
        wanted = [(self.diarizer.graph, "diarizer"), (self.diarizer.standalone_graph, "diarizer"),
                  (self.asr.decoder_joint, "decoder_joint"), *((p.graph, "encoder") for p in self.presets.values())]
        for folder, kind in wanted:
            if self.graphs.get(folder) != kind:
                raise ValueError(f"graphs lists no {kind} graph {folder!r} (graphs: {self.graphs})")
        for folder, twin in self.int8.items():
            kind = self.graphs.get(folder)
            if kind not in INT8_ROLES or twin == folder or self.graphs.get(twin) != kind:
                raise ValueError(f"int8 twin {twin!r} of {folder!r} must be another graph of the same kind, one of "
                                 f"{INT8_ROLES} (graphs: {self.graphs})")

    # ------------------------------------------------------------------------------------------------ accessors
    def preset(self, name: str | None = None) -> Preset:
        """The exported preset `name` (default: `default_preset`); ValueError naming the exported ones."""
        name = name or self.default_preset
        if name not in self.presets:
            raise ValueError(f"preset {name} was not exported; the graphs have {sorted(self.presets)}")
        return self.presets[name]

    @property
    def served_preset(self) -> str:
        """The preset a repository serves, or the export's default outside a repository."""
        return self.serving.preset if self.serving else self.default_preset

    def graph_names(self, preset: str | None = None, precision: str = PRECISIONS[0]) -> dict[str, str]:
        """Role (`GRAPH_ROLES`) -> graph folder for one preset (default: `default_preset`); with precision `int8`
        the diarizer and encoder are their int8 twins (ValueError when they were not exported)."""
        names = {"diarizer": self.diarizer.graph, "encoder": self.preset(preset).graph,
                 "decoder_joint": self.asr.decoder_joint}
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
        if precision == INT8:
            missing = [names[r] for r in INT8_ROLES if names[r] not in self.int8]
            if missing:
                raise ValueError(f"no int8 copy of {', '.join(missing)} (export with --int8)")
            names.update({r: self.int8[names[r]] for r in INT8_ROLES})
        return names

    # --------------------------------------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """The JSON object (tuples as lists; no `serving` unless set, no `int8` unless int8 graphs were written)."""
        out = asdict(self)
        if self.serving is None:
            del out["serving"]
        if not self.int8:
            del out["int8"]
        return json.loads(json.dumps(out))

    def save(self, folder: Path | str) -> Path:
        path = Path(folder) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST_FILE) -> Manifest:
        """Check and type a parsed manifest; `ManifestError` names `where` and the key. Unknown keys are ignored."""
        r = _Reader(where)
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: must hold a JSON object, got {_short(data)}")
        raw_presets = r.obj(data, "", "presets")
        presets = {name: Preset._read(r, r.obj(raw_presets, "presets", name), f"presets.{name}")
                   for name in raw_presets}
        graphs = r.obj(data, "", "graphs")
        for folder, kind in graphs.items():
            if kind not in GRAPH_ROLES:
                raise r.fail(f"graphs.{folder}", f"must be one of {GRAPH_ROLES}, got {_short(kind)}")
        features = r.obj(data, "", "features", {})
        sources = r.obj(data, "", "sources", {})
        serving = r.obj(data, "", "serving") if data.get("serving") is not None else None
        int8 = r.obj(data, "", "int8", {})
        for folder in int8:
            r.text(int8, "int8", folder)
        try:
            return cls(
                dims=dims_from_dict(r.obj(data, "", "dims"), where),
                presets=presets,
                default_preset=r.text(data, "", "default_preset"),
                diarizer=DiarizerInfo._read(r, r.obj(data, "", "diarizer"), "diarizer"),
                asr=AsrInfo._read(r, r.obj(data, "", "asr"), "asr"),
                graphs=dict(graphs),
                features=FeatureFiles(**{f.name: r.text(features, "features", f.name, f.default)
                                         for f in fields(FeatureFiles)}),
                sources=Sources(**{f.name: r.text(sources, "sources", f.name, f.default) for f in fields(Sources)}),
                serving=None if serving is None else Serving(
                    *(r.text(serving, "serving", f.name, _REQUIRED if f.default is MISSING else f.default)
                      for f in fields(Serving))),
                int8=dict(int8),
            )
        except ManifestError:
            raise
        except ValueError as exc:  # the cross-checks of __post_init__
            raise ManifestError(f"{where}: {exc}") from None

    @classmethod
    def load(cls, folder: Path | str) -> Manifest:
        """Read and check `<folder>/manifest.json`; `ManifestError` (a ValueError) when it is absent or bad."""
        path = Path(folder) / MANIFEST_FILE
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ManifestError(f"{path}: no such file (not an exported graphs folder)") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, str(path))

"""The one place where tensor names, dtypes and shapes are written.

Exporters, the config generator, the orchestrator, the client and perf_analyzer input all read this
module. Shapes use `-1` for a dynamic dimension; symbolic names for dynamic axes are given in
`TensorSpec.dims` (ints are fixed sizes, strings are named dynamic axes).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from types import SimpleNamespace
from typing import TypeVar

import numpy as np

SAMPLE_RATE = 16000
N_MELS = 128
NUM_SPEAKERS = 4  # the public diarizer's outputs; a model's own count is ModelDims.n_spk
FRAME_SEC = 0.08  # one encoder / diarizer output frame (8 x 10 ms)
SUBSAMPLING = 8

# Latency presets of the multitalker encoder: [left, right] attention context in 80 ms frames.
ATT_CONTEXT_SIZES: tuple[tuple[int, int], ...] = ((70, 13), (70, 6), (70, 1), (70, 0))
DEFAULT_ATT_CONTEXT = (70, 13)
PRESETS: dict[str, tuple[int, int]] = {f"{lc}_{rc}": (lc, rc) for lc, rc in ATT_CONTEXT_SIZES}


def preset_name(att_context: tuple[int, int] | list[int]) -> str:
    """`[70, 13]` -> `"70_13"`; raises ValueError for an unknown preset."""
    name = f"{att_context[0]}_{att_context[1]}"
    if name not in PRESETS:
        raise ValueError(f"unknown latency preset {list(att_context)}; known: {[list(v) for v in PRESETS.values()]}")
    return name


def parse_preset(text: str) -> tuple[int, int]:
    """`"70,13"`, `"70_13"` or `"[70, 13]"` -> `(70, 13)`; ValueError if unknown."""
    parts = [p for p in text.strip("[] ").replace("_", ",").split(",") if p.strip()]
    try:
        ctx = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        raise ValueError(f"bad latency preset {text!r}; use e.g. 70,13") from None
    preset_name(ctx)
    return ctx


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, numpy dtype and dims (int = fixed, str = dynamic axis name)."""

    name: str
    dtype: type
    dims: tuple[int | str, ...]
    doc: str = ""

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape with -1 for dynamic axes (Triton / perf_analyzer convention)."""
        return tuple(d if isinstance(d, int) else -1 for d in self.dims)

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.dims) if isinstance(d, str)}

    def resolve(self, **sizes: int) -> tuple[int, ...]:
        """Concrete shape with named dynamic axes filled from `sizes`."""
        return tuple(d if isinstance(d, int) else sizes[d] for d in self.dims)


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    doc: str = ""

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def tensor(self, name: str) -> TensorSpec:
        for t in self.inputs + self.outputs:
            if t.name == name:
                return t
        raise KeyError(f"{self.name} has no tensor {name!r}")


@dataclass(frozen=True)
class ModelDims:
    """Sizes read from a model that fix the non-batch dims of its graphs."""

    diar_emb_dim: int  # pre-encode embedding dim of the diarizer (fc_d_model)
    spkcache_len: int
    fifo_len: int
    enc_layers: int
    enc_d_model: int
    enc_last_channel: int  # cache_last_channel time length (left attention context)
    enc_last_time: int  # cache_last_time length (conv kernel - 1)
    pred_layers: int
    pred_hidden: int
    vocab_size: int  # without blank; blank id == vocab_size
    n_spk: int = NUM_SPEAKERS  # diarizer outputs: 4 or 8 speakers

    @property
    def n_logits(self) -> int:
        """Joint outputs: the vocabulary and blank."""
        return self.vocab_size + 1

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


F32, I64, I16 = np.float32, np.int64, np.int16
BYTES = np.object_  # Triton TYPE_STRING (UTF-8 JSON here)
BATCH = "batch"


@dataclass(frozen=True)
class ModelDim:
    """A fixed dim whose size is a `ModelDims` field, filled in when a graph spec is made for a model."""

    field: str


def tensor(dtype: type, *dims: int | str | ModelDim, doc: str = "", optional: bool = False):
    """A `TensorRecord` field: the field's name is the tensor's name; dtype, dims and doc ride in its metadata."""
    meta = {"tensor": (dtype, dims, doc)}
    return field(default=None, metadata=meta) if optional else field(metadata=meta)


_R = TypeVar("_R", bound="TensorRecord")


class TensorRecord:
    """Base of the typed records that carry a graph's inputs or outputs (dataclasses declared with `tensor`).

    The field names *are* the tensor names, so code builds feeds and reads results by attribute, and the
    `GraphSpec` of a graph is generated from its two records.
    """

    @classmethod
    def specs(cls, dims: ModelDims | None = None) -> tuple[TensorSpec, ...]:
        out = []
        for f in fields(cls):  # type: ignore[arg-type]
            dtype, shape, doc = f.metadata["tensor"]
            if any(isinstance(d, ModelDim) for d in shape) and dims is None:
                raise ValueError(f"{cls.__name__}.{f.name} needs the model's dims")
            out.append(TensorSpec(f.name, dtype, tuple(getattr(dims, d.field) if isinstance(d, ModelDim) else d
                                                       for d in shape), doc))
        return tuple(out)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]  # type: ignore[arg-type]

    def feeds(self) -> dict[str, np.ndarray]:
        """name -> array for the tensors that are set (optional ones left as None are absent)."""
        return {n: v for n in self.names() if (v := getattr(self, n)) is not None}

    @classmethod
    def from_arrays(cls: type[_R], arrays) -> _R:
        """The record of a graph's outputs, given in `names()` order."""
        return cls(*arrays)

    @classmethod
    def from_lookup(cls: type[_R], get) -> _R:
        """The record filled by `get(name)` for each tensor (e.g. a Triton result's `as_numpy`)."""
        return cls(*(get(n) for n in cls.names()))

    @classmethod
    def tensor_names(cls) -> SimpleNamespace:
        """`Record.tensor_names().audio == "audio"`: a tensor's name where code needs the string itself."""
        return SimpleNamespace(**{n: n for n in cls.names()})


@dataclass
class DiarizerInputs(TensorRecord):
    """One Sortformer streaming step: this step's features, the speaker cache and the FIFO."""

    chunk: np.ndarray = tensor(F32, BATCH, "chunk_frames", N_MELS, doc="log-mel frames of this step, time major")
    chunk_lengths: np.ndarray = tensor(I64, BATCH, doc="valid mel frames per row")
    spkcache: np.ndarray = tensor(F32, BATCH, "spkcache_frames", ModelDim("diar_emb_dim"),
                                  doc="speaker cache embeddings")
    spkcache_lengths: np.ndarray = tensor(I64, BATCH, doc="valid speaker-cache frames")
    fifo: np.ndarray = tensor(F32, BATCH, "fifo_frames", ModelDim("diar_emb_dim"), doc="FIFO embeddings")
    fifo_lengths: np.ndarray = tensor(I64, BATCH, doc="valid FIFO frames")


@dataclass
class DiarizerOutputs(TensorRecord):
    spkcache_fifo_chunk_preds: np.ndarray = tensor(F32, BATCH, "out_frames", ModelDim("n_spk"),
                                                   doc="speaker sigmoids")
    chunk_pre_encode_embs: np.ndarray = tensor(F32, BATCH, "chunk_out_frames", ModelDim("diar_emb_dim"),
                                               doc="chunk embs")
    chunk_pre_encode_lengths: np.ndarray = tensor(I64, BATCH, doc="valid chunk embedding frames")


_CHANNEL = (BATCH, ModelDim("enc_layers"), ModelDim("enc_last_channel"), ModelDim("enc_d_model"))
_TIME = (BATCH, ModelDim("enc_layers"), ModelDim("enc_d_model"), ModelDim("enc_last_time"))


@dataclass
class EncoderInputs(TensorRecord):
    """One cache-aware multitalker FastConformer step, one row per speaker instance."""

    audio_signal: np.ndarray = tensor(F32, BATCH, N_MELS, "chunk_frames", doc="log-mel incl. pre-encode cache")
    length: np.ndarray = tensor(I64, BATCH, doc="valid mel frames per row")
    cache_last_channel: np.ndarray = tensor(F32, *_CHANNEL)
    cache_last_time: np.ndarray = tensor(F32, *_TIME)
    cache_last_channel_len: np.ndarray = tensor(I64, BATCH)
    spk_targets: np.ndarray = tensor(F32, BATCH, "enc_frames", doc="target speaker activity per output frame")
    bg_spk_targets: np.ndarray = tensor(F32, BATCH, "enc_frames", doc="other speakers' activity per output frame")


@dataclass
class EncoderOutputs(TensorRecord):
    encoded: np.ndarray = tensor(F32, BATCH, "enc_out_frames", ModelDim("enc_d_model"),
                                 doc="encoder output, time major")
    encoded_len: np.ndarray = tensor(I64, BATCH)
    cache_last_channel_next: np.ndarray = tensor(F32, *_CHANNEL)
    cache_last_time_next: np.ndarray = tensor(F32, *_TIME)
    cache_last_channel_len_next: np.ndarray = tensor(I64, BATCH)


_LSTM = (BATCH, ModelDim("pred_layers"), ModelDim("pred_hidden"))


@dataclass
class DecoderJointInputs(TensorRecord):
    """RNNT prediction network + joint for one (frame, last token) pair per row, LSTM state in and out."""

    encoder_frame: np.ndarray = tensor(F32, BATCH, ModelDim("enc_d_model"), doc="one encoder output frame")
    targets: np.ndarray = tensor(I64, BATCH, doc="last emitted token (blank at start)")
    h_in: np.ndarray = tensor(F32, *_LSTM, doc="LSTM hidden state")
    c_in: np.ndarray = tensor(F32, *_LSTM, doc="LSTM cell state")


@dataclass
class DecoderJointOutputs(TensorRecord):
    logits: np.ndarray = tensor(F32, BATCH, ModelDim("n_logits"), doc="joint logits; blank is the last index")
    h_out: np.ndarray = tensor(F32, *_LSTM, doc="state after consuming `targets`")
    c_out: np.ndarray = tensor(F32, *_LSTM)


NEXT_SUFFIX = "_next"  # a state input `x` comes back from the graph as output `x_next`


# Graph outputs the orchestrator reads on the host (lengths, speaker probabilities); every other output only feeds
# the device-side state and arithmetic, and stays in device memory where the graphs run on a GPU.
_DO, _EO = DiarizerOutputs.tensor_names(), EncoderOutputs.tensor_names()
HOST_OUTPUTS = frozenset({_DO.spkcache_fifo_chunk_preds, _DO.chunk_pre_encode_lengths, _EO.encoded_len,
                          _EO.cache_last_channel_len_next})


def carried_state(inputs: type[TensorRecord], outputs: type[TensorRecord]) -> list[str]:
    """Names of a graph's inputs that are streaming state: those with a `<name>_next` output."""
    out_names = set(outputs.names())
    return [name for name in inputs.names() if name + NEXT_SUFFIX in out_names]


def _graph(name: str, inputs: type[TensorRecord], outputs: type[TensorRecord], d: ModelDims | None,
           doc: str = "") -> GraphSpec:
    return GraphSpec(name, inputs.specs(d), outputs.specs(d), doc)


def diarizer_spec(d: ModelDims) -> GraphSpec:
    """One Sortformer streaming step (pre-encode, concat with cache + FIFO, encoders, sigmoid head)."""
    return _graph("diarizer", DiarizerInputs, DiarizerOutputs, d,
                  "Speaker-cache update (FIFO roll, compression, silence mean) runs in numpy: mtasr.spkcache.")


def encoder_spec(d: ModelDims) -> GraphSpec:
    """One cache-aware multitalker FastConformer step with speaker targets as inputs; batch first."""
    return _graph("encoder", EncoderInputs, EncoderOutputs, d,
                  "Masked mode (NeMo masked_asr): spk_targets = 1, bg_spk_targets = 0 and features masked in numpy.")


def decoder_joint_spec(d: ModelDims) -> GraphSpec:
    """RNNT prediction network + joint for one (frame, last token) pair per row, LSTM state in/out."""
    return _graph("decoder_joint", DecoderJointInputs, DecoderJointOutputs, d)


ORCHESTRATOR = "multitalker"
DIARIZATION = "diarization"  # the streaming diarization service
MAX_CHUNK_SECONDS = 2.0  # largest audio piece one request may carry
# gRPC headers of the serving protocol (gRPC metadata keys are lower case).
SESSION_KEY_HEADER = "mtasr-session-key"  # per-session secret; Triton forwards it to the orchestrator
API_KEY_HEADER = "mtasr-api-key"  # optional key on the inference protocol (Triton's restricted protocols)
ADMIN_KEY_HEADER = "mtasr-admin-key"  # key on the admin protocols (statistics, model config, shared memory...)
# Request parameter of a START choosing the session's timestamps: "audio" (word times in seconds of the session's
# audio, utterances, interim/final replies) or "nemo" (NeMo SpeakerTaggedASR's arithmetic, for parity).
TIMING_PARAMETER = "mtasr_timing"
TIMINGS = ("audio", "nemo")
# Request parameter of a START capping the speaker instances the session may run (an int >= 1; absent or 0: no cap
# beyond the diarizer's outputs, which is NeMo's behaviour). Guards long two-person calls against phantom speakers.
MAX_SPEAKERS_PARAMETER = "mtasr_max_speakers"


def grpc_restricted_header(key: str) -> str:
    """The gRPC header a client sends to pass Triton's `--grpc-restricted-protocol=...:<key>=<value>`."""
    return f"triton-grpc-protocol-{key}"


@dataclass
class OrchestratorInputs(TensorRecord):
    """One audio piece of a stream (Triton sequence batching): exactly one of `audio` / `audio_int16`."""

    audio: np.ndarray | None = tensor(F32, BATCH, "samples", doc="16 kHz mono float32 samples", optional=True)
    audio_int16: np.ndarray | None = tensor(I16, BATCH, "samples", doc="16 kHz mono int16 samples", optional=True)


@dataclass
class OrchestratorOutputs(TensorRecord):
    """One reply; the JSON outputs are UTF-8 strings in a (batch, 1) bytes tensor."""

    segments: np.ndarray = tensor(BYTES, BATCH, 1, doc="JSON SegLST segments that became final with this request, "
                                  "each sent once (timing nemo: segments changed since the last response)")
    interim: np.ndarray = tensor(BYTES, BATCH, 1, doc="JSON list: each speaker's current unstable utterance "
                                 "(timing nemo: always [])")
    transcript: np.ndarray = tensor(BYTES, BATCH, 1, doc="JSON SegLST of the whole session at END, else [] "
                                    "(timing nemo: in every response)")
    speaker_activity: np.ndarray = tensor(F32, BATCH, "frames", "speakers",
                                          doc="diarizer probabilities of the 80 ms frames decided by this request")
    status: np.ndarray = tensor(BYTES, BATCH, 1, doc="JSON object: `lag_s`, how far the session is behind real "
                                "time at this reply, and `audio_s`, the session's audio received so far")

    @classmethod
    def json_names(cls) -> list[str]:
        return [t.name for t in cls.specs() if t.dtype is BYTES]


def diarization_spec() -> GraphSpec:
    """The streaming diarization service (the tutorial's Step 1): the orchestrator's inputs and outputs, where the
    segments are speaker turns with no words and `speaker_activity` is the diarizer's frames."""
    return _graph(DIARIZATION, OrchestratorInputs, OrchestratorOutputs, None)


def orchestrator_spec() -> GraphSpec:
    """The streaming model clients talk to (Triton sequence batching; one request per audio piece).

    Sequence controls (START, END, READY, CORRID) are the sequence batcher's, not listed here. The speaker
    axis of `speaker_activity` is the diarizer's output count (4 or 8).
    """
    return _graph(ORCHESTRATOR, OrchestratorInputs, OrchestratorOutputs, None)


def graph_specs(d: ModelDims) -> dict[str, GraphSpec]:
    return {g.name: g for g in (diarizer_spec(d), encoder_spec(d), decoder_joint_spec(d))}


def tensor_table_markdown(d: ModelDims) -> str:
    """The tensor table of `TENSOR_TABLE_DOC`, generated from the specs."""
    rows = ["| model | io | tensor | dtype | dims |", "|---|---|---|---|---|"]
    for g in [orchestrator_spec(), diarization_spec(), *graph_specs(d).values()]:
        for io, tensors in (("in", g.inputs), ("out", g.outputs)):
            for t in tensors:
                dims = ", ".join(str(x) for x in t.dims)
                dtype = "bytes" if t.dtype is BYTES else np.dtype(t.dtype).name
                rows.append(f"| {g.name} | {io} | `{t.name}` | {dtype} | ({dims}) |")
    return "\n".join(rows)


# Dims of the public checkpoints (nvidia/diar_streaming_sortformer_4spk-v2 and
# nvidia/multitalker-parakeet-streaming-0.6b-v1), used for documentation; exported graphs take
# their dims from the models themselves (export.exporter.model_dims).
PUBLIC_CHECKPOINT_DIMS = ModelDims(
    diar_emb_dim=512, spkcache_len=188, fifo_len=188, enc_layers=24, enc_d_model=1024, enc_last_channel=70,
    enc_last_time=8, pred_layers=2, pred_hidden=640, vocab_size=1024,
)
TENSOR_TABLE_DOC = "docs/exporting.md"  # where the table lives (relative to the project root), between:
TENSOR_TABLE_BEGIN = "<!-- tensor-table:begin (generated by `python -m mtasr.spec`) -->"
TENSOR_TABLE_END = "<!-- tensor-table:end -->"


if __name__ == "__main__":
    print(tensor_table_markdown(PUBLIC_CHECKPOINT_DIMS))

"""The one place where tensor names, dtypes and shapes are written.

Exporters, the config generator, the orchestrator, the client and perf_analyzer input all read this
module. Shapes use `-1` for a dynamic dimension; symbolic names for dynamic axes are given in
`TensorSpec.dims` (ints are fixed sizes, strings are named dynamic axes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
N_MELS = 128
NUM_SPEAKERS = 4
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

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


F32, I64, I32, I16 = np.float32, np.int64, np.int32, np.int16
BYTES = np.object_  # Triton TYPE_STRING (UTF-8 JSON here)


def diarizer_spec(d: ModelDims) -> GraphSpec:
    """One Sortformer streaming step (pre-encode, concat with cache + FIFO, encoders, sigmoid head)."""
    return GraphSpec(
        "diarizer",
        inputs=(
            TensorSpec("chunk", F32, ("batch", "chunk_frames", N_MELS), "log-mel frames of this step, time major"),
            TensorSpec("chunk_lengths", I64, ("batch",), "valid mel frames per row"),
            TensorSpec("spkcache", F32, ("batch", "spkcache_frames", d.diar_emb_dim), "speaker cache embeddings"),
            TensorSpec("spkcache_lengths", I64, ("batch",), "valid speaker-cache frames"),
            TensorSpec("fifo", F32, ("batch", "fifo_frames", d.diar_emb_dim), "FIFO embeddings"),
            TensorSpec("fifo_lengths", I64, ("batch",), "valid FIFO frames"),
        ),
        outputs=(
            TensorSpec("spkcache_fifo_chunk_preds", F32, ("batch", "out_frames", NUM_SPEAKERS), "speaker sigmoids"),
            TensorSpec("chunk_pre_encode_embs", F32, ("batch", "chunk_out_frames", d.diar_emb_dim), "chunk embs"),
            TensorSpec("chunk_pre_encode_lengths", I64, ("batch",), "valid chunk embedding frames"),
        ),
        doc="Speaker-cache update (FIFO roll, compression, silence mean) runs in numpy: mtasr.spkcache.",
    )


def encoder_spec(d: ModelDims) -> GraphSpec:
    """One cache-aware multitalker FastConformer step with speaker targets as inputs; batch first."""
    return GraphSpec(
        "encoder",
        inputs=(
            TensorSpec("audio_signal", F32, ("batch", N_MELS, "chunk_frames"), "log-mel incl. pre-encode cache"),
            TensorSpec("length", I64, ("batch",), "valid mel frames per row"),
            TensorSpec("cache_last_channel", F32, ("batch", d.enc_layers, d.enc_last_channel, d.enc_d_model)),
            TensorSpec("cache_last_time", F32, ("batch", d.enc_layers, d.enc_d_model, d.enc_last_time)),
            TensorSpec("cache_last_channel_len", I64, ("batch",)),
            TensorSpec("spk_targets", F32, ("batch", "enc_frames"), "target speaker activity per output frame"),
            TensorSpec("bg_spk_targets", F32, ("batch", "enc_frames"), "other speakers' activity per output frame"),
        ),
        outputs=(
            TensorSpec("encoded", F32, ("batch", "enc_out_frames", d.enc_d_model), "encoder output, time major"),
            TensorSpec("encoded_len", I64, ("batch",)),
            TensorSpec("cache_last_channel_next", F32, ("batch", d.enc_layers, d.enc_last_channel, d.enc_d_model)),
            TensorSpec("cache_last_time_next", F32, ("batch", d.enc_layers, d.enc_d_model, d.enc_last_time)),
            TensorSpec("cache_last_channel_len_next", I64, ("batch",)),
        ),
        doc="Masked mode (NeMo masked_asr): spk_targets = 1, bg_spk_targets = 0 and features masked in numpy.",
    )


def decoder_joint_spec(d: ModelDims) -> GraphSpec:
    """RNNT prediction network + joint for one (frame, last token) pair per row, LSTM state in/out."""
    return GraphSpec(
        "decoder_joint",
        inputs=(
            TensorSpec("encoder_frame", F32, ("batch", d.enc_d_model), "one encoder output frame"),
            TensorSpec("targets", I64, ("batch",), "last emitted token (blank at start)"),
            TensorSpec("h_in", F32, ("batch", d.pred_layers, d.pred_hidden), "LSTM hidden state"),
            TensorSpec("c_in", F32, ("batch", d.pred_layers, d.pred_hidden), "LSTM cell state"),
        ),
        outputs=(
            TensorSpec("logits", F32, ("batch", d.vocab_size + 1), "joint logits; blank is the last index"),
            TensorSpec("h_out", F32, ("batch", d.pred_layers, d.pred_hidden), "state after consuming `targets`"),
            TensorSpec("c_out", F32, ("batch", d.pred_layers, d.pred_hidden)),
        ),
    )


ORCHESTRATOR = "multitalker"
MAX_CHUNK_SECONDS = 2.0  # largest audio piece one request may carry
MIN_CHUNK_SECONDS = 0.0  # an empty piece is an error unless it closes the sequence (END)
# gRPC headers of the serving protocol (gRPC metadata keys are lower case).
SESSION_KEY_HEADER = "mtasr-session-key"  # per-session secret; Triton forwards it to the orchestrator
API_KEY_HEADER = "mtasr-api-key"  # optional key on the inference protocol (Triton's restricted protocols)
ADMIN_KEY_HEADER = "mtasr-admin-key"  # key on the admin protocols (statistics, model config, shared memory...)
# Request parameter of a START choosing the session's timestamps: "audio" (word times in seconds of the session's
# audio, utterances, interim/final replies) or "nemo" (NeMo SpeakerTaggedASR's arithmetic, for parity).
TIMING_PARAMETER = "mtasr_timing"
TIMINGS = ("audio", "nemo")


def grpc_restricted_header(key: str) -> str:
    """The gRPC header a client sends to pass Triton's `--grpc-restricted-protocol=...:<key>=<value>`."""
    return f"triton-grpc-protocol-{key}"


def orchestrator_spec() -> GraphSpec:
    """The streaming model clients talk to (Triton sequence batching; one request per audio piece).

    Exactly one of `audio` / `audio_int16` per request: 16 kHz mono samples (float32 in [-1, 1] or int16).
    Sequence controls (START, END, READY, CORRID) are the sequence batcher's, not listed here.
    """
    return GraphSpec(
        ORCHESTRATOR,
        inputs=(
            TensorSpec("audio", F32, ("batch", "samples"), "16 kHz mono float32 samples"),
            TensorSpec("audio_int16", I16, ("batch", "samples"), "16 kHz mono int16 samples"),
        ),
        outputs=(
            TensorSpec("segments", BYTES, ("batch", 1),
                       "JSON SegLST segments that became final with this request, each sent once (timing nemo: "
                       "segments changed since the last response)"),
            TensorSpec("interim", BYTES, ("batch", 1),
                       "JSON list: each speaker's current unstable utterance (timing nemo: always [])"),
            TensorSpec("transcript", BYTES, ("batch", 1),
                       "JSON SegLST of the whole session at END, else [] (timing nemo: in every response)"),
            TensorSpec("speaker_activity", F32, ("batch", "frames", NUM_SPEAKERS),
                       "diarizer probabilities of the 80 ms frames decided by this request"),
        ),
    )


def graph_specs(d: ModelDims) -> dict[str, GraphSpec]:
    return {g.name: g for g in (diarizer_spec(d), encoder_spec(d), decoder_joint_spec(d))}


def tensor_table_markdown(d: ModelDims) -> str:
    """The README's tensor table, generated from the specs."""
    rows = ["| model | io | tensor | dtype | dims |", "|---|---|---|---|---|"]
    for g in [orchestrator_spec(), *graph_specs(d).values()]:
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
README_TABLE_BEGIN = "<!-- tensor-table:begin (generated by `python -m mtasr.spec`) -->"
README_TABLE_END = "<!-- tensor-table:end -->"


if __name__ == "__main__":
    print(tensor_table_markdown(PUBLIC_CHECKPOINT_DIMS))

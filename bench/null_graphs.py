"""Graphs that cost nothing, at the public checkpoints' shapes, for measuring the host side alone (`bench.capacity`).

- `full_size_manifest()`: the manifest of `nvidia/diar_streaming_sortformer_4spk-v2` + `multitalker-parakeet-
  streaming-0.6b-v1` (full dims, 4 speakers, preset [70, 13], the tutorial's speaker-cache settings), no files.
- `NullRunner`: diarizer and encoder calls answered from preallocated outputs. The diarizer's speaker
  probabilities follow a conversation pattern per row (two speakers taking turns of ~3 s with short overlaps and
  pauses, so cache gating keeps two speakers active and the speaker cache fills, compresses and finds silence);
  its chunk embeddings are fixed random rows. Encoder outputs that only the device reads are `VirtualArray`s.
- `NullRnnt`: the decoder's products answered by a pattern: about 3 labels per second per row, in utterances of
  4.8 s with 1.2 s pauses.
- `virtual`: an array module whose arrays have shapes and byte counts but no storage: the device-resident state
  (encoder caches, LSTM state) of a GPU deployment, which host code only indexes and hands on.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from mtasr.features import FeatureParams
from mtasr.manifest import AsrInfo, DiarizerInfo, Manifest, Preset, StreamingCfg
from mtasr.spec import PUBLIC_CHECKPOINT_DIMS, DiarizerOutputs, EncoderOutputs, ModelDims

F32, I64 = np.float32, np.int64
PRESET = (70, 13)
# The tutorial's streaming diarizer setting (export.exporter.TUTORIAL_DIAR_STREAMING) and NeMo's cache defaults.
SPKCACHE = {"n_spk": 4, "spkcache_len": 188, "fifo_len": 188, "chunk_len": 6, "chunk_left_context": 1,
            "chunk_right_context": 7, "spkcache_update_period": 144, "spkcache_sil_frames_per_spk": 3,
            "pred_score_threshold": 0.25, "max_index": 99999, "scores_boost_latest": 0.05, "sil_threshold": 0.2,
            "strong_boost_rate": 0.75, "weak_boost_rate": 1.5, "min_pos_scores_rate": 0.5}
# [70, 13]: 112 new mel frames per step after 9 cached ones, 14 encoder frames (1.12 s), 2 pre-encoded dropped.
STREAMING = StreamingCfg((105, 112), (105, 112), (0, 9), 2, 14)
# Labels: one every 3 frames for 60 frames, then a 15-frame (1.2 s) pause: 20 labels per 6 s = 3.3 per second.
LABEL_EVERY, TALK_FRAMES, CYCLE_FRAMES = 3, 60, 75


def vocabulary(size: int) -> tuple[str, ...]:
    """SentencePiece-like pieces: even ids start a word, odd ids continue one."""
    return tuple(f"\u2581w{i}" if i % 2 == 0 else f"p{i}" for i in range(size))


def full_size_manifest(dims: ModelDims = PUBLIC_CHECKPOINT_DIMS) -> Manifest:
    name = f"encoder_{PRESET[0]}_{PRESET[1]}"
    return Manifest(
        dims=dims, presets={f"{PRESET[0]}_{PRESET[1]}": Preset(PRESET, name, STREAMING)},
        default_preset=f"{PRESET[0]}_{PRESET[1]}",
        diarizer=DiarizerInfo(graph="diarizer", drop_extra_pre_encoded=2, standalone_graph="diarizer_standalone",
                              spkcache=SPKCACHE),
        asr=AsrInfo(decoder_joint="decoder_joint", blank_id=dims.vocab_size, max_symbols=10,
                    vocabulary=vocabulary(dims.vocab_size), subsampling_factor=8),
        graphs={"diarizer": "diarizer", "diarizer_standalone": "diarizer", name: "encoder",
                "decoder_joint": "decoder_joint"})


def full_size_features(seed: int = 0) -> FeatureParams:
    """128-band log-mel parameters of the shape the public checkpoints use (values need not be NeMo's here)."""
    rng = np.random.default_rng(seed)
    return FeatureParams(sample_rate=16000, n_fft=512, win_length=400, hop_length=160, preemph=0.97,
                         log_guard_type="add", log_guard=2.0**-24, mag_power=2.0, normalize="NA", pad_to=0,
                         pad_value=0.0, window=np.hanning(400).astype(F32),
                         filterbank=np.abs(rng.standard_normal((128, 257))).astype(F32) * 0.01)


# ------------------------------------------------------------------------------------------------ virtual arrays
class VirtualArray:
    """Shape, dtype and bytes of a device array; indexing gives views of the indexed shape, writes are dropped."""

    __slots__ = ("shape", "dtype", "base", "start")

    def __init__(self, shape: tuple[int, ...], dtype: Any, base: VirtualArray | None = None, start: int = 0) -> None:
        self.shape, self.dtype, self.base, self.start = tuple(int(s) for s in shape), np.dtype(dtype), base, start

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> VirtualArray:
        start = (key.start or 0) if isinstance(key, slice) else -1  # a view of rows start.. (-1: a copy)
        return VirtualArray(_indexed_shape(self.shape, key), self.dtype, self.base or self,
                            self.start + start if start >= 0 and self.start >= 0 else -1)

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def _result(self, other: Any) -> VirtualArray:
        return VirtualArray(np.broadcast_shapes(self.shape, np.shape(other)), self.dtype)

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _result

    @property
    def T(self) -> VirtualArray:  # noqa: N802 - numpy's name
        return VirtualArray(self.shape[::-1], self.dtype)

    def astype(self, dtype: Any, copy: bool = True) -> VirtualArray:
        return VirtualArray(self.shape, dtype)

    @property
    def data(self) -> SimpleNamespace:
        """Where the view starts (what a device array's data pointer tells)."""
        return SimpleNamespace(ptr=(id(self.base or self), self.start) if self.start >= 0 else id(self))


def _indexed_shape(shape: tuple[int, ...], key: Any) -> tuple[int, ...]:
    """The shape numpy gives `array[key]` for ints, slices and integer arrays (advanced ones adjacent), without
    materialising anything."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        used = sum(1 for k in key if k is not None and k is not Ellipsis)
        key = key[:i] + (slice(None),) * (len(shape) - used) + key[i + 1 :]
    out: list[int] = []
    advanced: tuple[int, ...] | None = None
    axis = -1
    for k in key:
        if k is None:
            out.append(1)
            continue
        axis += 1
        if isinstance(k, slice):
            out.append(len(range(*k.indices(shape[axis]))))
        elif isinstance(k, int | np.integer):
            continue
        else:
            k_shape = np.shape(k)
            if advanced is None:
                advanced = k_shape
                out.append(-1)  # where the broadcast index shape goes
            else:
                advanced = np.broadcast_shapes(advanced, k_shape)
    out.extend(shape[axis + 1 :])
    if advanced is not None:
        i = out.index(-1)
        out[i : i + 1] = list(advanced)
    return tuple(out)


def _zeros(shape: Any, dtype: Any = F32) -> VirtualArray:
    return VirtualArray(shape if isinstance(shape, tuple) else (shape,), dtype)


def _asarray(x: Any, dtype: Any = None) -> Any:
    return x if isinstance(x, VirtualArray) else np.asarray(x)  # host index arrays stay host arrays


def _where(cond: Any, a: Any, b: Any) -> VirtualArray:
    return VirtualArray(np.broadcast_shapes(np.shape(cond), np.shape(a), np.shape(b)), F32)


def _concatenate(arrays: list, axis: int = 0) -> VirtualArray:
    shape = list(arrays[0].shape)
    shape[axis] = sum(x.shape[axis] for x in arrays)
    return VirtualArray(tuple(shape), arrays[0].dtype)


def _moveaxis(x: VirtualArray, source: int, destination: int) -> VirtualArray:
    axes = list(range(len(x.shape)))
    axes.insert(destination % len(axes), axes.pop(source))
    return VirtualArray(tuple(x.shape[a] for a in axes), x.dtype)


virtual = SimpleNamespace(zeros=_zeros, empty=_zeros, asarray=_asarray, where=_where, concatenate=_concatenate,
                          moveaxis=_moveaxis, zeros_like=lambda x: VirtualArray(x.shape, x.dtype),
                          empty_like=lambda x: VirtualArray(x.shape, x.dtype), __name__="virtual")
VirtualArray.array_module = virtual  # what mtasr.spkcache.common._module finds for these arrays


# ------------------------------------------------------------------------------------------------- null runner
def conversation(frames: int, phase: int, n_spk: int, seed: int = 0) -> np.ndarray:
    """(frames, n_spk) probabilities: speakers 0 and 1 alternate 40 / 37 frames (3.2 / 3.0 s) with 5 frames of
    overlap and 3 of silence per 75-frame cycle; the others stay silent. Values vary like a network's outputs
    (no two frames tie exactly)."""
    t = (np.arange(frames) + phase) % 75
    jitter = np.random.default_rng(seed).uniform(0.0, 0.06, (frames, n_spk)).astype(F32)
    p = 0.01 + jitter
    p[:, 0] = np.where(t < 40, 0.99 - jitter[:, 0], p[:, 0])
    p[:, 1] = np.where((t >= 35) & (t < 72), 0.98 - jitter[:, 1], p[:, 1])
    return p.astype(F32)


class NullRunner:
    """A graph runner with no arithmetic: outputs of the real shapes, from preallocated arrays and patterns."""

    def __init__(self, manifest: Manifest, max_rows: int = 4096, seed: int = 0, xp: Any = None) -> None:
        d, sc = manifest.dims, manifest.diarizer.spkcache
        self.dims = d
        self.xp = xp or virtual  # the array module of the outputs only the device reads
        self._device: dict[tuple, Any] = {}  # real array modules: preallocated outputs, sliced per call
        self.roles = {manifest.diarizer.graph: "diarizer", manifest.diarizer.standalone_graph: "diarizer",
                      **{p.graph: "encoder" for p in manifest.presets.values()}}
        self.valid_out = manifest.presets[manifest.default_preset].streaming_cfg.valid_out_len
        self.drop = manifest.diarizer.drop_extra_pre_encoded
        self.embs = np.random.default_rng(seed).standard_normal((max_rows, 64, d.diar_emb_dim)).astype(F32)
        self.cycle = conversation(75 * 8, 0, d.n_spk, seed)  # long enough to slice any window from
        self.calls = 0
        self.cache_pattern = conversation(int(sc["spkcache_len"]) + int(sc["fifo_len"]), 11, d.n_spk, seed + 1)

    def __call__(self, graph: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[Any]:
        role = self.roles[graph]
        out = self._diarizer(feeds) if role == "diarizer" else self._encoder(feeds)
        return [out[name] for name in outputs]

    def _diarizer(self, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        d = self.dims
        rows = feeds["chunk"].shape[0]
        frames = feeds["chunk"].shape[1]
        n_chunk = -(-frames // 8) - self.drop  # causal pre-encoder frames minus the dropped ones
        n_chunk = max(min(n_chunk, self.valid_out), 1)
        cache, fifo = feeds["spkcache"].shape[1], feeds["fifo"].shape[1]
        total = cache + fifo + n_chunk
        preds = np.empty((rows, total, self.dims.n_spk), dtype=F32)
        preds[:, : cache + fifo] = self.cache_pattern[: cache + fifo]
        step = self.calls * n_chunk
        for r in range(rows):  # each row its own place in the conversation
            start = (step + 37 * r) % 75
            preds[r, cache + fifo :] = self.cycle[start : start + n_chunk]
        self.calls += 1
        lengths = np.minimum(feeds["chunk_lengths"] // 8, n_chunk).astype(I64)
        lengths[:] = n_chunk
        embs = self.embs[:rows, :n_chunk] if self.xp is virtual else self._zeros((rows, n_chunk, d.diar_emb_dim))
        return {DiarizerOutputs.tensor_names().spkcache_fifo_chunk_preds: preds,
                "chunk_pre_encode_embs": embs, "chunk_pre_encode_lengths": lengths}

    def _zeros(self, shape: tuple[int, ...]) -> Any:
        """Device zeros of `shape` (one buffer per trailing shape, grown to the most rows asked for)."""
        if self.xp is virtual:
            return virtual.zeros(shape)
        buf = self._device.get(shape[1:])
        if buf is None or buf.shape[0] < shape[0]:
            buf = self._device[shape[1:]] = self.xp.zeros(shape, dtype=F32)
        return buf[: shape[0]]

    def _encoder(self, feeds: dict[str, Any]) -> dict[str, Any]:
        rows = len(feeds["length"])
        d = self.dims
        n = EncoderOutputs.tensor_names()
        return {n.encoded: self._zeros((rows, self.valid_out, d.enc_d_model)),
                n.encoded_len: np.full(rows, self.valid_out, dtype=I64),
                n.cache_last_channel_next: self._zeros((rows, d.enc_layers, d.enc_last_channel, d.enc_d_model)),
                n.cache_last_time_next: self._zeros((rows, d.enc_layers, d.enc_d_model, d.enc_last_time)),
                n.cache_last_channel_len_next: np.minimum(np.asarray(feeds["cache_last_channel_len"]) + self.valid_out,
                                                          d.enc_last_channel).astype(I64)}


class NullRnnt:
    """`mtasr.rnnt.RnntMath` without arithmetic: a row talks for `TALK_FRAMES` frames of every `CYCLE_FRAMES`
    (row-dependent phase), with a label every `LABEL_EVERY` frames, never the same label twice at one frame."""

    def __init__(self, n_logits: int, layers: int, hidden: int, frames_per_step: int, xp: Any = None) -> None:
        self.xp = xp or virtual  # where the (unused) LSTM state lives
        self.blank = n_logits - 1
        self.shape = (layers, hidden)
        self.frames_per_step = frames_per_step
        self.base = 0  # absolute frame of the current chunk's first frame (chunks come in lockstep)

    def project(self, encoded: Any) -> Any:
        self.base += self.frames_per_step
        return encoded

    def predict(self, tokens: np.ndarray, h: Any, c: Any) -> tuple[Any, Any, Any]:
        n = len(tokens)
        return np.asarray(tokens, dtype=I64)[:, None].copy(), self.xp.zeros((n, *self.shape), dtype=F32), \
            self.xp.zeros((n, *self.shape), dtype=F32)

    def labels(self, f: Any, rows: np.ndarray, frames: np.ndarray, g: Any) -> np.ndarray:
        t = self.base + frames + 29 * rows[:, None]
        token = 1 + t % (self.blank - 1)
        emit = (t % LABEL_EVERY == 0) & (t % CYCLE_FRAMES < TALK_FRAMES) & (np.asarray(g)[:, :1] != token)
        return np.where(emit, token, self.blank)

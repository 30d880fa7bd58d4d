"""The RNNT decoder's arithmetic (prediction network and joint) through an array module, and batched greedy
decoding that runs it, equal to NeMo's ``greedy_batch`` (``GreedyBatchedRNNTLabelLoopingComputer``).

Greedy search per row, starting at frame ``t = 0`` of the chunk (NeMo's label-looping decisions):

* the joint on (frame ``t``, prediction-net output for the last emitted label); ``argmax`` (first index on ties)
  is blank: advance ``t`` and keep the prediction-net state;
* otherwise emit the label at frame ``t`` and feed it to the prediction net; after the ``max_symbols``-th label at
  one frame, ``t`` advances without another joint call;
* stop at ``t == encoded_len``.

A blank leaves the decoder state unchanged, so one joint product scores every row at all its remaining frames
(the "window") with its current prediction output; a row then jumps to its first non-blank frame and emits there.
Per emitted-symbol iteration: one joint product over (rows, frames) and one prediction-network step for the rows
that emitted — not one call per frame and symbol. The encoder's projection is computed once per chunk.

Between chunks (NeMo's ``partial_hypotheses``) a row carries the prediction-net state after its last emitted
label (the start-of-sequence blank with zero state if none yet); a chunk without labels leaves it unchanged.
Timestamps are chunk-local frames plus the frames the row decoded before (NeMo's ``decoded_lengths``: a row that
joins later, a new speaker, counts from its own first chunk). The per-frame ``max_symbols`` counter restarts in
each chunk, which is exact because chunks never share a frame.

Control (which rows and frames are left) stays on the host in numpy; the products run in ``RnntMath``, whose
arrays may live on a device (``ArrayRnnt`` over numpy or CuPy). Between chunks each row keeps NeMo's carried
state: the last label (blank = start of sequence), the LSTM state *before* consuming it, and the frames decoded so
far (NeMo's ``decoded_lengths``, the base of its timestamps).

Every product goes through `mtasr.xp.row_product`: a row's result is the same bits whichever rows share the call, so
a session decodes exactly as it would alone (else a logit's last bit depends on the batch, and at a near-tie the
argmax flips and the session's hypothesis diverges from its solo run).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from mtasr.profile import DECODER_PRODUCTS, DECODING, stage
from mtasr.xp import row_product

F32 = np.float32


@dataclass(frozen=True)
class LstmLayer:
    """One LSTM layer in PyTorch's layout (gates i, f, g, o)."""

    w_ih: np.ndarray  # (4H, in)
    w_hh: np.ndarray  # (4H, H)
    b_ih: np.ndarray  # (4H,)
    b_hh: np.ndarray  # (4H,)


@dataclass(frozen=True)
class RnntWeights:
    """The prediction network (embedding + LSTM layers) and the joint (encoder/prediction projections, output
    layer) of an RNNT model, as exported beside the graphs (`export.rnnt_weights`)."""

    embedding: np.ndarray  # (vocab + 1, H); the blank row is zero (NeMo's blank_as_pad)
    lstm: tuple[LstmLayer, ...]
    enc_w: np.ndarray  # (J, D) joint encoder projection
    enc_b: np.ndarray  # (J,)
    pred_w: np.ndarray  # (J, H) joint prediction projection
    pred_b: np.ndarray  # (J,)
    out_w: np.ndarray  # (vocab + 1, J) joint output layer (after ReLU)
    out_b: np.ndarray  # (vocab + 1,)

    _LAYER = "lstm{}_{}"  # npz key of a layer field

    def save(self, path: str | Path) -> None:
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "lstm"}
        for k, layer in enumerate(self.lstm):
            arrays.update({self._LAYER.format(k, f.name): getattr(layer, f.name) for f in fields(LstmLayer)})
        np.savez(path, **{k: np.ascontiguousarray(v, dtype=F32) for k, v in arrays.items()})

    @classmethod
    def load(cls, path: str | Path) -> RnntWeights:
        with np.load(path) as z:
            n_layers = sum(1 for k in z.files if k.endswith("_w_ih"))
            lstm = tuple(LstmLayer(**{f.name: z[cls._LAYER.format(k, f.name)] for f in fields(LstmLayer)})
                         for k in range(n_layers))
            return cls(lstm=lstm, **{f.name: z[f.name] for f in fields(cls) if f.name != "lstm"})

    @property
    def pred_hidden(self) -> int:
        return int(self.embedding.shape[1])

    @property
    def n_logits(self) -> int:
        return int(self.out_w.shape[0])


class RnntMath(Protocol):
    """The decoder's products; arrays it returns may live on a device, index arguments are host numpy."""

    xp: ModuleType  # the array module of its state arrays (h, c, projections)

    def project(self, encoded: Any) -> Any:
        """(B, T, D) encoder output -> (B, T, J) joint encoder projection."""
        ...

    def predict(self, tokens: np.ndarray, h: Any, c: Any) -> tuple[Any, Any, Any]:
        """Prediction net on `tokens` (R,) from LSTM state (R, L, H) -> (projected output (R, J), h', c')."""
        ...

    def labels(self, f: Any, rows: np.ndarray, frames: np.ndarray, g: Any) -> np.ndarray:
        """argmax of the joint at (f[rows[i], frames[i, j]], g[i]) -> (R, W) host int64 labels."""
        ...


def _sigmoid(xp: ModuleType, x: Any) -> Any:
    return 1.0 / (1.0 + xp.exp(-x))


class ArrayRnnt:
    """`RnntMath` from exported weights in an array module (numpy on the CPU, CuPy on a GPU)."""

    def __init__(self, weights: RnntWeights, xp: ModuleType = np) -> None:
        self.xp = xp
        put = xp.asarray
        self.embedding = put(weights.embedding)
        # [x, h] @ [W_ih | W_hh]^T + (b_ih + b_hh): one product per layer
        self.lstm = [(put(np.concatenate([layer.w_ih, layer.w_hh], axis=1).T.copy()), put(layer.b_ih + layer.b_hh))
                     for layer in weights.lstm]
        self.enc_wt, self.enc_b = put(weights.enc_w.T.copy()), put(weights.enc_b)
        self.pred_wt, self.pred_b = put(weights.pred_w.T.copy()), put(weights.pred_b)
        self.out_wt, self.out_b = put(weights.out_w.T.copy()), put(weights.out_b)
        self.hidden = weights.pred_hidden

    def project(self, encoded: Any) -> Any:
        e = self.xp.asarray(encoded, dtype=F32)
        projected = row_product(self.xp, e.reshape(-1, e.shape[-1]), self.enc_wt) + self.enc_b
        return projected.reshape(*e.shape[:-1], projected.shape[-1])

    def predict(self, tokens: np.ndarray, h: Any, c: Any) -> tuple[Any, Any, Any]:
        xp, n = self.xp, self.hidden
        x = self.embedding[xp.asarray(tokens)]
        h_out, c_out = xp.empty_like(h), xp.empty_like(c)
        for k, (w, b) in enumerate(self.lstm):
            z = row_product(xp, xp.concatenate([x, h[:, k]], axis=1), w) + b
            i, f, g, o = _sigmoid(xp, z[:, :n]), _sigmoid(xp, z[:, n:2 * n]), xp.tanh(z[:, 2 * n:3 * n]), \
                _sigmoid(xp, z[:, 3 * n:])
            c_out[:, k] = f * c[:, k] + i * g
            h_out[:, k] = x = o * xp.tanh(c_out[:, k])
        return row_product(xp, x, self.pred_wt) + self.pred_b, h_out, c_out

    def labels(self, f: Any, rows: np.ndarray, frames: np.ndarray, g: Any) -> np.ndarray:
        xp = self.xp
        r = xp.asarray(rows)
        hidden = xp.maximum(f[r[:, None], xp.asarray(frames)] + g[:, None, :], 0)  # (R, W, J)
        logits = row_product(xp, hidden.reshape(-1, hidden.shape[-1]), self.out_wt) + self.out_b
        logits = logits.reshape(*hidden.shape[:-1], logits.shape[-1])
        labels = logits.argmax(axis=-1)
        return labels.get() if hasattr(labels, "get") else np.asarray(labels)


StepFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""``step_fn(encoder_frame (B, D), targets (B,) int64, h (B, L, H), c (B, L, H)) -> (logits, h_out, c_out)``: the
``decoder_joint`` graph's contract (prediction net on `targets` from (h, c), joint on one frame each)."""


class StepRnnt:
    """`RnntMath` over a fused step function (the exported ``decoder_joint`` graph, or NeMo's modules in tests).

    The "projected prediction output" it hands the loop packs the prediction net's inputs (token, h, c) so that
    `labels` can call the step function for every (frame, row) pair; `predict` calls it once on a zero frame for
    the state after the token. Numpy only (a reference and a check of the graph, not the serving path).
    """

    xp = np

    def __init__(self, step_fn: StepFn) -> None:
        self.step_fn = step_fn

    def project(self, encoded: Any) -> Any:
        self._dim = int(encoded.shape[-1])  # greedy_decode projects before it predicts: the zero frame's width
        return np.asarray(encoded, dtype=F32)

    def predict(self, tokens: np.ndarray, h: Any, c: Any) -> tuple[Any, Any, Any]:
        n = len(tokens)
        _, h_out, c_out = self.step_fn(np.zeros((n, self._dim), dtype=F32), np.asarray(tokens, dtype=np.int64), h, c)
        packed = np.concatenate([np.asarray(tokens, dtype=F32)[:, None], h.reshape(n, -1), c.reshape(n, -1)], axis=1)
        self._state_shape = h.shape[1:]
        return packed, np.asarray(h_out), np.asarray(c_out)

    def labels(self, f: Any, rows: np.ndarray, frames: np.ndarray, g: Any) -> np.ndarray:
        n_rows, width = frames.shape
        size = int(np.prod(self._state_shape))
        rep = np.repeat(np.arange(n_rows), width)
        tokens = g[rep, 0].astype(np.int64)
        h = g[rep, 1 : 1 + size].reshape(-1, *self._state_shape)
        c = g[rep, 1 + size :].reshape(-1, *self._state_shape)
        logits, _, _ = self.step_fn(np.ascontiguousarray(f[np.repeat(rows, width), frames.reshape(-1)]), tokens,
                                    np.ascontiguousarray(h), np.ascontiguousarray(c))
        return np.asarray(logits).argmax(axis=-1).reshape(n_rows, width)


@dataclass
class DecoderState:
    """Greedy state of B rows: `last_token` (B,) and `frames` (B,) on the host, the LSTM state before consuming
    `last_token` (B, L, H) in the math's array module."""

    last_token: np.ndarray
    h: Any
    c: Any
    frames: np.ndarray

    @property
    def batch(self) -> int:
        return int(self.last_token.shape[0])


def init_state(batch: int, layers: int, hidden: int, blank_id: int, xp: ModuleType = np) -> DecoderState:
    """Start-of-sequence state for `batch` rows: last token blank, zero LSTM state, no frames decoded."""
    return DecoderState(last_token=np.full(batch, blank_id, dtype=np.int64),
                        h=xp.zeros((batch, layers, hidden), dtype=F32), c=xp.zeros((batch, layers, hidden), dtype=F32),
                        frames=np.zeros(batch, dtype=np.int64))


@dataclass(frozen=True)
class Emissions:
    """Labels emitted in one chunk, in emission order: row, label and NeMo timestamp (frames since the row's start)."""

    rows: np.ndarray
    tokens: np.ndarray
    frames: np.ndarray

    def per_row(self, batch: int) -> list[tuple[list[int], list[int]]]:
        """(tokens, frames) of each row, in order."""
        out: list[tuple[list[int], list[int]]] = [([], []) for _ in range(batch)]
        for r, tok, fr in zip(self.rows.tolist(), self.tokens.tolist(), self.frames.tolist(), strict=True):
            out[r][0].append(tok)
            out[r][1].append(fr)
        return out


class _TimedProducts:
    """The math's products charged to the device stage of the stage clock."""

    def __init__(self, math: RnntMath) -> None:
        self.math, self.xp = math, math.xp

    def project(self, encoded: Any) -> Any:
        with stage(DECODER_PRODUCTS):
            return self.math.project(encoded)

    def predict(self, tokens: np.ndarray, h: Any, c: Any) -> tuple[Any, Any, Any]:
        with stage(DECODER_PRODUCTS):
            return self.math.predict(tokens, h, c)

    def labels(self, f: Any, rows: np.ndarray, frames: np.ndarray, g: Any) -> np.ndarray:
        with stage(DECODER_PRODUCTS):
            return self.math.labels(f, rows, frames, g)


def greedy_decode(math: RnntMath, encoded: Any, encoded_len: np.ndarray, state: DecoderState, blank_id: int,
                  max_symbols: int | None = 10, window: int | None = None) -> Emissions:
    """Decode one chunk of B rows (`encoded` (B, T, D) in the math's array module, `encoded_len` (B,) host);
    `state` is updated in place. `window` caps the frames one joint product looks ahead (None: all that are left;
    1: NeMo's frame-by-frame loop). ``max_symbols`` None means no limit."""
    with stage(DECODING):
        return _greedy(_TimedProducts(math), encoded, encoded_len, state, blank_id, max_symbols, window)


def _greedy(math: RnntMath, encoded: Any, encoded_len: np.ndarray, state: DecoderState, blank_id: int,
            max_symbols: int | None, window: int | None) -> Emissions:
    batch, n_frames = int(encoded.shape[0]), int(encoded.shape[1])
    if state.batch != batch:
        raise ValueError(f"state has {state.batch} rows, encoded has {batch}")
    lengths = np.minimum(np.asarray(encoded_len, dtype=np.int64).reshape(batch), n_frames)
    offset = state.frames.copy()
    out_rows: list[np.ndarray] = []
    out_tokens: list[np.ndarray] = []
    out_frames: list[np.ndarray] = []
    t = np.zeros(batch, dtype=np.int64)
    emitted_here = np.zeros(batch, dtype=np.int64)  # labels emitted at frame t so far
    active = np.flatnonzero(t < lengths)
    if active.size:
        f = math.project(encoded)
        g, h_after, c_after = math.predict(state.last_token, state.h, state.c)
    while active.size:
        left = lengths[active] - t[active]
        width = int(left.max()) if window is None else min(int(left.max()), max(int(window), 1))
        span = np.arange(width)
        frames = t[active, None] + span  # (R, W)
        valid = span < np.minimum(left, width)[:, None]
        labels = math.labels(f, active, np.minimum(frames, n_frames - 1), g[_index(math, active)])
        hit = valid & (labels != blank_id)
        emits = hit.any(axis=1)
        done = ~emits  # blank on every frame of the window
        t[active[done]] += np.minimum(left[done], width)
        emitted_here[active[done]] = 0
        r = active[emits]
        if r.size:
            k = hit[emits].argmax(axis=1)
            fr = frames[emits, k]
            new = labels[emits, k]
            emitted_here[r] = np.where(fr > t[r], 0, emitted_here[r])  # skipped frames were blanks
            t[r] = fr
            out_rows.append(r)
            out_tokens.append(new)
            out_frames.append(offset[r] + fr)
            ri = _index(math, r)
            state.h[ri], state.c[ri] = h_after[ri], c_after[ri]  # the state before the new label
            state.last_token[r] = new
            g[ri], h_after[ri], c_after[ri] = math.predict(new, h_after[ri], c_after[ri])
            emitted_here[r] += 1
            if max_symbols is not None:
                full = r[emitted_here[r] >= max_symbols]
                t[full] += 1
                emitted_here[full] = 0
        active = active[t[active] < lengths[active]]
    state.frames += lengths
    cat = (lambda parts: np.concatenate(parts)) if out_rows else (lambda _: np.zeros(0, dtype=np.int64))
    return Emissions(cat(out_rows), cat(out_tokens).astype(np.int64), cat(out_frames).astype(np.int64))


def _index(math: RnntMath, idx: np.ndarray) -> Any:
    """A host index array for the math's arrays (moved to the device when they live there)."""
    return idx if math.xp is np else math.xp.asarray(idx)

"""Batched greedy RNNT decoding in numpy, carried across streaming chunks, equal to NeMo's ``greedy_batch``.

NeMo (``GreedyBatchedRNNTInfer`` with ``loop_labels=True``, i.e. ``GreedyBatchedRNNTLabelLoopingComputer``)
decodes every row independently; per row its search is, starting at frame ``t = 0`` of the chunk:

* evaluate the joint on (frame ``t``, prediction-net output for the last emitted label);
* ``argmax`` (first index on ties, as ``torch.max``) is blank: advance ``t``, keep the prediction-net state;
* otherwise emit the label at frame ``t``, feed it to the prediction net; after the ``max_symbols``-th label
  at the same frame, ``t`` is advanced without a further joint call (no blank is "emitted");
* stop when ``t == encoded_len``.

Between chunks (``partial_hypotheses`` -> ``prev_batched_state``) NeMo carries the prediction-net state and output
after the last emitted label (the start-of-sequence blank with zero state if none yet); a chunk without labels
leaves them unchanged.  Timestamps are chunk-local frame indices plus ``decoded_lengths``, the sum of the
``encoded_len`` of all earlier chunks of that row, i.e. frames since this hypothesis started (a row that joins
later, e.g. a new speaker, counts from its own first chunk).  The per-frame ``max_symbols`` counter restarts in
each chunk, which is exact because chunks never share a frame.

The ``decoder_joint`` graph recomputes the prediction net from (last token, LSTM state before it), so
:class:`DecoderState` keeps the state *before* consuming ``last_token``; ``step_fn`` returns the state after it,
which becomes the stored state when a new label is emitted.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

StepFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""``step_fn(encoder_frame (B, D), targets (B,) int64, h (B, L, H), c (B, L, H)) -> (logits, h_out, c_out)``."""

WORD_BOUNDARY = "\u2581"  # SentencePiece '▁'
UNK_SURFACE = " \u2047 "  # what SentencePiece decodes <unk> to (' ⁇ ')


@dataclass
class DecoderState:
    """Greedy decoding state of B rows (stream-speakers); rows are independent and can be regrouped.

    ``h``/``c`` are the LSTM state *before* consuming ``last_token`` (zeros with ``last_token == blank`` at the
    start, which is NeMo's start-of-sequence).  ``frames`` counts the encoder frames decoded so far per row
    (NeMo's ``decoded_lengths``), ``tokens``/``frame_indices`` hold the whole hypothesis of each row.
    """

    last_token: np.ndarray  # (B,) int64
    h: np.ndarray  # (B, L, H) float32
    c: np.ndarray  # (B, L, H) float32
    frames: np.ndarray  # (B,) int64
    tokens: list[list[int]] = field(default_factory=list)
    frame_indices: list[list[int]] = field(default_factory=list)

    @property
    def batch(self) -> int:
        return int(self.last_token.shape[0])

    def select(self, rows: Sequence[int] | np.ndarray) -> DecoderState:
        """A new state holding copies of `rows` (in that order)."""
        idx = np.asarray(rows, dtype=np.int64)
        return DecoderState(
            last_token=self.last_token[idx].copy(),
            h=self.h[idx].copy(),
            c=self.c[idx].copy(),
            frames=self.frames[idx].copy(),
            tokens=[list(self.tokens[i]) for i in idx],
            frame_indices=[list(self.frame_indices[i]) for i in idx],
        )

    @staticmethod
    def concat(states: Sequence[DecoderState]) -> DecoderState:
        """Stack the rows of several states into one batched state (lists are shared, not copied)."""
        return DecoderState(
            last_token=np.concatenate([s.last_token for s in states]),
            h=np.concatenate([s.h for s in states]),
            c=np.concatenate([s.c for s in states]),
            frames=np.concatenate([s.frames for s in states]),
            tokens=[t for s in states for t in s.tokens],
            frame_indices=[f for s in states for f in s.frame_indices],
        )


def init_state(batch: int, layers: int, hidden: int, blank_id: int) -> DecoderState:
    """Start-of-sequence state for `batch` rows: last token blank, zero LSTM state, no frames decoded."""
    return DecoderState(
        last_token=np.full(batch, blank_id, dtype=np.int64),
        h=np.zeros((batch, layers, hidden), dtype=np.float32),
        c=np.zeros((batch, layers, hidden), dtype=np.float32),
        frames=np.zeros(batch, dtype=np.int64),
        tokens=[[] for _ in range(batch)],
        frame_indices=[[] for _ in range(batch)],
    )


def greedy_decode(
    step_fn: StepFn,
    encoded: np.ndarray,
    encoded_len: np.ndarray,
    state: DecoderState,
    blank_id: int,
    max_symbols: int | None = 10,
    frame_offset: np.ndarray | int | None = None,
    window: int | None = None,
) -> DecoderState:
    """Decode one chunk for all rows of `state` (updated in place and returned).

    `encoded` is (B, T, D) (the encoder graph's layout), `encoded_len` (B,) the valid frames per row (0 allowed).
    Emitted tokens get frame index ``frame_offset + t`` (``t`` chunk-local); `frame_offset` None means
    ``state.frames`` (NeMo's timestamps).  ``max_symbols`` None means no limit (NeMo treats values < 1 like 1).

    Same decisions as NeMo's frame-by-frame greedy search, in fewer `step_fn` calls: a blank leaves the decoder
    state unchanged, so each call evaluates every row at its next `window` frames (None: all it has left) with
    its current state (rows repeated per frame); the row then jumps to its first non-blank frame, emits there
    and goes on from that frame with the new state, or past the window when all were blank. With the whole
    chunk as window: one call per emitted symbol (of the row that emits most) plus one, instead of one per
    frame and symbol; `window=1` is the frame-by-frame loop.
    """
    batch, n_frames = encoded.shape[:2]
    if state.batch != batch:
        raise ValueError(f"state has {state.batch} rows, encoded has {batch}")
    lengths = np.minimum(np.asarray(encoded_len, dtype=np.int64).reshape(batch), n_frames)
    offset = state.frames.copy() if frame_offset is None else np.broadcast_to(np.asarray(frame_offset), (batch,))
    t = np.zeros(batch, dtype=np.int64)
    emitted_here = np.zeros(batch, dtype=np.int64)  # labels emitted at frame t so far
    active = np.flatnonzero(t < lengths)
    while active.size:
        left = lengths[active] - t[active]
        counts = left if window is None else np.minimum(left, max(int(window), 1))
        seg_start = np.cumsum(counts) - counts  # each active row's first position in the call
        rows = np.repeat(active, counts)
        frame = np.repeat(t[active], counts) + np.arange(rows.size) - np.repeat(seg_start, counts)
        logits, h_out, c_out = step_fn(np.ascontiguousarray(encoded[rows, frame]), state.last_token[rows],
                                       state.h[rows], state.c[rows])
        labels = np.asarray(logits).argmax(axis=-1)
        position = np.where(labels != blank_id, np.arange(rows.size), rows.size)
        first = np.minimum.reduceat(position, seg_start)  # first label of each row's segment, or rows.size
        emits = first < rows.size
        done, skipped = active[~emits], counts[~emits]  # blank on every frame of the window
        t[done] += skipped
        emitted_here[done] = 0
        r, k = active[emits], first[emits]
        if r.size:
            f = frame[k]
            emitted_here[r] = np.where(f > t[r], 0, emitted_here[r])  # skipped frames were blanks
            t[r] = f
            new = labels[k]
            state.h[r] = np.asarray(h_out)[k]
            state.c[r] = np.asarray(c_out)[k]
            state.last_token[r] = new
            for row, tok, fr in zip(r.tolist(), new.tolist(), f.tolist(), strict=True):
                state.tokens[row].append(tok)
                state.frame_indices[row].append(int(offset[row] + fr))
            emitted_here[r] += 1
            if max_symbols is not None:
                hit = r[emitted_here[r] >= max_symbols]
                t[hit] += 1
                emitted_here[hit] = 0
        active = active[t[active] < lengths[active]]
    state.frames += lengths
    return state


@dataclass(frozen=True)
class Word:
    """A decoded word: text, frame indices of its first and last token, and its token index range."""

    text: str
    first_frame: int
    last_frame: int  # NeMo's word ``end_offset`` is ``last_frame + 1``
    first_token: int
    last_token: int


def _piece_text(piece: str) -> str:
    if piece.startswith("<") and piece.endswith(">") and len(piece) > 2:  # special pieces
        return UNK_SURFACE if piece == "<unk>" else ""
    return piece.replace(WORD_BOUNDARY, " ")


def tokens_to_text(tokens: Sequence[int], vocab: Sequence[str]) -> str:
    """SentencePiece ``decode_ids``: join pieces with '▁' -> space, minus the first piece's leading '▁'."""
    text = "".join(_piece_text(vocab[t]) for t in tokens)
    return text[1:] if tokens and vocab[tokens[0]].startswith(WORD_BOUNDARY) else text


def _is_punctuation(piece: str) -> bool:
    core = piece[1:] if piece.startswith(WORD_BOUNDARY) else piece
    return len(core) == 1 and unicodedata.category(core).startswith("P")


def tokens_to_words(tokens: Sequence[int], frames: Sequence[int], vocab: Sequence[str]) -> list[Word]:
    """Group tokens into words like NeMo's RNNT word offsets (``get_words_offsets``, BPE tokenizer).

    A piece whose text differs from the piece (it starts with '▁', or is special such as <unk>) starts a word,
    other pieces continue it; a piece that is one punctuation mark (with or without '▁') joins the current word.
    Word text is the detokenised pieces (as NeMo: not stripped); frames are those of its first and last token.
    """
    words: list[Word] = []
    start: int | None = None  # first token of the word being built

    def close(end: int) -> None:
        if start is not None:
            text = tokens_to_text(tokens[start : end + 1], vocab)
            words.append(Word(text, int(frames[start]), int(frames[end]), start, end))

    for i, tok in enumerate(tokens):
        piece = vocab[tok]
        if start is None or (_piece_text(piece) != piece and not _is_punctuation(piece)):
            close(i - 1)
            start = i
    close(len(tokens) - 1)
    return words

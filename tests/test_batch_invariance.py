"""A row decodes to the same bits whatever rows share its batch: a session's transcript must not depend on who else
is on the server (`mtasr.xp.row_product`)."""

from __future__ import annotations

import numpy as np
import pytest

from mtasr.rnnt import ArrayRnnt, LstmLayer, RnntWeights, greedy_decode, init_state
from mtasr.xp import ROW_BLOCK, row_product

F32 = np.float32
HIDDEN, JOINT, VOCAB, LAYERS, ENC = 64, 64, 65, 2, 48  # tiny multitalker shapes (OpenBLAS changes path with rows)


def _weights(seed: int = 5) -> RnntWeights:
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(F32)

    out_b = w(VOCAB)
    out_b[-1] += 1.0  # blanks and labels mixed
    lstm = tuple(LstmLayer(w(4 * HIDDEN, HIDDEN), w(4 * HIDDEN, HIDDEN), w(4 * HIDDEN), w(4 * HIDDEN))
                 for _ in range(LAYERS))
    return RnntWeights(embedding=w(VOCAB, HIDDEN), lstm=lstm, enc_w=w(JOINT, ENC), enc_b=w(JOINT),
                       pred_w=w(JOINT, HIDDEN), pred_b=w(JOINT), out_w=w(VOCAB, JOINT), out_b=out_b)


@pytest.mark.parametrize(("k", "n", "dtype"), [(JOINT, VOCAB, F32), (2 * HIDDEN, 4 * HIDDEN, F32), (640, 640, F32),
                                               (257, 128, np.float64)])  # decoder products; the mel filterbank
def test_row_product_is_independent_of_the_other_rows(k, n, dtype):
    rng = np.random.default_rng(0)
    a, w = rng.standard_normal((300, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    whole = row_product(np, a, w)
    np.testing.assert_allclose(whole, a @ w, rtol=1e-4, atol=1e-4)
    for rows in (1, 2, 3, ROW_BLOCK + 1, 100):
        pick = rng.permutation(len(a))[:rows]
        assert np.array_equal(row_product(np, a[pick], w), whole[pick]), f"{rows} rows"


def test_a_row_decodes_alone_as_in_any_batch():
    """Rows of different lengths and histories, decoded together over three chunks, equal each row decoded alone:
    the same labels at the same frames and the same decoder state, bit for bit."""
    math, blank = ArrayRnnt(_weights()), VOCAB - 1
    rng = np.random.default_rng(1)
    rows, frames = 7, 14
    chunks = [rng.standard_normal((rows, frames, ENC)).astype(F32) for _ in range(3)]
    lengths = [rng.integers(1, frames + 1, rows) for _ in chunks]
    batch = init_state(rows, LAYERS, HIDDEN, blank)
    together: list[list[tuple[int, int]]] = [[] for _ in range(rows)]
    for x, n in zip(chunks, lengths, strict=True):
        em = greedy_decode(math, x, n, batch, blank, max_symbols=4)
        for r, tok, fr in zip(em.rows.tolist(), em.tokens.tolist(), em.frames.tolist(), strict=True):
            together[r].append((tok, fr))
    assert sum(map(len, together)) > 3 * rows, "the weights must emit labels"
    for r in range(rows):
        alone = init_state(1, LAYERS, HIDDEN, blank)
        got = []
        for x, n in zip(chunks, lengths, strict=True):
            em = greedy_decode(math, x[r : r + 1], n[r : r + 1], alone, blank, max_symbols=4)
            got += list(zip(em.tokens.tolist(), em.frames.tolist(), strict=True))
        assert got == together[r], f"row {r}"
        assert np.array_equal(alone.h[0], batch.h[r]) and np.array_equal(alone.c[0], batch.c[r]), f"row {r} state"
        assert alone.last_token[0] == batch.last_token[r] and alone.frames[0] == batch.frames[r]

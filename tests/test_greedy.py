"""`mtasr.rnnt` equals NeMo's streaming `greedy_batch` (label looping) token for token and frame for frame, with the
served arithmetic (`ArrayRnnt` on the exported weights) and with a fused step function (`StepRnnt`, the
`decoder_joint` graph's contract); `mtasr.greedy` gives NeMo's text and word offsets."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from mtasr.greedy import tokens_to_text, tokens_to_words
from mtasr.rnnt import ArrayRnnt, DecoderState, RnntWeights, StepRnnt, greedy_decode, init_state

torch = pytest.importorskip("torch")

MAX_SYMBOLS = 10
LENGTHS = (300, 251, 277)  # frames per row: rows finish in different chunks


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The tiny random-init multitalker RNNT with a gained joint (a mix of 0, 1, several and max_symbols labels)."""
    from export.builders import build_asr

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: threads only add overhead (20x on a loaded 2-core box)
    m = build_asr("tiny", Path(tmp_path_factory.mktemp("greedy")))
    out = m.joint.joint_net[-1]
    with torch.no_grad():
        out.weight.mul_(3.0)
        out.bias[m.decoder.blank_idx] += 2.0
    yield m
    torch.set_num_threads(threads)


def torch_step(m) -> Callable:
    """A torch function with the decoder_joint graph's contract (state batch first, after consuming targets)."""

    @torch.inference_mode()
    def step(frame: np.ndarray, targets: np.ndarray, h: np.ndarray, c: np.ndarray):
        b = frame.shape[0]
        state = (torch.from_numpy(h).transpose(0, 1).contiguous(), torch.from_numpy(c).transpose(0, 1).contiguous())
        g, (h_out, c_out) = m.decoder.predict(torch.from_numpy(targets)[:, None], state, add_sos=False, batch_size=b)
        f = m.joint.project_encoder(torch.from_numpy(frame)[:, None, :])
        logits = m.joint.joint_after_projection(f, m.joint.project_prednet(g)).reshape(b, -1)
        return logits.numpy(), h_out.transpose(0, 1).numpy(), c_out.transpose(0, 1).numpy()

    return step


def nemo_chunk(m, encoded: np.ndarray, lengths: np.ndarray, prev: list | None) -> list:
    """One `conformer_stream_step` decoding call: (B, T, D) -> NeMo's (B, D, T) layout, hypotheses merged."""
    return m.decoding.rnnt_decoder_predictions_tensor(
        encoder_output=torch.from_numpy(encoded).transpose(1, 2),
        encoded_lengths=torch.from_numpy(lengths),
        return_hypotheses=True,
        partial_hypotheses=prev,
    )


@dataclass
class Decoded:
    """A batch's decoder state and every row's hypothesis so far (what the pipeline keeps per speaker)."""

    state: DecoderState
    tokens: list[list[int]] = field(default_factory=list)
    frame_indices: list[list[int]] = field(default_factory=list)

    @classmethod
    def start(cls, batch: int, layers: int, hidden: int, blank: int) -> Decoded:
        return cls(init_state(batch, layers, hidden, blank), [[] for _ in range(batch)], [[] for _ in range(batch)])

    def decode(self, math, encoded, lengths, blank, max_symbols=MAX_SYMBOLS, window=None) -> Decoded:
        emitted = greedy_decode(math, encoded, lengths, self.state, blank, max_symbols, window=window)
        for row, (tokens, frames) in enumerate(emitted.per_row(self.state.batch)):
            self.tokens[row].extend(tokens)
            self.frame_indices[row].extend(frames)
        return self

    def select(self, rows: list[int]) -> Decoded:
        s = self.state
        idx = np.asarray(rows)
        return Decoded(DecoderState(s.last_token[idx].copy(), s.h[idx].copy(), s.c[idx].copy(), s.frames[idx].copy()),
                       [list(self.tokens[i]) for i in rows], [list(self.frame_indices[i]) for i in rows])

    @staticmethod
    def concat(parts: list[Decoded]) -> Decoded:
        cat = np.concatenate
        state = DecoderState(cat([p.state.last_token for p in parts]), cat([p.state.h for p in parts]),
                             cat([p.state.c for p in parts]), cat([p.state.frames for p in parts]))
        return Decoded(state, [t for p in parts for t in p.tokens], [f for p in parts for f in p.frame_indices])


def maths(m) -> dict[str, object]:
    """The served arithmetic (weights exported from the model) and the fused step over NeMo's own modules."""
    from export.rnnt_weights import rnnt_weights_from_nemo

    return {"array": ArrayRnnt(rnnt_weights_from_nemo(m)), "step": StepRnnt(torch_step(m))}


def assert_same(hyps: list, state: Decoded, where: str) -> None:
    for row, hyp in enumerate(hyps):
        assert state.tokens[row] == hyp.y_sequence.tolist(), f"{where} row {row}: tokens differ"
        assert state.frame_indices[row] == torch.as_tensor(hyp.timestamp).tolist(), f"{where} row {row}: frames"


def emission_stats(state: Decoded, lengths) -> np.ndarray:
    """Histogram of labels per frame over all rows (index = labels emitted at that frame)."""
    rows = zip(state.frame_indices, lengths, strict=True)
    counts = [np.bincount(np.asarray(f, dtype=np.int64), minlength=n) for f, n in rows]
    return np.bincount(np.concatenate(counts), minlength=MAX_SYMBOLS + 1)


def random_encoded(seed: int, batch: int, frames: int, dim: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, frames, dim)).astype(np.float32)


@pytest.mark.parametrize("math", ["array", "step"])
@pytest.mark.parametrize("window", [None, 1, 3])
@pytest.mark.parametrize("chunk", [14, 1])
def test_streaming_equals_nemo(model, chunk, window, math):
    """Rows of different lengths, chunk by chunk: same tokens and global frame indices after every chunk."""
    if math == "step" and chunk == 1 and window is not None:
        pytest.skip("the step function is a reference: one frame-by-frame case is enough")
    lengths = np.array(LENGTHS)
    blank, layers, hidden = model.decoder.blank_idx, model.decoder.pred_rnn_layers, model.decoder.pred_hidden
    encoded = random_encoded(0, len(lengths), int(lengths.max()), model.joint.encoder_hidden)
    rnnt = maths(model)[math]
    state, hyps = Decoded.start(len(lengths), layers, hidden, blank), None
    n_chunks = -(-int(lengths.max()) // chunk)
    assert n_chunks >= 20
    for k in range(n_chunks):
        part = np.ascontiguousarray(encoded[:, k * chunk : (k + 1) * chunk])
        part_len = np.clip(lengths - k * chunk, 0, chunk)
        hyps = nemo_chunk(model, part, part_len, hyps)
        state.decode(rnnt, part, part_len, blank, window=window)
        assert_same(hyps, state, f"chunk {k}")
    np.testing.assert_array_equal(state.state.frames, lengths)
    vocab = model.tokenizer.vocab
    for row, hyp in enumerate(hyps):
        assert tokens_to_text(state.tokens[row], vocab) == hyp.text == model.tokenizer.ids_to_text(state.tokens[row])
    stats = emission_stats(state, lengths)
    total = sum(len(t) for t in state.tokens)
    print(f"\nchunk={chunk} window={window}: {n_chunks} chunks, {total} tokens compared, "
          f"frames by labels emitted {stats.tolist()}")
    assert stats[0] and stats[1] and stats[2:MAX_SYMBOLS].sum() and stats[MAX_SYMBOLS], stats
    assert stats[MAX_SYMBOLS + 1 :].sum() == 0


def test_regrouped_rows_and_late_joiners(model):
    """Streams decoded in changing groups (order, subsets) and starting late, as a server batches them.

    NeMo gets the same groups with `None` for a stream's first chunk; its timestamps count from that chunk.
    """
    blank, layers, hidden = model.decoder.blank_idx, model.decoder.pred_rnn_layers, model.decoder.pred_hidden
    rng = np.random.default_rng(1)
    n_streams, chunk, n_chunks = 5, 6, 24
    encoded = random_encoded(2, n_streams, chunk * n_chunks, model.joint.encoder_hidden)
    rnnt = maths(model)["array"]
    states: dict[int, Decoded] = {}
    hyps: dict[int, object] = {}
    pos = np.zeros(n_streams, dtype=np.int64)  # frames consumed per stream
    for k in range(n_chunks):
        group = rng.permutation(n_streams)[: rng.integers(1, n_streams + 1)].tolist()
        group = [s for s in group if s < 2 + k // 4]  # streams 2.. join later
        if not group:
            continue
        lengths = rng.integers(0, chunk + 1, len(group))
        part = np.zeros((len(group), chunk, encoded.shape[2]), dtype=np.float32)
        for i, s in enumerate(group):
            part[i, : lengths[i]] = encoded[s, pos[s] : pos[s] + lengths[i]]
            pos[s] += lengths[i]
        merged = Decoded.concat([states.get(s) or Decoded.start(1, layers, hidden, blank) for s in group])
        merged.decode(rnnt, part, lengths, blank)
        out = nemo_chunk(model, part, lengths, [hyps.get(s) for s in group])
        assert_same(out, merged, f"chunk {k}")
        for i, s in enumerate(group):
            states[s], hyps[s] = merged.select([i]), out[i]
    assert len(states) == n_streams
    print(f"\nregrouped: {sum(len(s.tokens[0]) for s in states.values())} tokens compared")


def test_words_equal_nemo_word_offsets(model):
    """`tokens_to_words` gives NeMo's RNNT word offsets (word text, start = first frame, end = last frame + 1)."""
    blank, layers, hidden = model.decoder.blank_idx, model.decoder.pred_rnn_layers, model.decoder.pred_hidden
    lengths = np.array(LENGTHS)
    encoded = random_encoded(3, len(lengths), int(lengths.max()), model.joint.encoder_hidden)
    state = Decoded.start(3, layers, hidden, blank).decode(maths(model)["array"], encoded, lengths, blank)
    hyps = nemo_chunk(model, encoded, lengths, None)
    assert_same(hyps, state, "offline")
    n_words = 0
    for row, hyp in enumerate(hyps):
        ref = model.decoding.compute_rnnt_timestamps(copy.deepcopy(hyp), "word").timestamp["word"]
        words = tokens_to_words(state.tokens[row], state.frame_indices[row], model.tokenizer.vocab)
        got = [(w.text, w.first_frame, w.last_frame + 1) for w in words]
        assert got == [(w["word"], w["start_offset"], w["end_offset"]) for w in ref]
        n_words += len(words)
    assert n_words > 50
    rng = np.random.default_rng(4)
    for _ in range(200):
        ids = rng.integers(0, blank, rng.integers(0, 8)).tolist()
        assert tokens_to_text(ids, model.tokenizer.vocab) == model.tokenizer.ids_to_text(ids), ids


def test_edge_cases():
    """Zero-length rows, frame offsets, no / a symbol limit, ties and state regrouping, with toy step_fns."""
    vocab, blank = 4, 4

    def step(frame, targets, h, c):  # label (targets + 1) % vocab while fewer than frame[0] labels so far, else blank
        labels = np.where(h[:, 0, 0] < frame[:, 0], (targets + 1) % vocab, blank)
        return np.eye(vocab + 1, dtype=np.float32)[labels], h + 1, c

    encoded = np.zeros((3, 4, 2), dtype=np.float32)
    encoded[:, :, 0] = [[0, 2, 2, 5], [1, 0, 0, 0], [15, 30, 0, 0]]
    state = Decoded.start(3, 1, 1, blank).decode(StepRnnt(step), encoded, np.array([4, 0, 2]), blank,
                                                 max_symbols=None)
    assert state.frame_indices == [[1, 1, 3, 3, 3], [], [0] * 15 + [1] * 15]
    assert state.tokens[0] == [1, 2, 3, 0, 1] and state.state.frames.tolist() == [4, 0, 2]
    more = np.full((3, 1, 2), 100, dtype=np.float32)
    state.decode(StepRnnt(step), more, np.array([1, 1, 1]), blank, max_symbols=3)
    assert [f[-3:] for f in state.frame_indices] == [[4] * 3, [0] * 3, [2] * 3] and state.tokens[1] == [1, 2, 3]
    assert state.tokens[0][-3:] == [2, 3, 0] and state.state.frames.tolist() == [5, 1, 3]
    zeros = lambda f, y, h, c: (np.zeros((len(y), vocab + 1), np.float32), h, c)  # noqa: E731
    tied = Decoded.start(3, 1, 1, blank).decode(StepRnnt(zeros), encoded, np.array([2, 1, 0]), blank, max_symbols=2)
    assert tied.tokens == [[0] * 4, [0] * 2, []]  # a tie goes to the first index (token 0, not blank): torch.max


class CountedRnnt:
    """An `RnntMath` that counts its joint products and prediction-net steps (and the rows each covered)."""

    def __init__(self, inner) -> None:
        self.inner, self.xp = inner, inner.xp
        self.joints = self.predicts = self.predicted_rows = 0

    def project(self, encoded):
        return self.inner.project(encoded)

    def predict(self, tokens, h, c):
        self.predicts += 1
        self.predicted_rows += len(tokens)
        return self.inner.predict(tokens, h, c)

    def labels(self, f, rows, frames, g):
        self.joints += 1
        return self.inner.labels(f, rows, frames, g)


def test_window_saves_calls(model):
    """The look-ahead window gives the frame-by-frame decisions in fewer joint products (mostly-blank model); with
    the whole chunk as window: one joint product per emitted-symbol iteration plus one, and one prediction-net step
    per iteration over just the rows that emitted."""
    blank, layers, hidden = model.decoder.blank_idx, model.decoder.pred_rnn_layers, model.decoder.pred_hidden
    encoded = random_encoded(1, 3, 14, model.joint.encoder_hidden)
    maths_by_window, states = {}, {}
    for window in (1, 4, None):
        maths_by_window[window] = counted = CountedRnnt(maths(model)["array"])
        states[window] = Decoded.start(3, layers, hidden, blank).decode(counted, encoded, np.array([14, 9, 0]), blank,
                                                                        window=window)
    for window in (4, None):
        assert states[window].tokens == states[1].tokens
        assert states[window].frame_indices == states[1].frame_indices
    tokens = max(len(t) for t in states[1].tokens)
    emitted = sum(len(t) for t in states[1].tokens)
    whole, one = maths_by_window[None], maths_by_window[1]
    assert whole.joints <= tokens + 1 < one.joints and whole.joints <= maths_by_window[4].joints <= one.joints
    assert whole.predicts <= whole.joints + 1  # the chunk's start, then at most one per joint product
    assert whole.predicted_rows == 3 + emitted  # the chunk's start, then only the rows that emitted


def test_weights_round_trip(model, tmp_path):
    """The exported weights file loads back to the same arrays, and decodes like the weights it was made from."""
    from export.rnnt_weights import rnnt_weights_from_nemo

    weights = rnnt_weights_from_nemo(model)
    weights.save(tmp_path / "w.npz")
    loaded = RnntWeights.load(tmp_path / "w.npz")
    assert len(loaded.lstm) == model.decoder.pred_rnn_layers
    for a, b in zip(loaded.lstm, weights.lstm, strict=True):
        assert all(np.array_equal(getattr(a, n), getattr(b, n)) for n in ("w_ih", "w_hh", "b_ih", "b_hh"))
    assert np.array_equal(loaded.out_w, weights.out_w) and not loaded.embedding[model.decoder.blank_idx].any()

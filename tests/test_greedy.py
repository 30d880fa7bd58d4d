"""`mtasr.greedy` equals NeMo's streaming `greedy_batch` (label looping) token for token and frame for frame."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mtasr.greedy import DecoderState, greedy_decode, init_state, tokens_to_text, tokens_to_words

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


def assert_same(hyps: list, state: DecoderState, where: str) -> None:
    for row, hyp in enumerate(hyps):
        assert state.tokens[row] == hyp.y_sequence.tolist(), f"{where} row {row}: tokens differ"
        assert state.frame_indices[row] == torch.as_tensor(hyp.timestamp).tolist(), f"{where} row {row}: frames"


def emission_stats(state: DecoderState, lengths) -> np.ndarray:
    """Histogram of labels per frame over all rows (index = labels emitted at that frame)."""
    rows = zip(state.frame_indices, lengths, strict=True)
    counts = [np.bincount(np.asarray(f, dtype=np.int64), minlength=n) for f, n in rows]
    return np.bincount(np.concatenate(counts), minlength=MAX_SYMBOLS + 1)


def random_encoded(seed: int, batch: int, frames: int, dim: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, frames, dim)).astype(np.float32)


@pytest.mark.parametrize("window", [None, 1, 3])
@pytest.mark.parametrize("chunk", [14, 1])
def test_streaming_equals_nemo(model, chunk, window):
    """Rows of different lengths, chunk by chunk: same tokens and global frame indices after every chunk."""
    lengths = np.array(LENGTHS)
    blank, layers, hidden = model.decoder.blank_idx, model.decoder.pred_rnn_layers, model.decoder.pred_hidden
    encoded = random_encoded(0, len(lengths), int(lengths.max()), model.joint.encoder_hidden)
    step = torch_step(model)
    state, hyps = init_state(len(lengths), layers, hidden, blank), None
    n_chunks = -(-int(lengths.max()) // chunk)
    assert n_chunks >= 20
    for k in range(n_chunks):
        part = np.ascontiguousarray(encoded[:, k * chunk : (k + 1) * chunk])
        part_len = np.clip(lengths - k * chunk, 0, chunk)
        hyps = nemo_chunk(model, part, part_len, hyps)
        greedy_decode(step, part, part_len, state, blank, MAX_SYMBOLS, window=window)
        assert_same(hyps, state, f"chunk {k}")
    np.testing.assert_array_equal(state.frames, lengths)
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
    step = torch_step(model)
    states: dict[int, DecoderState] = {}
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
        merged = DecoderState.concat([states.get(s) or init_state(1, layers, hidden, blank) for s in group])
        greedy_decode(step, part, lengths, merged, blank, MAX_SYMBOLS)
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
    state = greedy_decode(torch_step(model), encoded, lengths, init_state(3, layers, hidden, blank), blank)
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
    state = greedy_decode(step, encoded, np.array([4, 0, 2]), init_state(3, 1, 1, blank), blank, max_symbols=None)
    assert state.frame_indices == [[1, 1, 3, 3, 3], [], [0] * 15 + [1] * 15]
    assert state.tokens[0] == [1, 2, 3, 0, 1] and state.frames.tolist() == [4, 0, 2]
    more = np.full((3, 1, 2), 100, dtype=np.float32)
    state = greedy_decode(step, more, np.array([1, 1, 1]), state, blank, max_symbols=3, frame_offset=100)
    assert [f[-3:] for f in state.frame_indices] == [[100] * 3] * 3 and state.tokens[1] == [1, 2, 3]
    assert state.tokens[0][-3:] == [2, 3, 0] and state.frames.tolist() == [5, 1, 3]
    zeros = lambda f, y, h, c: (np.zeros((len(y), vocab + 1), np.float32), h, c)  # noqa: E731
    tied = greedy_decode(zeros, encoded, np.array([2, 1, 0]), init_state(3, 1, 1, blank), blank, max_symbols=2)
    assert tied.tokens == [[0] * 4, [0] * 2, []]  # a tie goes to the first index (token 0, not blank): torch.max
    two = DecoderState.concat([state.select([2]), state.select([0])])
    assert two.tokens == [state.tokens[2], state.tokens[0]] and two.h.shape == (2, 1, 1)


def test_window_saves_calls(model):
    """The look-ahead window gives the frame-by-frame decisions in fewer calls (mostly-blank model)."""
    blank, layers, hidden = model.decoder.blank_idx, model.decoder.pred_rnn_layers, model.decoder.pred_hidden
    encoded = random_encoded(1, 3, 14, model.joint.encoder_hidden)
    step, calls, states = torch_step(model), {}, {}
    for window in (1, 4, None):
        calls[window] = 0

        def counted(*args, window=window):
            calls[window] += 1
            return step(*args)

        states[window] = greedy_decode(counted, encoded, np.array([14, 9, 0]), init_state(3, layers, hidden, blank),
                                       blank, MAX_SYMBOLS, window=window)
    for window in (4, None):
        assert states[window].tokens == states[1].tokens
        assert states[window].frame_indices == states[1].frame_indices
    tokens = max(len(t) for t in states[1].tokens)
    assert calls[None] <= tokens + 1 < calls[1] and calls[None] <= calls[4] <= calls[1], calls

"""Parity of mtasr.spkcache (numpy) with NeMo's SortformerModules speaker-cache updates (torch, CPU).

Both the asynchronous (``streaming_update_async``) and the synchronous (``streaming_update``, used by the
multitalker flow) updates are checked.

Both implementations are driven side by side over long synthetic streams: the same chunk embeddings, and the
same "graph" predictions computed from the (asserted identical) concatenated spkcache+FIFO+chunk input. After
every step the chunk predictions and every state field must match, and the speaker cache must have been
compressed many times so the comparison is not vacuous.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pytest
import torch
from nemo.collections.asr.modules.sortformer_modules import SortformerModules

import mtasr.spkcache.common as sc
from mtasr.spkcache import (
    AsyncStreamingState,
    SpeakerCacheParams,
    StreamingState,
    apply_mask_to_preds,
    concat_and_pad,
    init_streaming_state,
    init_streaming_state_async,
    streaming_update,
    streaming_update_async,
    torch_topk_indices,
)

ATOL = 1e-6
EMB_DIM = 24
STATE_FLOAT_FIELDS = ("spkcache", "spkcache_preds", "fifo", "fifo_preds", "mean_sil_emb")
STATE_INT_FIELDS = ("spkcache_lengths", "fifo_lengths", "n_sil_frames")


def _nemo_module(cfg: dict[str, Any], emb_dim: int = EMB_DIM) -> SortformerModules:
    return SortformerModules(fc_d_model=emb_dim, tf_d_model=8, **cfg).eval()


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


# ------------------------------------------------------------------------------------------------------------
# Synthetic streams: speaker turns with overlaps and silence; embeddings carry the activity logits in their
# first n_spk dims and a fake diarizer "graph" turns them back into sigmoid predictions (plus fresh noise per
# call, so FIFO predictions get refreshed like with a real model).
# ------------------------------------------------------------------------------------------------------------


def _activity(rng: np.random.Generator, n_frames: int, n_spk: int, n_talkers: int) -> np.ndarray:
    talkers = rng.permutation(n_spk)[:n_talkers]
    act = np.zeros((n_frames, n_spk), dtype=bool)
    t = 0
    while t < n_frames:
        seg = int(rng.integers(4, 60))
        kind = rng.random()
        if kind < 0.15:
            pass  # silence
        elif kind < 0.8:
            act[t : t + seg, rng.choice(talkers)] = True
        else:
            act[t : t + seg, rng.choice(talkers, size=min(2, n_talkers), replace=False)] = True
        t += seg
    return act


def _stream_embs(rng: np.random.Generator, act: np.ndarray, emb_dim: int) -> np.ndarray:
    emb = rng.standard_normal((act.shape[0], emb_dim)).astype(np.float32)
    logits = np.where(act, rng.normal(3.0, 1.5, act.shape), rng.normal(-3.5, 1.5, act.shape))
    emb[:, : act.shape[1]] = logits
    return emb


def _fake_graph(rng: np.random.Generator, embs: np.ndarray, n_spk: int, binary: bool) -> np.ndarray:
    logits = embs[:, :, :n_spk] + rng.normal(0.0, 0.4, embs[:, :, :n_spk].shape).astype(np.float32)
    if binary:  # saturated outputs: massive exact ties in the compression scores
        return np.where(logits > 0, np.float32(1.0), np.float32(0.0)).astype(np.float32)
    return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)


def _chunks(
    rng: np.random.Generator, embs: list[np.ndarray], chunk: int, lc_ctx: int, rc_ctx: int
) -> list[tuple[np.ndarray, np.ndarray, int, int]]:
    """Chunks as NeMo's streaming_feat_loader yields them (in embedding frames): first lc=0, last rc clipped."""
    n_max = max(e.shape[0] for e in embs)
    emb_dim = embs[0].shape[1]
    padded = rng.standard_normal((len(embs), n_max, emb_dim)).astype(np.float32) * 5  # garbage past the end
    for b, e in enumerate(embs):
        padded[b, : e.shape[0]] = e
    out = []
    stt = end = 0
    while end < n_max:
        lc = min(lc_ctx, stt)
        end = min(stt + chunk, n_max)
        rc = min(rc_ctx, n_max - end)
        x = padded[:, stt - lc : end + rc]
        if lc_ctx == 0 and rc_ctx == 0 and x.shape[1] < chunk:  # multitalker flow: fixed-size padded chunks
            x = np.concatenate(
                [x, rng.standard_normal((len(embs), chunk - x.shape[1], emb_dim)).astype(np.float32)], 1
            )
        lengths = np.array([np.clip(e.shape[0] - stt + lc, 0, x.shape[1]) for e in embs], dtype=np.int64)
        out.append((np.ascontiguousarray(x), lengths, lc, rc))
        stt = end
    return out


@dataclass
class Scenario:
    name: str
    chunk: int
    lc: int = 0
    rc: int = 0
    n_spk: int = 4
    talkers: tuple[int, int] = (4, 3)
    frames: tuple[int, int] = (1500, 1300)
    spkcache_len: int = 188
    fifo_len: int = 188
    update_period: int = 144
    sil_frames: int = 3
    binary: bool = False
    min_compressions_per_stream: int = 3
    extra: dict[str, Any] = field(default_factory=dict)

    def cfg(self) -> dict[str, Any]:
        return {
            "num_spks": self.n_spk,
            "spkcache_len": self.spkcache_len,
            "fifo_len": self.fifo_len,
            "chunk_len": self.chunk,
            "spkcache_update_period": self.update_period,
            "chunk_left_context": self.lc,
            "chunk_right_context": self.rc,
            "spkcache_sil_frames_per_spk": self.sil_frames,
            **self.extra,
        }


SCENARIOS = [
    # Multitalker flow (SpeakerTaggedASR): lc = rc = 0, chunk 14 ([70,13]), 7, and 1 ([70,0]).
    Scenario("multitalker_chunk14", chunk=14, frames=(2000, 1700)),
    Scenario("multitalker_chunk7", chunk=7, talkers=(2, 4), frames=(1500, 1300)),
    Scenario("multitalker_chunk1", chunk=1, talkers=(3, 2), frames=(1100, 950), min_compressions_per_stream=3),
    # Standalone tutorial setting: chunk 6, left context 1, right context 7, fifo 188, period 144, cache 188.
    Scenario("tutorial_6_lc1_rc7", chunk=6, lc=1, rc=7, frames=(1500, 1250)),
    # Small cache / FIFO: compression nearly every pop.
    Scenario(
        "small_chunk14",
        chunk=14,
        spkcache_len=40,
        fifo_len=20,
        update_period=12,
        frames=(900, 780),
        min_compressions_per_stream=30,
    ),
    Scenario(
        "small_chunk1",
        chunk=1,
        talkers=(2, 3),
        spkcache_len=40,
        fifo_len=20,
        update_period=12,
        frames=(800, 770),
        min_compressions_per_stream=30,
    ),
    Scenario(
        "small_tutorial",
        chunk=6,
        lc=1,
        rc=7,
        n_spk=3,
        talkers=(3, 2),
        spkcache_len=36,
        fifo_len=20,
        update_period=12,
        sil_frames=2,
        frames=(800, 760),
        min_compressions_per_stream=30,
        extra={"scores_boost_latest": 0.1, "strong_boost_rate": 0.5},
    ),
    Scenario(
        "small_fifo0_nosil",
        chunk=14,
        spkcache_len=40,
        fifo_len=0,
        update_period=12,
        sil_frames=0,
        frames=(800, 760),
        min_compressions_per_stream=30,
    ),
    # Saturated (0/1) predictions: exact score ties everywhere, exercising torch.topk's tie-breaking.
    Scenario(
        "ties_small_chunk7",
        chunk=7,
        talkers=(2, 4),
        spkcache_len=40,
        fifo_len=20,
        update_period=12,
        frames=(800, 760),
        binary=True,
        min_compressions_per_stream=30,
    ),
    Scenario("ties_chunk14", chunk=14, talkers=(4, 2), frames=(1500, 1400), binary=True),
    # An 8-output Sortformer: 20 cache frames per speaker (188 // 8 - 3 silence frames).
    Scenario("multitalker_8spk_chunk14", chunk=14, n_spk=8, talkers=(8, 6), frames=(2000, 1700)),
]


def _assert_state_equal(nemo_state: Any, state: AsyncStreamingState, where: str, maxdiff: dict[str, float]) -> None:
    assert nemo_state.spk_perm is None, where
    for name in STATE_FLOAT_FIELDS:
        ref, got = getattr(nemo_state, name), getattr(state, name)
        if ref is None or got is None:
            assert ref is None and got is None, f"{where}: {name} None mismatch"
            continue
        ref = ref.detach().numpy()
        assert got.dtype == np.float32 and got.shape == ref.shape, f"{where}: {name} {got.shape} vs {ref.shape}"
        np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL, err_msg=f"{where}: {name}")
        maxdiff[name] = max(maxdiff.get(name, 0.0), float(np.max(np.abs(got - ref), initial=0.0)))
    for name in STATE_INT_FIELDS:
        ref, got = getattr(nemo_state, name).numpy(), getattr(state, name)
        assert got.dtype == np.int64, f"{where}: {name} dtype {got.dtype}"
        np.testing.assert_array_equal(got, ref, err_msg=f"{where}: {name}")


def compare_with_nemo(scn: Scenario, seed: int) -> dict[str, Any]:
    """Run NeMo and the numpy port side by side over one scenario; assert equality after every step."""
    rng = np.random.default_rng(seed)
    cfg = scn.cfg()
    mod = _nemo_module(cfg)
    params = SpeakerCacheParams.from_config({**cfg, "fc_d_model": EMB_DIM, "unused_key": "x"})
    n_nemo_compress_rows = 0
    orig_compress = mod._compress_spkcache

    def counting_compress(*args: Any, **kwargs: Any) -> Any:
        nonlocal n_nemo_compress_rows
        n_nemo_compress_rows += kwargs["emb_seq"].shape[0]
        return orig_compress(*args, **kwargs)

    mod._compress_spkcache = counting_compress

    embs = [
        _stream_embs(rng, _activity(rng, n, scn.n_spk, k), EMB_DIM)
        for n, k in zip(scn.frames, scn.talkers, strict=True)
    ]
    batch = len(embs)
    nemo_state = mod.init_streaming_state(batch_size=batch, async_streaming=True)
    state = init_streaming_state_async(params, batch, EMB_DIM)
    maxdiff: dict[str, float] = {}
    _assert_state_equal(nemo_state, state, f"{scn.name} init", maxdiff)

    compressions = np.zeros(batch, dtype=np.int64)
    n_frames_out = np.zeros(batch, dtype=np.int64)
    was_full = np.zeros(batch, dtype=bool)
    for step, (chunk, lengths, lc, rc) in enumerate(_chunks(rng, embs, scn.chunk, scn.lc, scn.rc)):
        where = f"{scn.name} step {step}"
        # Graph input in NeMo's layout, built from each side's own state.
        t_in, t_len = mod.concat_and_pad(
            [nemo_state.spkcache, nemo_state.fifo, _t(chunk)],
            [nemo_state.spkcache_lengths, nemo_state.fifo_lengths, _t(lengths)],
        )
        m_in, m_len = concat_and_pad(
            [state.spkcache, state.fifo, chunk], [state.spkcache_lengths, state.fifo_lengths, lengths]
        )
        np.testing.assert_allclose(m_in, t_in.numpy(), rtol=0, atol=ATOL, err_msg=where)
        np.testing.assert_array_equal(m_len, t_len.numpy(), err_msg=where)
        raw = _fake_graph(rng, m_in, scn.n_spk, scn.binary)
        t_preds = mod.apply_mask_to_preds(_t(raw), t_len)
        m_preds = apply_mask_to_preds(raw, m_len)
        np.testing.assert_array_equal(m_preds, t_preds.numpy(), err_msg=where)

        before = state.copy()
        nemo_state, t_chunk_preds = mod.streaming_update_async(
            streaming_state=nemo_state, chunk=_t(chunk), chunk_lengths=_t(lengths), preds=t_preds, lc=lc, rc=rc
        )
        new_state, chunk_preds = streaming_update_async(params, state, chunk, lengths, m_preds, lc=lc, rc=rc)

        # The input state must be left untouched.
        for f in (*STATE_FLOAT_FIELDS, *STATE_INT_FIELDS):
            old, cur = getattr(before, f), getattr(state, f)
            assert (old is None and cur is None) or np.array_equal(old, cur), f"{where}: input {f} mutated"

        ref_chunk_preds = t_chunk_preds.numpy()
        assert chunk_preds.shape == ref_chunk_preds.shape == (batch, chunk.shape[1] - lc - rc, scn.n_spk), where
        np.testing.assert_allclose(chunk_preds, ref_chunk_preds, rtol=0, atol=ATOL, err_msg=f"{where}: chunk_preds")
        maxdiff["chunk_preds"] = max(
            maxdiff.get("chunk_preds", 0.0), float(np.abs(chunk_preds - ref_chunk_preds).max())
        )
        _assert_state_equal(nemo_state, new_state, where, maxdiff)

        chunk_lens = np.clip(lengths - lc, 0, chunk.shape[1] - lc - rc)
        popped = state.fifo_lengths + chunk_lens - new_state.fifo_lengths
        compressions += (popped > 0) & (state.spkcache_lengths + popped > params.spkcache_len)
        was_full |= new_state.spkcache_lengths == params.spkcache_len
        n_frames_out += chunk_lens
        state = new_state

    np.testing.assert_array_equal(n_frames_out, scn.frames)  # every frame got its prediction exactly once
    assert int(compressions.sum()) == n_nemo_compress_rows
    assert was_full.all() and (compressions >= scn.min_compressions_per_stream).all(), compressions
    return {"compressions": compressions.tolist(), "maxdiff": maxdiff, "steps": step + 1}


@pytest.mark.parametrize("scn", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_streaming_update_matches_nemo(scn: Scenario, monkeypatch: pytest.MonkeyPatch) -> None:
    n_exact_topk = 0
    orig = sc._stdlib_topk

    def counting(vals: list[float], k: int) -> np.ndarray:
        nonlocal n_exact_topk
        n_exact_topk += 1
        return orig(vals, k)

    monkeypatch.setattr(sc, "_stdlib_topk", counting)
    t0 = time.perf_counter()
    result = compare_with_nemo(scn, seed=sum(map(ord, scn.name)))
    overall = max(result["maxdiff"].values())
    print(
        f"\n{scn.name}: steps={result['steps']} compressions/stream={result['compressions']} "
        f"tie-replayed topk calls={n_exact_topk} max|diff|={overall:.3g} ({time.perf_counter() - t0:.2f}s)"
    )
    if scn.binary:
        assert n_exact_topk > 0  # ties really crossed the top-k boundary


# ------------------------------------------------------------------------------------------------------------
# Synchronous update (multitalker flow: SpeakerTaggedASR resets the diarizer with async_streaming=False).
# ------------------------------------------------------------------------------------------------------------

# Sortformer settings of NeMo's multitalker tutorial; chunk_len 6 / rc 7 sit on the module, chunks come from the ASR.
_MT = {"spkcache_len": 188, "fifo_len": 188, "update_period": 144, "extra": {"chunk_len": 6, "chunk_right_context": 7}}
_SMALL = {"spkcache_len": 40, "fifo_len": 20, "update_period": 12, "min_compressions_per_stream": 30}
SYNC_SCENARIOS = [
    Scenario("sync_mt_chunk14", chunk=14, frames=(2000,) * 2, min_compressions_per_stream=10, **_MT),
    Scenario("sync_mt_chunk7", chunk=7, talkers=(2, 4), frames=(1500,) * 2, min_compressions_per_stream=7, **_MT),
    Scenario("sync_mt_chunk1", chunk=1, talkers=(3, 2), frames=(1000,) * 2, min_compressions_per_stream=4, **_MT),
    Scenario("sync_small_chunk14", chunk=14, frames=(800,) * 2, **_SMALL),
    Scenario("sync_small_chunk7", chunk=7, talkers=(2, 4), frames=(780,) * 2, **_SMALL),
    Scenario("sync_small_chunk1", chunk=1, talkers=(2, 3), frames=(760,) * 2, **_SMALL),
    Scenario("sync_small_lc1_rc7", chunk=6, lc=1, rc=7, frames=(770,) * 2, **_SMALL),
    Scenario("sync_small_fifo0_nosil", chunk=14, sil_frames=0, frames=(760,) * 2, **{**_SMALL, "fifo_len": 0}),
    Scenario("sync_ties_small_chunk7", chunk=7, talkers=(2, 4), frames=(760,) * 2, binary=True, **_SMALL),
    Scenario("sync_mt_8spk_chunk14", chunk=14, n_spk=8, talkers=(8, 5), frames=(2000,) * 2,
             min_compressions_per_stream=10, **_MT),
]


def _assert_sync_state_equal(nemo_state: Any, state: StreamingState, where: str, maxdiff: dict) -> None:
    assert nemo_state.spk_perm is None and nemo_state.spkcache_lengths is None, where
    assert nemo_state.fifo_lengths is None, where
    for name in STATE_FLOAT_FIELDS:
        ref, got = getattr(nemo_state, name), getattr(state, name)
        assert (ref is None) == (got is None), f"{where}: {name} is {got is None} vs NeMo {ref is None}"
        if ref is None:
            continue
        ref = ref.detach().numpy()
        assert got.dtype == np.float32 and got.shape == ref.shape, f"{where}: {name} {got.shape} vs {ref.shape}"
        np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL, err_msg=f"{where}: {name}")
        maxdiff[name] = max(maxdiff.get(name, 0.0), float(np.max(np.abs(got - ref), initial=0.0)))
    assert state.n_sil_frames.dtype == np.int64, where
    np.testing.assert_array_equal(state.n_sil_frames, nemo_state.n_sil_frames.numpy(), err_msg=f"{where}: n_sil")


def compare_sync_with_nemo(scn: Scenario, batch: int, seed: int) -> dict[str, Any]:
    """Drive NeMo's ``streaming_update`` (eval) and :func:`streaming_update` side by side; assert every step."""
    rng = np.random.default_rng(seed)
    cfg = scn.cfg()
    mod = _nemo_module(cfg)
    params = SpeakerCacheParams.from_config(cfg)
    n_nemo_compress_rows = 0
    orig_compress = mod._compress_spkcache

    def counting_compress(*args: Any, **kwargs: Any) -> Any:
        nonlocal n_nemo_compress_rows
        n_nemo_compress_rows += kwargs["emb_seq"].shape[0]
        return orig_compress(*args, **kwargs)

    mod._compress_spkcache = counting_compress
    embs = [_stream_embs(rng, _activity(rng, scn.frames[b], scn.n_spk, scn.talkers[b]), EMB_DIM) for b in range(batch)]
    nemo_state = mod.init_streaming_state(batch_size=batch, async_streaming=False)
    state = init_streaming_state(params, batch, EMB_DIM)
    maxdiff: dict[str, float] = {}
    _assert_sync_state_equal(nemo_state, state, f"{scn.name} init", maxdiff)

    compressions = n_frames_out = 0
    first_compression_step = None
    for step, (chunk, lengths, lc, rc) in enumerate(_chunks(rng, embs, scn.chunk, scn.lc, scn.rc)):
        where = f"{scn.name} B={batch} step {step}"
        # Graph input as forward_streaming_step's synchronous branch builds it.
        t_in = mod.concat_embs([nemo_state.spkcache, nemo_state.fifo, _t(chunk)], dim=1)
        t_len = nemo_state.spkcache.shape[1] + nemo_state.fifo.shape[1] + _t(lengths)
        # The server's graph concatenates only the valid frames, so its output lacks the padded chunk tail.
        m_in, m_len = concat_and_pad([state.spkcache, state.fifo, chunk], [*state.lengths(), lengths])
        np.testing.assert_allclose(m_in, t_in.numpy()[:, : m_in.shape[1]], rtol=0, atol=ATOL, err_msg=where)
        np.testing.assert_array_equal(m_len, t_len.numpy(), err_msg=where)
        raw = _fake_graph(rng, t_in.numpy(), scn.n_spk, scn.binary)
        t_preds = mod.apply_mask_to_preds(_t(raw), t_len)
        m_preds = apply_mask_to_preds(raw[:, : m_in.shape[1]], m_len)

        before = state.copy()
        nemo_state, t_chunk_preds = mod.streaming_update(
            streaming_state=nemo_state, chunk=_t(chunk), preds=t_preds, lc=lc, rc=rc
        )
        new_state, chunk_preds = streaming_update(params, state, chunk, m_preds, lc=lc, rc=rc)
        for f in fields(StreamingState):  # the input state must be left untouched
            old, cur = getattr(before, f.name), getattr(state, f.name)
            assert (old is None and cur is None) or np.array_equal(old, cur), f"{where}: input {f.name} mutated"

        ref_chunk_preds = t_chunk_preds.numpy()
        assert chunk_preds.shape == ref_chunk_preds.shape == (batch, chunk.shape[1] - lc - rc, scn.n_spk), where
        np.testing.assert_allclose(chunk_preds, ref_chunk_preds, rtol=0, atol=ATOL, err_msg=f"{where}: chunk_preds")
        maxdiff["chunk_preds"] = max(
            maxdiff.get("chunk_preds", 0.0), float(np.abs(chunk_preds - ref_chunk_preds).max(initial=0.0))
        )
        _assert_sync_state_equal(nemo_state, new_state, where, maxdiff)

        n_cache, n_fifo = state.spkcache.shape[1], state.fifo.shape[1]
        popped = n_fifo + chunk_preds.shape[1] - new_state.fifo.shape[1]
        if popped > 0 and n_cache + popped > params.spkcache_len:
            compressions += 1
            assert new_state.spkcache.shape[1] == params.spkcache_len, where
            if state.spkcache_preds is None:
                first_compression_step = first_compression_step or step
        assert (new_state.spkcache_preds is None) == (compressions == 0), where
        n_frames_out += chunk_preds.shape[1]
        state = new_state

    assert n_frames_out >= scn.frames[0]  # the multitalker flow's last chunk is padded, padding frames included
    assert compressions * batch == n_nemo_compress_rows
    assert compressions >= scn.min_compressions_per_stream, compressions
    return {"compressions": compressions, "first": first_compression_step, "maxdiff": maxdiff, "steps": step + 1}


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("scn", SYNC_SCENARIOS, ids=[s.name for s in SYNC_SCENARIOS])
def test_streaming_update_sync_matches_nemo(scn: Scenario, batch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    n_exact_topk = 0
    orig = sc._stdlib_topk

    def counting(vals: list[float], k: int) -> np.ndarray:
        nonlocal n_exact_topk
        n_exact_topk += 1
        return orig(vals, k)

    monkeypatch.setattr(sc, "_stdlib_topk", counting)
    t0 = time.perf_counter()
    result = compare_sync_with_nemo(scn, batch, seed=sum(map(ord, scn.name)) + batch)
    print(
        f"\n{scn.name} B={batch}: steps={result['steps']} compressions/stream={result['compressions']} "
        f"(first at step {result['first']}) tie-replayed topk calls={n_exact_topk} "
        f"max|diff|={max(result['maxdiff'].values()):.3g} ({time.perf_counter() - t0:.2f}s)"
    )
    if scn.binary:
        assert n_exact_topk > 0  # ties really crossed the top-k boundary


def _context_graph(embs: np.ndarray, lengths: np.ndarray, n_spk: int) -> np.ndarray:
    """Deterministic fake graph whose output depends on the whole input (like self-attention), not just the frame."""
    valid = (np.arange(embs.shape[1])[None, :] < lengths[:, None])[..., None]
    ctx = np.tanh((embs[:, :, n_spk : 2 * n_spk] * valid).sum(1) / np.maximum(lengths, 1)[:, None])
    logits = embs[:, :, :n_spk] + np.float32(2.0) * ctx[:, None, :]
    return apply_mask_to_preds((1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32), lengths)


def test_sync_and_async_updates_differ() -> None:
    """Same B=1 stream, same graph: async and sync agree until the first compression, then differ.

    At the first compression the synchronous update scores the cache frames with their *current* predictions,
    the asynchronous one with the predictions they had when they left the FIFO; so neither may stand in for the
    other (the multitalker flow needs the synchronous one).
    """
    scn = Scenario("sync_vs_async", chunk=14, frames=(1000,), talkers=(4,), **_MT)
    params = SpeakerCacheParams.from_config(scn.cfg())
    rng = np.random.default_rng(7)
    embs = [_stream_embs(rng, _activity(rng, 1000, scn.n_spk, 4), EMB_DIM)]
    a_state, s_state = init_streaming_state_async(params, 1, EMB_DIM), init_streaming_state(params, 1, EMB_DIM)
    first, diverged_out = None, []
    for step, (chunk, lengths, lc, rc) in enumerate(_chunks(rng, embs, scn.chunk, 0, 0)):
        a_in, a_len = concat_and_pad(
            [a_state.spkcache, a_state.fifo, chunk], [a_state.spkcache_lengths, a_state.fifo_lengths, lengths]
        )
        s_in, s_len = concat_and_pad([s_state.spkcache, s_state.fifo, chunk], [*s_state.lengths(), lengths])
        a_graph = _context_graph(a_in, a_len, 4)
        a_state, a_out = streaming_update_async(params, a_state, chunk, lengths, a_graph, lc, rc)
        s_state, s_out = streaming_update(params, s_state, chunk, _context_graph(s_in, s_len, 4), lc, rc)
        if first is None:
            np.testing.assert_array_equal(s_in, a_in)  # identical graph inputs until the first compression
            np.testing.assert_array_equal(s_out, a_out)
            if s_state.spkcache_preds is not None:
                first = step
                n = s_state.spkcache.shape[1]
                assert n == int(a_state.spkcache_lengths[0]) == params.spkcache_len
                assert not np.array_equal(s_state.spkcache_preds, a_state.spkcache_preds), "cache preds agree"
                assert not np.array_equal(s_state.spkcache, a_state.spkcache), "same frames kept"
                print(
                    f"\nfirst compression at step {step}: max|spkcache_preds diff|="
                    f"{np.abs(s_state.spkcache_preds - a_state.spkcache_preds).max():.3g}, "
                    f"cache frames selected differently: {int((s_state.spkcache != a_state.spkcache).any(-1).sum())}"
                )
        elif lengths[0] == chunk.shape[1]:  # (the last, padded chunk differs anyway: sync appends its padding)
            diverged_out.append(float(np.abs(s_out - a_out).max()))
    assert first is not None
    assert max(diverged_out) > 0, max(diverged_out)
    n_differ = sum(d > 0 for d in diverged_out)
    print(f"chunk preds after it: max|diff|={max(diverged_out):.3g}, steps differing: {n_differ}/{len(diverged_out)}")


def test_sync_state_basics() -> None:
    params = SpeakerCacheParams(spkcache_len=40, fifo_len=20, spkcache_update_period=12)
    state = init_streaming_state(params, 2, 8)
    assert state.spkcache.shape == (2, 0, 8) and state.fifo.shape == (2, 0, 8)
    assert state.spkcache_preds is None and state.fifo_preds is None
    for lengths in state.lengths():
        assert lengths.dtype == np.int64 and lengths.tolist() == [0, 0]
    state = StreamingState(**{**vars(state), "fifo": np.ones((2, 5, 8), np.float32)})
    with pytest.raises(ValueError, match="frames"):
        streaming_update(params, state, np.zeros((2, 14, 8), np.float32), np.zeros((2, 4, 4), np.float32))
    new_state, chunk_preds = streaming_update(  # a chunk tail missing from preds counts as masked
        params, state, np.ones((2, 14, 8), np.float32), np.ones((2, 12, 4), np.float32)
    )
    np.testing.assert_array_equal(chunk_preds[:, :7], 1)
    np.testing.assert_array_equal(chunk_preds[:, 7:], 0)
    assert new_state.fifo.shape == (2, 19, 8) and new_state.fifo_preds.shape == (2, 19, 4)
    with pytest.raises(ValueError, match="n_spk"):
        streaming_update(params, state, np.zeros((2, 14, 8), np.float32), np.zeros((2, 14, 3), np.float32))


# ------------------------------------------------------------------------------------------------------------
# Building blocks, each against NeMo / torch on identical inputs.
# ------------------------------------------------------------------------------------------------------------


def test_topk_index_set_matches_torch() -> None:
    rng = np.random.default_rng(0)
    for _ in range(1500):
        n = int(rng.integers(1, 1400))
        k = int(rng.integers(1, n + 1)) if rng.random() < 0.7 else int(rng.integers(1, n // 64 + 2))
        k = min(k, n)
        vals = rng.integers(0, int(rng.integers(1, 6)), n).astype(np.float32)  # heavy ties
        if rng.random() < 0.5:
            vals[rng.random(n) < 0.5] = -np.inf
        if rng.random() < 0.3:
            vals[rng.random(n) < 0.05] = np.inf
        if rng.random() < 0.1:
            vals[rng.random(n) < 0.05] = np.nan
        if rng.random() < 0.3:
            vals = vals + rng.standard_normal(n).astype(np.float32)  # mostly unique values
        ref = torch.topk(_t(vals), k, largest=True, sorted=False).indices.numpy()
        got = torch_topk_indices(vals, k)
        assert got.shape == (k,) and set(got.tolist()) == set(ref.tolist()), (n, k)


def test_sums_match_torch_bitwise() -> None:
    rng = np.random.default_rng(1)
    for n in [*range(1, 70), 127, 128, 129, 144, 188, 255, 256, 257, 300, 332, 600]:
        for dim in (EMB_DIM, 40, 64, 100, 512):
            x = rng.standard_normal((n, dim)).astype(np.float32) * np.float32(rng.uniform(0.1, 10))
            ref = torch.sum(_t(x[None]), dim=1)[0].numpy()
            np.testing.assert_array_equal(sc._sum_frames(x), ref, err_msg=f"frames n={n} dim={dim}")
        for n_spk in range(1, 20):
            p = rng.standard_normal((n, n_spk)).astype(np.float32)
            ref = torch.sum(_t(p[None]), dim=2)[0].numpy()
            np.testing.assert_array_equal(sc._sum_last_axis(p), ref, err_msg=f"speakers n={n} n_spk={n_spk}")


def _random_preds(rng: np.random.Generator, shape: tuple[int, ...], binary: bool) -> np.ndarray:
    logits = rng.normal(-1.0, 3.0, shape)
    if binary:
        return np.where(logits > 0, 1.0, 0.0).astype(np.float32)
    preds = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    preds[rng.random(shape) < 0.05] = 0.0  # masked frames
    return preds


@pytest.mark.parametrize("binary", [False, True])
def test_compression_pieces_match_nemo(binary: bool) -> None:
    rng = np.random.default_rng(2 + binary)
    for cfg in (
        {"num_spks": 4, "spkcache_len": 188, "spkcache_sil_frames_per_spk": 3},
        {"num_spks": 4, "spkcache_len": 40, "spkcache_sil_frames_per_spk": 3},
        {"num_spks": 2, "spkcache_len": 40, "spkcache_sil_frames_per_spk": 0, "scores_boost_latest": 0.0},
        {"num_spks": 3, "spkcache_len": 30, "spkcache_sil_frames_per_spk": 1, "max_index": 50},
    ):
        mod = _nemo_module(cfg)
        params = SpeakerCacheParams.from_config(cfg)
        for n_new in (1, 12, 144):
            n_frames = params.spkcache_len + n_new
            preds = _random_preds(rng, (3, n_frames, params.n_spk), binary)
            embs = rng.standard_normal((3, n_frames, EMB_DIM)).astype(np.float32)
            sil = rng.standard_normal((3, EMB_DIM)).astype(np.float32)

            base = mod._get_log_pred_scores(_t(preds))
            np_base = base.numpy().copy()
            for b in range(3):  # log is correctly rounded here, torch's (MKL) is within 1 ulp of it
                np.testing.assert_allclose(sc._log_pred_scores(params, preds[b]), np_base[b], rtol=1e-6, atol=1e-6)
            per_spk = params.spkcache_len // params.n_spk - params.spkcache_sil_frames_per_spk
            min_pos = math.floor(per_spk * params.min_pos_scores_rate)
            # From here on, same input scores -> identical outputs for every discrete step.
            t_dis = mod._disable_low_scores(_t(preds), base, min_pos)
            for b in range(3):
                np.testing.assert_array_equal(sc._disable_low_scores(preds[b], np_base[b], min_pos), t_dis[b].numpy())
            for k, scale in ((math.floor(per_spk * 0.75), 2.0), (math.floor(per_spk * 1.5), 1.0)):
                t_boost = mod._boost_topk_scores(t_dis.clone(), k, scale_factor=scale)
                got = sc._boost_topk_scores(t_dis.numpy(), k, scale_factor=scale)  # all streams at once
                np.testing.assert_array_equal(got, t_boost.numpy())
            padded = torch.cat([t_dis, torch.full((3, params.spkcache_sil_frames_per_spk, params.n_spk), math.inf)], 1)
            t_idx, t_off = mod._get_topk_indices(padded)
            idx, off = sc._topk_frame_indices(params, padded.numpy())
            np.testing.assert_array_equal(idx, t_idx.numpy())
            np.testing.assert_array_equal(off, t_off.numpy())

            # Whole compression, end to end.
            t_emb, t_pr, _ = mod._compress_spkcache(_t(embs), _t(preds), _t(sil), permute_spk=False)
            for b in range(3):
                got_emb, got_pr = sc.compress_spkcache(params, embs[b], preds[b], sil[b])
                np.testing.assert_array_equal(got_emb, t_emb[b].numpy())
                np.testing.assert_array_equal(got_pr, t_pr[b].numpy())

            # Silence profile (bit-exact, including ATen's cascade summation order).
            n_sil = rng.integers(0, 500, 3)
            sil_preds = preds * np.float32(0.1)
            sil_preds[1] += np.float32(0.3)  # row 1 has no silent frame: NeMo still recomputes it (batch-wide)
            t_mean, t_n = mod._get_silence_profile(_t(sil), _t(n_sil), _t(embs), _t(sil_preds))
            mean, n = sc.silence_profile(params, sil, n_sil, embs, sil_preds)
            np.testing.assert_array_equal(mean, t_mean.numpy())
            np.testing.assert_array_equal(n, t_n.numpy())
            for b in range(3):  # one row at a time, as the asynchronous update calls it
                mean, n = sc.silence_profile(
                    params, sil[b : b + 1], n_sil[b : b + 1], embs[b : b + 1], sil_preds[b : b + 1]
                )
                t_mean, t_n = mod._get_silence_profile(
                    _t(sil[b : b + 1]), _t(n_sil[b : b + 1]), _t(embs[b : b + 1]), _t(sil_preds[b : b + 1])
                )
                np.testing.assert_array_equal(mean, t_mean.numpy())
                np.testing.assert_array_equal(n, t_n.numpy())


def test_init_mask_concat_and_params() -> None:
    cfg = {"num_spks": 4, "spkcache_len": 188, "fifo_len": 188, "chunk_len": 14, "spkcache_update_period": 144}
    mod = _nemo_module(cfg, emb_dim=32)
    params = SpeakerCacheParams.from_config({**cfg, "dropout_rate": 0.5, "fc_d_model": 32})
    assert params.n_spk == 4 and params.max_index == 99999 and params.sil_threshold == 0.2
    assert SpeakerCacheParams.from_config(params.to_dict()) == params
    ref = mod.init_streaming_state(batch_size=3, async_streaming=True)
    got = init_streaming_state_async(params, 3, 32)
    _assert_state_equal(ref, got, "init", {})
    assert ref.fifo_preds is None and got.fifo_preds is None

    rng = np.random.default_rng(5)
    preds = rng.random((3, 50, 4)).astype(np.float32)
    lengths = np.array([0, 17, 50], dtype=np.int64)
    np.testing.assert_array_equal(apply_mask_to_preds(preds, lengths), mod.apply_mask_to_preds(_t(preds), _t(lengths)))

    parts = [rng.standard_normal((3, n, 8)).astype(np.float32) for n in (10, 6, 9)]
    lens = [np.array([10, 3, 0]), np.array([0, 6, 2]), np.array([9, 1, 0])]
    t_out, t_len = SortformerModules.concat_and_pad([_t(p) for p in parts], [_t(x) for x in lens])
    out, total = concat_and_pad(parts, lens)
    np.testing.assert_array_equal(out, t_out.numpy())
    np.testing.assert_array_equal(total, t_len.numpy())

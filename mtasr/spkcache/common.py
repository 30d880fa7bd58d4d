"""Shared parts of the speaker-cache update: parameters, graph-output masking, the silence profile and the
cache compression (NeMo ``_compress_spkcache`` and what it calls), bit-exact against NeMo on CPU.

Bit-exactness notes (reference: NeMo on CPU PyTorch):

* ``torch.topk(..., sorted=False)`` on CPU is ``std::nth_element`` (or ``std::partial_sort`` when
  ``k * 64 <= n``) from libstdc++ over ``(value, index)`` pairs compared by value only, so which of several
  equal scores is kept is decided by that algorithm, not by index order. When the k-th largest score is tied
  across the selection boundary, :func:`torch_topk_indices` replays libstdc++'s introselect / heap-select
  step by step; otherwise the (unique) top-k set is taken with numpy.
* Sums reproduce ATen's CPU summation order (cascade / 4-way ILP ``row_sum``) over speakers and over the
  frames of the silence-embedding sum, so ``mean_sil_emb`` is bit-identical to a serial CPU reduction.
* ``log`` is computed in float64 and rounded to float32 (correctly rounded). PyTorch's float32 log (MKL VML
  on CPU) is within 1 ulp of it, so only scores closer than ~2 ulp can be ordered differently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from mtasr.xp import array_module

F32 = np.float32
_NEG_INF = F32(-np.inf)
# float32 lanes of the SIMD vector ATen's CPU sum kernel is compiled for (AVX2 width, also on AVX-512 machines);
# it only decides the summation order (see _sum_frames / _sum_last_axis).
_ATEN_FLOAT_VEC_WIDTH = 8

# NeMo config key -> dataclass field, for keys that are spelled differently.
_CONFIG_ALIASES = {"num_spks": "n_spk"}


@dataclass(frozen=True)
class SpeakerCacheParams:
    """Fields of NeMo's ``sortformer_modules`` config used by the streaming update (defaults = NeMo's)."""

    n_spk: int = 4
    spkcache_len: int = 188
    fifo_len: int = 0
    chunk_len: int = 188
    spkcache_update_period: int = 188
    spkcache_sil_frames_per_spk: int = 3
    pred_score_threshold: float = 0.25
    max_index: int = 99999
    scores_boost_latest: float = 0.05
    sil_threshold: float = 0.2
    strong_boost_rate: float = 0.75
    weak_boost_rate: float = 1.5
    min_pos_scores_rate: float = 0.5
    # Not read by the update; kept so callers can derive chunking (lc/rc) from the same object.
    chunk_left_context: int = 1
    chunk_right_context: int = 1
    subsampling_factor: int = 8

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> SpeakerCacheParams:
        """Build from a ``sortformer_modules`` config mapping (``num_spks`` or ``n_spk``; extra keys ignored)."""
        names = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in cfg.items():
            name = _CONFIG_ALIASES.get(key, key)
            if name in names and value is not None:
                kwargs[name] = float(value) if names[name].type == "float" else int(value)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all fields (round-trips through :meth:`from_config`)."""
        return asdict(self)


def deep_copy(state: Any) -> Any:
    return replace(state, **{f.name: copy_or_none(getattr(state, f.name)) for f in fields(state)})


def copy_or_none(value: np.ndarray | None) -> np.ndarray | None:
    return None if value is None else value.copy()


def apply_mask_to_preds(preds: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Zero the predictions of frames at or beyond ``lengths`` (NeMo ``apply_mask_to_preds``)."""
    preds = np.asarray(preds)
    valid = np.arange(preds.shape[1])[None, :, None] < np.asarray(lengths).reshape(-1, 1, 1)
    return np.where(valid, preds, np.zeros((), dtype=preds.dtype))


def concat_and_pad(embs: Sequence[np.ndarray], lengths: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per stream, concatenate the first ``lengths[i]`` frames of each ``embs[i]``; zero-pad (NeMo ``concat_and_pad``).

    This is the layout ``streaming_update`` expects ``preds`` in: spkcache, then FIFO, then chunk frames.
    """
    if len(embs) != len(lengths):
        raise ValueError(f"Length lists must have the same length, got {len(embs)} and {len(lengths)}.")
    if len(embs) == 0:
        raise ValueError("Cannot concatenate empty lists of embeddings or lengths.")
    batch_size, emb_dim = embs[0].shape[0], embs[0].shape[2]
    lens = [np.asarray(length, dtype=np.int64) for length in lengths]
    total = np.sum(np.stack(lens), axis=0)
    out = np.zeros((batch_size, int(total.max()), emb_dim), dtype=embs[0].dtype)
    for b in range(batch_size):
        start = 0
        for emb, length in zip(embs, lens, strict=True):
            n = int(length[b])
            out[b, start : start + n] = emb[b, :n]
            start += n
    return out, total


# Speaker-cache compression (single stream: every NeMo op here is independent per batch row).
# ----------------------------------------------------------------------------------------------------------------


def compress_spkcache(
    params: SpeakerCacheParams, emb_seq: np.ndarray, preds: np.ndarray, mean_sil_emb: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``spkcache_len`` most important frames of (n_frames, D) ``emb_seq`` (NeMo ``_compress_spkcache``)."""
    frame_idx, is_disabled = compression_choice(params, preds[None])
    embs, kept = compressed_rows(emb_seq[None], preds[None], mean_sil_emb[None], frame_idx, is_disabled)
    return embs[0], kept[0]


def compression_choice(params: SpeakerCacheParams, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which frames NeMo's ``_compress_spkcache`` keeps, for B streams of equal length at once: (B, n_frames, n_spk)
    predictions -> frame indices (B, spkcache_len), speaker-major, and which of them are disabled (silence)."""
    n_spk = preds.shape[-1]
    per_spk = params.spkcache_len // n_spk - params.spkcache_sil_frames_per_spk
    strong_boost_per_spk = math.floor(per_spk * params.strong_boost_rate)
    weak_boost_per_spk = math.floor(per_spk * params.weak_boost_rate)
    min_pos_scores_per_spk = math.floor(per_spk * params.min_pos_scores_rate)

    scores = _log_pred_scores(params, preds)
    scores = _disable_low_scores(preds, scores, min_pos_scores_per_spk)
    if params.scores_boost_latest > 0:  # boost the frames just moved in from the FIFO
        scores[:, params.spkcache_len :] += F32(params.scores_boost_latest)
    scores = _boost_topk_scores(scores, strong_boost_per_spk, scale_factor=2.0)  # >= K frames per speaker
    scores = _boost_topk_scores(scores, weak_boost_per_spk, scale_factor=1.0)  # no speaker dominates
    if params.spkcache_sil_frames_per_spk > 0:  # room for silence frames at the end of each speaker block
        pad = np.full((scores.shape[0], params.spkcache_sil_frames_per_spk, n_spk), np.inf, dtype=F32)
        scores = np.concatenate([scores, pad], axis=1)
    return _topk_frame_indices(params, scores)


def compressed_rows(emb_seq, preds: np.ndarray, mean_sil_emb, frame_idx: np.ndarray,
                    is_disabled: np.ndarray) -> tuple:
    """The compressed cache: the chosen frames of (B, n, D) `emb_seq` (any array module: only indexed and selected,
    so exact on any device) and of the host `preds`; disabled picks become the silence embedding / zero preds."""
    rows = np.arange(frame_idx.shape[0])[:, None]
    xp = array_module(emb_seq)
    embs = xp.where(xp.asarray(is_disabled)[..., None], mean_sil_emb[:, None, :],
                    emb_seq[xp.asarray(rows), xp.asarray(frame_idx)])
    kept = np.where(is_disabled[..., None], F32(0.0), preds[rows, frame_idx])
    return embs.astype(F32, copy=False), kept.astype(F32, copy=False)


def _ceil_log2(x: int) -> int:
    return 1 if x <= 2 else (x - 1).bit_length()


def _cascade_sum(x: np.ndarray) -> np.ndarray:
    """Sum over axis 0 like ATen's CPU ``multi_row_sum``: 4 accumulation levels, blocks of 2**level_power rows.

    Elementwise adds in a fixed order only: the same bits for any trailing shape and any array module."""
    n_levels = 4
    level_power = max(4, _ceil_log2(x.shape[0]) // n_levels)
    level_step = 1 << level_power
    level_mask = level_step - 1
    xp = array_module(x)
    acc = [xp.zeros(x.shape[1:], dtype=x.dtype) for _ in range(n_levels)]
    i, n = 0, x.shape[0]
    while i + level_step <= n:
        for _ in range(level_step):
            acc[0] = acc[0] + x[i]
            i += 1
        for j in range(1, n_levels):
            acc[j] = acc[j] + acc[j - 1]
            acc[j - 1] = xp.zeros(x.shape[1:], dtype=x.dtype)
            if i & (level_mask << (j * level_power)):
                break
    for k in range(i, n):
        acc[0] = acc[0] + x[k]
    for j in range(1, n_levels):
        acc[0] = acc[0] + acc[j]
    return acc[0]


def _ilp_row_sum(x: np.ndarray) -> np.ndarray:
    """Sum over axis 0 like ATen's CPU ``row_sum``: 4 interleaved cascade sums, leftovers into the first."""
    n_ilp = x.shape[0] // 4
    partial = _cascade_sum(x[: 4 * n_ilp].reshape(n_ilp, 4, *x.shape[1:]))
    total = partial[0]
    for k in range(4 * n_ilp, x.shape[0]):
        total = total + x[k]
    for k in range(1, 4):
        total = total + partial[k]
    return total


def _sum_last_axis(x: np.ndarray) -> np.ndarray:
    """``x.sum(-1)`` over a contiguous last (speaker) axis in ATen's CPU order."""
    width = _ATEN_FLOAT_VEC_WIDTH
    n = x.shape[-1]
    if n < width:  # scalar_inner_sum
        return _ilp_row_sum(np.moveaxis(x, -1, 0))
    # vectorized_inner_sum: ILP sum of whole vectors, then scalar tail, then the vector's lanes in order.
    n_vec = n // width
    lanes = _ilp_row_sum(np.moveaxis(x[..., : n_vec * width].reshape(*x.shape[:-1], n_vec, width), -2, 0))
    total = np.zeros(x.shape[:-1], dtype=x.dtype)
    for k in range(n_vec * width, n):
        total = total + x[..., k]
    for k in range(width):
        total = total + lanes[..., k]
    return total


def _sum_frames(x: np.ndarray) -> np.ndarray:
    """``x.sum(0)`` of a contiguous (n, ..., D) float32 array in ATen's order (serial CPU reduction of each (n, D)
    slice; the middle axes are independent streams).

    Columns in whole blocks of 4 SIMD vectors use the plain cascade, the remaining ones the 4-way ILP sum.
    Column chunks handed to threads by a parallel reduction (numel >= 32768) are multiples of 32 columns, so
    for ``D = 512`` the result is the same with up to 8 torch threads.
    """
    split = x.shape[-1] - x.shape[-1] % (4 * _ATEN_FLOAT_VEC_WIDTH)
    if split == x.shape[-1]:
        return _cascade_sum(x)
    return array_module(x).concatenate([_cascade_sum(x[..., :split]), _ilp_row_sum(x[..., split:])], axis=-1)


def silence_profile(
    params: SpeakerCacheParams, mean_sil_emb: np.ndarray, n_sil_frames: np.ndarray, embs: np.ndarray, preds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Running mean of frames whose summed activity is below ``sil_threshold`` (NeMo ``_get_silence_profile``).

    Batched like NeMo: (B, D) mean, (B,) counts, (B, n, D) embs, (B, n, n_spk) preds. The inputs are returned
    unchanged only when no row has a silent frame; otherwise every row is recomputed (``mean * n / n``).
    """
    is_sil = _sum_last_axis(preds) < F32(params.sil_threshold)
    sil_count = is_sil.sum(axis=1, dtype=np.int64)
    if not (sil_count > 0).any():
        return mean_sil_emb, n_sil_frames
    return _silence_mean(mean_sil_emb, n_sil_frames, embs, is_sil, sil_count)


def silence_profile_rows(params: SpeakerCacheParams, mean_sil_emb, n_sil_frames: np.ndarray, embs,
                         preds: np.ndarray) -> tuple:
    """`silence_profile` of B independent streams at once, each as NeMo updates a stream of its own: a row without
    a silent frame keeps its mean bit for bit. `embs` (B, n, D) and `mean_sil_emb` may be device arrays."""
    is_sil = _sum_last_axis(preds) < F32(params.sil_threshold)
    sil_count = is_sil.sum(axis=1, dtype=np.int64)
    if not (sil_count > 0).any():
        return mean_sil_emb, n_sil_frames
    mean, count = _silence_mean(mean_sil_emb, n_sil_frames, embs, is_sil, sil_count)
    xp = array_module(mean)
    return xp.where(xp.asarray(sil_count > 0)[:, None], mean, mean_sil_emb), count


def _silence_mean(mean_sil_emb, n_sil_frames: np.ndarray, embs, is_sil: np.ndarray, sil_count: np.ndarray) -> tuple:
    xp = array_module(embs)
    weights = xp.asarray(is_sil.astype(F32))[:, :, None]
    sil_emb_sum = _sum_frames(xp.moveaxis(embs * weights, 1, 0))  # (B, D), each row in ATen's order
    upd_n_sil_frames = n_sil_frames + sil_count
    total = mean_sil_emb * xp.asarray(n_sil_frames[:, None].astype(F32)) + sil_emb_sum
    return (total / xp.asarray(np.maximum(upd_n_sil_frames, 1)[:, None].astype(F32))).astype(F32), upd_n_sil_frames


def _log_pred_scores(params: SpeakerCacheParams, preds: np.ndarray) -> np.ndarray:
    """Per-frame speaker scores, high for confident non-overlapped speech (NeMo ``_get_log_pred_scores``)."""
    threshold = F32(params.pred_score_threshold)
    log_probs = _log_f32(np.maximum(preds, threshold))
    log_1_probs = _log_f32(np.maximum(F32(1.0) - preds, threshold))
    log_1_probs_sum = _sum_last_axis(log_1_probs)[..., None]
    return ((log_probs - log_1_probs) + log_1_probs_sum) - F32(math.log(0.5))


def _log_f32(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(x.astype(np.float64)).astype(F32)


def _disable_low_scores(preds: np.ndarray, scores: np.ndarray, min_pos_scores_per_spk: int) -> np.ndarray:
    """-inf for non-speech, and for non-positive scores of speakers with enough positive ones."""
    is_speech = preds > 0.5
    scores = np.where(is_speech, scores, _NEG_INF)
    is_pos = scores > 0
    enough_pos = is_pos.sum(axis=-2, keepdims=True) >= min_pos_scores_per_spk  # per stream and speaker
    return np.where(~is_pos & is_speech & enough_pos, _NEG_INF, scores).astype(F32, copy=False)


def _boost_topk_scores(
    scores: np.ndarray, n_boost_per_spk: int, scale_factor: float, offset: float = 0.5
) -> np.ndarray:
    """Raise each speaker's ``n_boost_per_spk`` highest scores by ``-scale_factor * log(offset)``."""
    if n_boost_per_spk < 0:
        raise ValueError(f"n_boost_per_spk must be >= 0, got {n_boost_per_spk}")
    scores = scores.copy()
    delta = F32(scale_factor * math.log(offset))
    streams = np.arange(scores.shape[0])[:, None]
    for spk in range(scores.shape[-1]):
        rows = topk_sets(scores[:, :, spk], n_boost_per_spk)  # (B, k); -inf picks stay -inf, so any tie there is fine
        scores[streams, rows, spk] = scores[streams, rows, spk] - delta
    return scores


def _topk_frame_indices(params: SpeakerCacheParams, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices of the ``spkcache_len`` best (frame, speaker) scores, speaker-major, and disabled mask.

    Disabled = picked with a ``-inf`` score, or one of the appended silence frames (NeMo ``_get_topk_indices``).
    Batched: (B, n_frames, n_spk) scores -> (B, spkcache_len) each.
    """
    n_frames = scores.shape[1]
    n_frames_no_sil = n_frames - params.spkcache_sil_frames_per_spk
    flat = np.ascontiguousarray(scores.transpose(0, 2, 1)).reshape(scores.shape[0], -1)  # speaker-major
    picked = topk_sets(flat, params.spkcache_len)  # a -inf pick becomes max_index: which one is never seen
    picked = np.where(np.take_along_axis(flat, picked, axis=1) != _NEG_INF, picked, np.int64(params.max_index))
    picked = np.sort(picked, axis=1)
    is_disabled = picked == params.max_index
    frame_idx = np.remainder(picked, n_frames)
    is_disabled |= frame_idx >= n_frames_no_sil
    frame_idx[is_disabled] = 0
    return frame_idx, is_disabled


# ----------------------------------------------------------------------------------------------------------------
# torch.topk(largest=True, sorted=False) index set on CPU: libstdc++ nth_element / partial_sort replay.
# ----------------------------------------------------------------------------------------------------------------


def topk_sets(values: np.ndarray, k: int) -> np.ndarray:
    """(B, k) index sets of each row's k largest values, as CPU ``torch.topk(sorted=False)`` picks them, for callers
    to whom *which* ``-inf`` values are picked makes no difference (a boosted ``-inf`` stays ``-inf``; a picked
    ``-inf`` frame is disabled): rows whose selection boundary falls inside a tie of finite values are replayed
    exactly (`torch_topk_indices`), the rest are taken with numpy at once."""
    values = np.asarray(values)
    batch, n = values.shape
    if k == 0 or k == n:
        return np.broadcast_to(np.arange(k, dtype=np.int64), (batch, k)).copy()
    kth = np.partition(values, n - k, axis=1)[:, n - k : n - k + 1]
    above = values > kth
    tied = values == kth
    n_above = above.sum(axis=1, keepdims=True)
    unique = (n_above + tied.sum(axis=1, keepdims=True) == k)[:, 0]
    take = above | (tied & (np.cumsum(tied, axis=1) <= k - n_above))  # exactly k per row
    out = np.nonzero(take)[1].reshape(batch, k).astype(np.int64)
    exact = ~unique & ~(kth[:, 0] == _NEG_INF)  # a finite tie across the boundary (or NaN): replay libstdc++
    for row in np.flatnonzero(exact | np.isnan(values).any(axis=1)):
        out[row] = torch_topk_indices(values[row], k)
    return out


def torch_topk_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Index set that CPU ``torch.topk(values, k, largest=True, sorted=False)`` returns for a 1-D array.

    The order of the returned indices is unspecified (callers only use the set). When the k-th largest value
    is not tied across the boundary the set is unique and taken with numpy; otherwise libstdc++'s selection
    algorithm (as compiled into PyTorch) is replayed to pick the same tied elements.
    """
    values = np.asarray(values)
    n = values.shape[0]
    if k < 0 or k > n:
        raise ValueError(f"k={k} out of range for {n} values")
    if k == 0:
        return np.zeros((0,), dtype=np.int64)
    if k == n:
        return np.arange(n, dtype=np.int64)
    if not np.isnan(values).any():
        kth = np.partition(values, n - k)[n - k]
        above = values > kth
        n_tied = int(np.count_nonzero(values == kth))
        if int(np.count_nonzero(above)) + n_tied == k:
            return np.flatnonzero(above | (values == kth)).astype(np.int64)
    return _stdlib_topk(values.astype(np.float64).tolist(), k)


def _greater(x: float, y: float) -> bool:
    """PyTorch's topk comparator (largest=True): NaN first, then by value."""
    return (x != x and y == y) or x > y


def _stdlib_topk(vals: list[float], k: int) -> np.ndarray:
    """Replay PyTorch CPU topk's selection on (value, index) pairs; returns the first k indices."""
    queue = list(zip(vals, range(len(vals)), strict=True))
    n = len(queue)
    if k * 64 <= n:
        _heap_select(queue, 0, k, n)  # std::partial_sort; its final sort_heap only reorders the first k
    else:
        _introselect(queue, 0, k - 1, n, 2 * (n.bit_length() - 1))  # std::nth_element
    return np.array([idx for _, idx in queue[:k]], dtype=np.int64)


def _introselect(q: list[tuple[float, int]], first: int, nth: int, last: int, depth_limit: int) -> None:
    while last - first > 3:
        if depth_limit == 0:
            _heap_select(q, first, nth + 1, last)
            q[first], q[nth] = q[nth], q[first]
            return
        depth_limit -= 1
        cut = _unguarded_partition_pivot(q, first, last)
        if cut <= nth:
            first = cut
        else:
            last = cut
    _insertion_sort(q, first, last)


def _unguarded_partition_pivot(q: list[tuple[float, int]], first: int, last: int) -> int:
    mid = first + (last - first) // 2
    _move_median_to_first(q, first, first + 1, mid, last - 1)
    pivot = q[first][0]
    lo, hi = first + 1, last
    while True:
        while _greater(q[lo][0], pivot):
            lo += 1
        hi -= 1
        while _greater(pivot, q[hi][0]):
            hi -= 1
        if not lo < hi:
            return lo
        q[lo], q[hi] = q[hi], q[lo]
        lo += 1


def _move_median_to_first(q: list[tuple[float, int]], result: int, a: int, b: int, c: int) -> None:
    va, vb, vc = q[a][0], q[b][0], q[c][0]
    if _greater(va, vb):
        if _greater(vb, vc):
            pick = b
        elif _greater(va, vc):
            pick = c
        else:
            pick = a
    elif _greater(va, vc):
        pick = a
    elif _greater(vb, vc):
        pick = c
    else:
        pick = b
    q[result], q[pick] = q[pick], q[result]


def _insertion_sort(q: list[tuple[float, int]], first: int, last: int) -> None:
    if first == last:
        return
    for i in range(first + 1, last):
        item = q[i]
        if _greater(item[0], q[first][0]):
            q[first + 1 : i + 1] = q[first:i]
            q[first] = item
        else:
            j = i - 1
            while _greater(item[0], q[j][0]):
                q[j + 1] = q[j]
                j -= 1
            q[j + 1] = item


def _heap_select(q: list[tuple[float, int]], first: int, middle: int, last: int) -> None:
    _make_heap(q, first, middle)
    length = middle - first
    for i in range(middle, last):
        if _greater(q[i][0], q[first][0]):
            item = q[i]  # std::__pop_heap(first, middle, i)
            q[i] = q[first]
            _adjust_heap(q, first, 0, length, item)


def _make_heap(q: list[tuple[float, int]], first: int, last: int) -> None:
    length = last - first
    if length < 2:
        return
    parent = (length - 2) // 2
    while True:
        _adjust_heap(q, first, parent, length, q[first + parent])
        if parent == 0:
            return
        parent -= 1


def _adjust_heap(q: list[tuple[float, int]], first: int, hole: int, length: int, item: tuple[float, int]) -> None:
    top = hole
    child = hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if _greater(q[first + child][0], q[first + child - 1][0]):
            child -= 1
        q[first + hole] = q[first + child]
        hole = child
    if length % 2 == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        q[first + hole] = q[first + child - 1]
        hole = child - 1
    # std::__push_heap(first, hole, top, item)
    parent = (hole - 1) // 2
    while hole > top and _greater(q[first + parent][0], item[0]):
        q[first + hole] = q[first + parent]
        hole = parent
        parent = (hole - 1) // 2
    q[first + hole] = item

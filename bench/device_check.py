"""The serving path's device-side parts on a GPU without containers: CuPy against numpy, one command.

    python -m bench.device_check [--xp cupy] [--sessions 256] [--part-timeout-s 90]

For a machine with a GPU, torch and CuPy but no TensorRT, ONNX Runtime GPU or Triton (what `gpu_check.sh` needs a
Docker host for). Each part runs under its own time limit; the whole stays well under 8 minutes:

- `pools`: slot pools with device fields (acquire/reset, gathers as views or copies, scatters) equal numpy's;
- `speaker_cache`: the batched speaker-cache update on device embeddings equals numpy's bit for bit (it only
  indexes, selects and adds in a fixed order);
- `features`: the batched log-mel arithmetic (cuFFT, float64) against numpy's: max abs difference;
- `decoder`: batched greedy RNNT at full size (random weights) on the device vs numpy: token agreement (float
  differences between cuBLAS and the CPU BLAS may flip near-ties; reported, not hidden), and how many of the first
  8 rows decode alone exactly as in the batch (`mtasr.xp.row_product`; reported: cuBLAS may not keep it);
- `engine`: the whole served pipeline at full size with graphs that cost nothing (`bench.null_graphs`) and its
  state in device memory: host CPU per session-step with real kernel launches and transfers.

Last line: `device-check: xp=<module> device=<name> pools=ok|FAIL speaker_cache=exact|FAIL features_max_abs=<x>
decoder_tokens=<same>/<total> decoder_rows_alone=<equal>/<rows> host_ms_per_session_step=<x> failed=<n>`. With
`--xp numpy` (no GPU) every part runs against itself: what the test suite does to keep this script working.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from types import ModuleType

import numpy as np

F32 = np.float32


class PartTimeout(Exception):
    pass


def _timed(seconds: float, fn: Callable[[], dict]) -> dict:
    def alarm(*_):
        raise PartTimeout(f"over {seconds:g} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    t0 = time.perf_counter()
    try:
        out = fn()
        out["seconds"] = round(time.perf_counter() - t0, 2)
        return out
    except Exception as exc:  # noqa: BLE001 - a part's failure is reported, the next part runs
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "seconds": round(time.perf_counter() - t0, 2)}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def host(x) -> np.ndarray:
    return x.get() if hasattr(x, "get") else np.asarray(x)


def check_pools(xp: ModuleType) -> dict:
    from mtasr.pipeline.slots import Field, SlotPool

    fields = {"x": Field((3, 5), F32, device=True), "n": Field((), np.int64, fill=7)}
    pools = [SlotPool(fields, 2, m) for m in (np, xp)]
    rows = [[p.acquire() for _ in range(5)] for p in pools]  # grows twice
    values = np.random.default_rng(0).standard_normal((5, 3, 5)).astype(F32)
    for p in pools:
        p.scatter("x", np.arange(5), xp.asarray(values) if p.xp is xp and p.module("x") is not np else values)
    same = rows[0] == rows[1]
    for idx in (np.array([1, 2, 3]), np.array([4, 0])):
        same &= np.array_equal(host(pools[0].gather("x", idx)), host(pools[1].gather("x", idx)))
    pools[0].release(2), pools[1].release(2)
    same &= pools[0].acquire() == pools[1].acquire() == 2
    same &= not host(pools[1].gather("x", np.array([2]))).any() and pools[1].arrays["n"][2] == 7
    return {"ok": bool(same)}


def check_speaker_cache(xp: ModuleType, steps: int = 60, sessions: int = 16, emb: int = 512) -> dict:
    from mtasr.pipeline.diarizer_stage import DI, SpeakerCachePool, update
    from mtasr.spkcache import SpeakerCacheParams

    params = SpeakerCacheParams(spkcache_len=188, fifo_len=188, spkcache_update_period=144)
    pools = [SpeakerCachePool(params, emb, sessions, m) for m in (np, xp)]
    slots = [np.array([p.acquire() for _ in range(sessions)]) for p in pools]
    rng = np.random.default_rng(1)
    for _ in range(steps):
        cache_len = pools[0].arrays[DI.spkcache_lengths][slots[0]].copy()
        fifo_len = pools[0].arrays[DI.fifo_lengths][slots[0]].copy()
        embs = rng.standard_normal((sessions, 14, emb)).astype(F32)
        preds = rng.random((sessions, int((cache_len + fifo_len).max()) + 14, 4)).astype(F32)
        preds[rng.random(preds.shape[:2]) < 0.3] *= F32(0.05)
        n_embs = np.full(sessions, 14)
        for p, s in zip(pools, slots, strict=True):
            update(params, p, s, cache_len, fifo_len, xp.asarray(embs) if p.xp is xp else embs, preds, n_embs)
    exact = all(np.array_equal(host(pools[0].arrays[k]), host(pools[1].arrays[k])) for k in pools[0].fields)
    return {"ok": exact, "compressed_sessions": int(pools[0].arrays["compressed"].sum())}


def check_features(xp: ModuleType, sessions: int = 64) -> dict:
    from bench.null_graphs import full_size_features
    from mtasr.features import StreamingLogMel, logmel_batch

    p = full_size_features()
    rng = np.random.default_rng(2)
    jobs = []
    for _ in range(sessions):
        mel = StreamingLogMel(p)
        count = mel.push_samples(rng.standard_normal(17920).astype(F32) * 0.1)
        jobs.append(mel.owed(count))
    want = logmel_batch(p, jobs, np)
    got = logmel_batch(p, jobs, xp)
    worst = max(float(np.abs(host(g) - w).max()) for g, w in zip(got, want, strict=True))
    return {"ok": worst < 1e-3, "max_abs": worst}


def check_decoder(xp: ModuleType, rows: int = 256, frames: int = 14) -> dict:
    from mtasr.rnnt import ArrayRnnt, LstmLayer, RnntWeights, greedy_decode, init_state
    from mtasr.spec import PUBLIC_CHECKPOINT_DIMS as d

    rng = np.random.default_rng(3)
    h, j, v = d.pred_hidden, 640, d.n_logits

    def w(*shape, scale=0.05):
        return (rng.standard_normal(shape) * scale).astype(F32)

    out_b = w(v)
    out_b[-1] += 2.2  # mostly blanks, as speech decodes
    weights = RnntWeights(embedding=w(v, h), lstm=tuple(LstmLayer(w(4 * h, h), w(4 * h, h), w(4 * h), w(4 * h))
                                                        for _ in range(d.pred_layers)),
                          enc_w=w(j, d.enc_d_model), enc_b=w(j), pred_w=w(j, h), pred_b=w(j),
                          out_w=w(v, j, scale=0.02), out_b=out_b)
    def decode(m: ModuleType, pick: slice) -> list[list[tuple[int, int]]]:
        """Rows `pick` decoded together over four chunks (state carried): each row's (token, frame) list."""
        math, n = ArrayRnnt(weights, m), len(range(rows)[pick])
        state = init_state(n, d.pred_layers, h, v - 1, m)
        per_row: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        for k in range(4):
            x = np.random.default_rng(10 + k).standard_normal((rows, frames, d.enc_d_model)).astype(F32)[pick]
            em = greedy_decode(math, m.asarray(x), np.full(n, frames), state, v - 1, 10)
            for r, tok, fr in zip(em.rows.tolist(), em.tokens.tolist(), em.frames.tolist(), strict=True):
                per_row[r].append((tok, fr))
        return per_row

    host, device = decode(np, slice(None)), decode(xp, slice(None))
    same = sum(1 for a, b in zip(sum(host, []), sum(device, []), strict=False) if a == b)
    total = max(sum(map(len, host)), sum(map(len, device)))
    # batch invariance on the device: a row decoded alone emits what it emitted among all the others
    alone = [decode(xp, slice(r, r + 1))[0] == device[r] for r in range(min(rows, 8))]
    return {"ok": total > 0 and same >= 0.99 * total, "same": same, "total": total, "alone": sum(alone),
            "alone_of": len(alone)}


def check_engine(xp: ModuleType, sessions: int) -> dict:
    from bench.capacity import make_engine, measure

    row = measure(sessions, 1120.0, steps=6, engine=make_engine(sessions, xp))
    return {"ok": True, "host_ms_per_session_step": row["host_ms_per_session_step"], "row": row}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.device_check", description=__doc__.split("\n")[0])
    ap.add_argument("--xp", default="cupy", help="the device array module (numpy: a dry run on the CPU)")
    ap.add_argument("--sessions", type=int, default=256, help="sessions of the engine part")
    ap.add_argument("--rows", type=int, default=256, help="rows of the decoder part")
    ap.add_argument("--part-timeout-s", type=float, default=90.0)
    args = ap.parse_args(argv)
    try:
        from mtasr.pipeline import single_threaded_blas

        single_threaded_blas()  # as the multitalker model does
    except ImportError:  # a bare GPU machine may lack threadpoolctl: numpy's BLAS threads then stay as they are
        pass
    xp = np if args.xp == "numpy" else __import__(args.xp)
    device = "cpu"
    if xp is not np:
        device = xp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    parts = {"pools": lambda: check_pools(xp), "speaker_cache": lambda: check_speaker_cache(xp),
             "features": lambda: check_features(xp), "decoder": lambda: check_decoder(xp, args.rows),
             "engine": lambda: check_engine(xp, args.sessions)}
    results = {}
    for name, fn in parts.items():
        results[name] = _timed(args.part_timeout_s, fn)
        print(json.dumps({"part": name, **results[name]}, default=str), flush=True)
    r = results
    failed = sum(1 for v in r.values() if not v.get("ok"))
    print(f"device-check: xp={args.xp} device={device.replace(' ', '_')} "
          f"pools={'ok' if r['pools'].get('ok') else 'FAIL'} "
          f"speaker_cache={'exact' if r['speaker_cache'].get('ok') else 'FAIL'} "
          f"features_max_abs={r['features'].get('max_abs', 'nan')} "
          f"decoder_tokens={r['decoder'].get('same', 0)}/{r['decoder'].get('total', 0)} "
          f"decoder_rows_alone={r['decoder'].get('alone', 0)}/{r['decoder'].get('alone_of', 0)} "
          f"host_ms_per_session_step={r['engine'].get('host_ms_per_session_step', 'nan')} failed={failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Load generator: N concurrent sessions streaming audio in real time; latency percentiles, RTF, max real-time N.

    python -m client.loadgen --url 127.0.0.1:8001 --min 1 --max 64 --seconds 10 [--audio a.flac] [--chunk-ms 160]
    python -m client.loadgen --url 127.0.0.1:8001 --sessions 4          # one run with 4 sessions, no search

Prints a JSON dict. A run is real time when every session succeeded, the p99 per-chunk latency (send -> response,
over all sessions) is below the latency budget, and every session's last reply came within that budget of its
audio's end (wall / audio <= 1 + budget / audio, or `--rtf-max`). The budget is the chunk duration unless
`--budget-ms` is given: with 160 ms pieces and the [70,13] preset one piece in seven carries a whole 1.12 s step.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from client.stream import ClientError, StreamResult, stream_audio
from mtasr.spec import SAMPLE_RATE


def make_audios(seconds: float, chunk_ms: float, audio: Path | str | None = None,
                variants: int = 8) -> list[np.ndarray]:
    """Session audio: a file (read_audio) or `variants` synthetic conversations, cut to whole `chunk_ms` pieces."""
    if audio is not None:
        from mtasr.audio import read_audio

        clips = [read_audio(audio)[: int(seconds * SAMPLE_RATE)]]
    else:
        from mtasr.audio import synth_conversation

        clips = [synth_conversation(seconds, n_speakers=2 + i % 2, seed=i) for i in range(variants)]
    piece = int(round(chunk_ms * SAMPLE_RATE / 1000))
    return [c[: max(piece, len(c) // piece * piece)].astype(np.float32) for c in clips]


def run_sessions(url: str, n: int, audios: list[np.ndarray], chunk_ms: float = 160.0, rtf_max: float | None = None,
                 stagger: bool = True, progress: bool = True, budget_ms: float | None = None) -> dict:
    """`n` concurrent real-time sessions (own gRPC stream and sequence id each); their latency and RTF figures."""
    from tqdm import tqdm

    piece = int(round(chunk_ms * SAMPLE_RATE / 1000))
    clips = [audios[i % len(audios)] for i in range(n)]
    bar = tqdm(total=sum(-(-len(c) // piece) for c in clips), desc=f"{n} sessions", unit="chunk",
               disable=not progress, leave=False, file=sys.stderr)
    results: list[StreamResult | None] = [None] * n
    errors: list[str] = []

    def session(i: int) -> None:
        if stagger:  # spread the sessions' chunk boundaries over one chunk, as independent clients would be
            time.sleep(chunk_ms / 1000 * i / n)
        try:
            results[i] = stream_audio(url, clips[i], session_id=f"load{i}", chunk_ms=chunk_ms,
                                      realtime=True, on_reply=lambda *_: bar.update())
        except Exception as exc:  # noqa: BLE001 - a failed session (server error, dead server) is a result
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=session, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.close()
    done = [r for r in results if r is not None]
    lat = np.concatenate([np.asarray(r.latencies_ms, np.float64) for r in done]) if done else np.zeros(0)
    rtf = [r.wall_seconds / r.audio_seconds for r in done if r.audio_seconds]
    p50, p95, p99 = (float(np.percentile(lat, q)) for q in (50, 95, 99)) if lat.size else (float("nan"),) * 3
    out = {"sessions": n, "chunk_ms": chunk_ms, "chunks": int(lat.size), "p50_ms": p50, "p95_ms": p95,
           "p99_ms": p99, "max_ms": float(lat.max()) if lat.size else float("nan"), "rtf": rtf,
           "rtf_max": max(rtf) if rtf else float("nan"), "errors": errors}
    budget = budget_ms or chunk_ms
    limits = [rtf_max or 1 + budget / 1000 / r.audio_seconds for r in done if r.audio_seconds]
    out["budget_ms"] = budget
    out["lag_ms"] = [(r.wall_seconds - r.audio_seconds) * 1000 for r in done]  # last reply after the audio's end
    in_time = all(r <= m for r, m in zip(rtf, limits, strict=True))
    out["realtime"] = bool(not errors and len(done) == n and rtf and in_time and p99 < budget)
    return out


def search(url: str, lo: int, hi: int, audios: list[np.ndarray], chunk_ms: float = 160.0,
           rtf_max: float | None = None,
           progress: bool = True, budget_ms: float | None = None) -> dict:
    """Largest N in [lo, hi] whose run is real time: double from `lo` until one fails, then bisect."""
    runs: dict[int, dict] = {}

    def ok(n: int) -> bool:
        runs[n] = run_sessions(url, n, audios, chunk_ms, rtf_max, progress=progress, budget_ms=budget_ms)
        if progress:
            r = runs[n]
            print(f"N={n}: p99 {r['p99_ms']:.1f} ms, max rtf {r['rtf_max']:.3f}, "
                  f"{'real time' if r['realtime'] else 'NOT real time'}", file=sys.stderr)
        return runs[n]["realtime"]

    good, bad, n = lo - 1, None, lo
    while n <= hi:
        if not ok(n):
            bad = n
            break
        good = n
        if n == hi:
            break
        n = min(2 * n, hi)
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if ok(mid) else (good, mid)
    best = runs.get(good)
    return {"max_realtime_sessions": good if good >= lo else 0, "p99_ms_at_max": best["p99_ms"] if best else None,
            "rtf_max_at_max": best["rtf_max"] if best else None, "range": [lo, hi],
            "runs": {str(k): runs[k] for k in sorted(runs)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m client.loadgen", description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="127.0.0.1:8001", help="Triton gRPC address")
    ap.add_argument("--audio", type=Path, help="audio file every session streams (default: synthetic conversations)")
    ap.add_argument("--seconds", type=float, default=10.0, help="audio per session")
    ap.add_argument("--chunk-ms", type=float, default=160.0, help="audio per request")
    ap.add_argument("--sessions", type=int, help="one run with this many sessions (no search)")
    ap.add_argument("--min", type=int, default=1, dest="lo", help="search range start")
    ap.add_argument("--max", type=int, default=64, dest="hi", help="search range end")
    ap.add_argument("--budget-ms", type=float, help="p99 latency limit for real time (default: --chunk-ms)")
    ap.add_argument("--rtf-max", type=float, help="largest wall / audio counted as real time (default: 1 + budget)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.lo < 1 or args.hi < args.lo:
        ap.error("need 1 <= --min <= --max")
    try:
        audios = make_audios(args.seconds, args.chunk_ms, args.audio)
        warm = audios[0][: 3 * SAMPLE_RATE]  # one session first: the server's first calls allocate
        stream_audio(args.url, warm, chunk_ms=args.chunk_ms)
        if args.sessions:
            result = run_sessions(args.url, args.sessions, audios, args.chunk_ms, args.rtf_max,
                                  progress=not args.no_progress, budget_ms=args.budget_ms)
        else:
            result = search(args.url, args.lo, args.hi, audios, args.chunk_ms, args.rtf_max, not args.no_progress,
                            args.budget_ms)
    except (ClientError, ValueError) as exc:
        print(f"loadgen: error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

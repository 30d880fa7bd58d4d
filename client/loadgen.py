"""Load generator: N concurrent sessions streaming audio in real time; latency percentiles, RTF, max real-time N.

    python -m client.loadgen --url 127.0.0.1:8001 --min 1 --max 64 --seconds 10 [--audio a.flac] [--chunk-ms 160]
    python -m client.loadgen --url 127.0.0.1:8001 --sessions 4          # one run with 4 sessions, no search
    python -m client.loadgen --websocket ws://127.0.0.1:8080/v1/stream --sessions 32 \
        --cpu-pid gateway=PID --cpu-pid tritonserver=PID   # through the WebSocket gateway; CPU per session-second

All sessions run in this one process on one asyncio event loop (a channel and stream each, no thread per
session), so the generator takes little of the CPU it shares with a local server (its own CPU seconds are in the
result); sessions start spread over one model step (`--spread-s`). Prints a JSON dict. A run is real time when
every session succeeded, the p99 per-chunk latency (send -> response, over all sessions) is below the latency
budget, and every session's last reply came within that budget of its audio's end (wall / audio <= 1 + budget /
audio, or `--rtf-max`). The budget is the chunk duration unless `--budget-ms` is given: with 160 ms pieces and the
[70,13] preset one piece in seven carries a whole 1.12 s step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from client.stream import (
    ClientError,
    Connection,
    audio_inputs,
    new_sequence_id,
    new_session_key,
    stream_audio,
)
from mtasr.spec import ORCHESTRATOR, SAMPLE_RATE, SESSION_KEY_HEADER

STEP_SPREAD_S = 1.12  # session starts spread over one [70,13] model step: independent clients' steps interleave


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


@dataclass
class _Run:
    """One load session's figures."""

    audio_seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0
    error: str | None = None
    refused_ms: float | None = None  # the START was refused: how long the refusal took
    transcript: list | None = None  # the END reply's transcript (when asked for)


async def _session(conn: Connection, clip: np.ndarray, piece: int, delay_s: float, timeout: float,
                   transcript: bool = False) -> _Run:
    """One real-time session on its own channel and gRPC stream: pieces sent at their audio time, every reply
    timed; the replies are not decoded (the load generator measures the server, not the client's parsing), except
    the END reply's transcript when `transcript` is set. After an error (e.g. a refused START) the session stops
    sending and lets the server close the stream: cancelling a call is a path that has crashed Triton 2.51."""
    from tritonclient.utils import InferenceServerException

    run = _Run(audio_seconds=len(clip) / SAMPLE_RATE)
    starts = list(range(0, len(clip), piece))
    sent_at: dict[str, float] = {}
    stop = asyncio.Event()
    await asyncio.sleep(delay_s)
    client = conn.aio_client()
    headers = {**conn.headers(), SESSION_KEY_HEADER: new_session_key()}
    sequence_id = new_sequence_id()
    t0 = time.perf_counter()

    async def requests():
        for i, s in enumerate(starts):
            await asyncio.sleep(max(0.0, t0 + s / SAMPLE_RATE - time.perf_counter()))
            if stop.is_set():  # after an error: the request stream ends, the server closes the call
                return
            rid = str(i)
            sent_at[rid] = time.perf_counter()
            yield {"model_name": ORCHESTRATOR, "inputs": audio_inputs(clip[s : s + piece]), "request_id": rid,
                   "sequence_id": sequence_id, "sequence_start": i == 0, "sequence_end": i == len(starts) - 1}

    try:
        replies = client.stream_infer(requests(), stream_timeout=timeout, headers=headers)
        async for result, error in replies:
            if error is not None:
                if run.error is None:
                    run.error = error.message() if isinstance(error, InferenceServerException) else str(error)
                    if not run.latencies_ms:
                        run.refused_ms = (time.perf_counter() - sent_at["0"]) * 1000
                stop.set()  # no more pieces; the server ends the stream once the sent ones are answered
                continue
            rid = result.get_response().id
            run.latencies_ms.append((time.perf_counter() - sent_at[rid]) * 1000)
            if transcript and rid == str(len(starts) - 1):
                run.transcript = json.loads(result.as_numpy("transcript").reshape(-1)[0])
        # the loop ends when the server closes the stream after the last reply. Cancelling the call instead, right
        # after the last reply, can crash Triton 2.51 (a race between the cancellation and the request's release)
    except InferenceServerException as exc:
        run.error = exc.message()
    except Exception as exc:  # noqa: BLE001 - a failed session (dead server, broken stream) is a result
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        await client.close()
    run.wall_seconds = time.perf_counter() - t0
    if run.error is None and len(run.latencies_ms) < len(starts):
        run.error = f"stream ended after {len(run.latencies_ms)} of {len(starts)} replies"
    return run


async def _drive(conn: Connection, clips: list[np.ndarray], piece: int, spread_s: float,
                 timeout: float, transcripts: bool = False) -> list[_Run]:
    n = len(clips)
    return list(await asyncio.gather(*(_session(conn, c, piece, spread_s * i / n, timeout, transcripts)
                                       for i, c in enumerate(clips))))


def run_sessions(url: str | Connection, n: int, audios: list[np.ndarray], chunk_ms: float = 160.0,
                 rtf_max: float | None = None, spread_s: float = STEP_SPREAD_S, progress: bool = True,
                 budget_ms: float | None = None, timeout: float = 600.0, transcripts: bool = False) -> dict:
    """`n` concurrent real-time sessions (own channel, gRPC stream, sequence id and session key each), all driven
    by one asyncio event loop in this process (no thread per session); their latency and RTF figures.

    The sessions' starts are spread evenly over `spread_s`: by default one model step, as independent clients'
    would be (their model steps interleave); a spread of one piece or less makes every session's step fall in the
    same piece, the worst burst the batcher can meet. Sessions whose START was refused are counted apart
    (`refused`, `refusal_ms`); `transcripts` keeps each session's END transcript (None where it failed), with
    `clip_index` saying which of `audios` each session streamed."""
    conn = Connection(url) if isinstance(url, str) else url
    piece = int(round(chunk_ms * SAMPLE_RATE / 1000))
    clips = [audios[i % len(audios)] for i in range(n)]
    if progress:
        print(f"loadgen: {n} sessions ...", file=sys.stderr, flush=True)
    cpu0, t0 = time.process_time(), time.perf_counter()
    runs = asyncio.run(_drive(conn, clips, piece, spread_s, timeout, transcripts))
    cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - t0
    errors = [r.error for r in runs if r.error]
    done = [r for r in runs if r.error is None]
    lat = np.concatenate([np.asarray(r.latencies_ms, np.float64) for r in done]) if done else np.zeros(0)
    rtf = [r.wall_seconds / r.audio_seconds for r in done if r.audio_seconds]
    p50, p95, p99 = (float(np.percentile(lat, q)) for q in (50, 95, 99)) if lat.size else (float("nan"),) * 3
    out = {"sessions": n, "chunk_ms": chunk_ms, "chunks": int(lat.size), "p50_ms": p50, "p95_ms": p95,
           "p99_ms": p99, "max_ms": float(lat.max()) if lat.size else float("nan"), "rtf": rtf,
           "rtf_max": max(rtf) if rtf else float("nan"), "errors": errors, "spread_s": spread_s,
           "loadgen_cpu_s": round(cpu_s, 2), "loadgen_cores": round(cpu_s / wall_s, 3),  # the generator's share
           "refused": sum(r.refused_ms is not None for r in runs),
           "refusal_ms": [r.refused_ms for r in runs if r.refused_ms is not None]}
    if transcripts:
        out["transcripts"] = [r.transcript for r in runs]
        out["clip_index"] = [i % len(audios) for i in range(n)]
        out["session_errors"] = [r.error for r in runs]
    budget = budget_ms or chunk_ms
    limits = [rtf_max or 1 + budget / 1000 / r.audio_seconds for r in done if r.audio_seconds]
    out["budget_ms"] = budget
    out["lag_ms"] = [(r.wall_seconds - r.audio_seconds) * 1000 for r in done]  # last reply after the audio's end
    in_time = all(r <= m for r, m in zip(rtf, limits, strict=True))
    out["realtime"] = bool(not errors and len(done) == n and rtf and in_time and p99 < budget)
    return out


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of `pid` and every live process in its process group (tritonserver's Python
    stubs are in the server's group)."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if int(entry.name) == pid or int(fields[2]) == pid:  # fields[2]: the process group
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


async def _ws_session(url: str, clip: np.ndarray, piece: int, delay_s: float, timeout: float,
                      start: dict | None) -> _Run:
    """One real-time session over the gateway's native protocol: PCM16 frames of `piece` samples at their audio
    time, `end`, every event until the close. `latencies_ms` are the activity events' lag beyond the session's
    smallest (the model's own look-ahead is in every lag; what is beyond it is queueing)."""
    import websockets

    run = _Run(audio_seconds=len(clip) / SAMPLE_RATE)
    pcm = np.clip(np.round(clip * 32768.0), -32768, 32767).astype("<i2")
    await asyncio.sleep(delay_s)
    lags: list[float] = []
    decided = 0.0
    t0 = time.perf_counter()
    try:
        async with websockets.connect(url, max_size=None, open_timeout=timeout) as ws:
            async def receive():
                try:
                    await events()
                except websockets.ConnectionClosed as exc:  # closed after an error event
                    run.error = run.error or f"connection closed: {exc}"

            async def events():
                nonlocal decided
                async for message in ws:
                    event = json.loads(message)
                    if event["type"] == "activity":
                        decided += len(event["frames"]) * 0.08
                        lags.append(time.perf_counter() - (t0 + decided))
                    elif event["type"] == "error":
                        run.error = f"{event['code']}: {event['message']}"
                    elif event["type"] == "end":
                        run.wall_seconds = time.perf_counter() - t0

            receiver = asyncio.create_task(receive())
            if start:
                await ws.send(json.dumps({"type": "start", **start}))
            for s in range(0, len(pcm), piece):
                await asyncio.sleep(max(0.0, t0 + s / SAMPLE_RATE - time.perf_counter()))
                await ws.send(pcm[s: s + piece].tobytes())
            await ws.send(json.dumps({"type": "end"}))
            await asyncio.wait_for(receiver, timeout)
    except Exception as exc:  # noqa: BLE001 - a failed session is a result
        run.error = run.error or f"{type(exc).__name__}: {exc}"
    if run.error is None and not run.wall_seconds:
        run.error = "no end event"
    floor = min(lags) if lags else 0.0
    run.latencies_ms = [(lag - floor) * 1000 for lag in lags]
    return run


def run_ws_sessions(url: str, n: int, audios: list[np.ndarray], chunk_ms: float = 160.0,
                    spread_s: float = STEP_SPREAD_S, budget_ms: float | None = None, timeout: float = 600.0,
                    cpu_pids: dict[str, int] | None = None, start: dict | None = None, progress: bool = True) -> dict:
    """`n` concurrent real-time sessions through the WebSocket gateway (one asyncio loop, like `run_sessions`);
    latency beyond each session's own floor, RTF, and the CPU seconds per session-second of audio of this process
    and of each `cpu_pids` process (with its process group)."""
    piece = int(round(chunk_ms * SAMPLE_RATE / 1000))
    clips = [audios[i % len(audios)] for i in range(n)]
    if progress:
        print(f"loadgen: {n} websocket sessions ...", file=sys.stderr, flush=True)
    pids = cpu_pids or {}
    before = {k: process_cpu_seconds(p) for k, p in pids.items()}
    cpu0, t0 = time.process_time(), time.perf_counter()

    async def drive():
        return await asyncio.gather(*(_ws_session(url, c, piece, spread_s * i / n, timeout, start)
                                      for i, c in enumerate(clips)))

    runs = asyncio.run(drive())
    cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - t0
    session_seconds = sum(r.audio_seconds for r in runs)
    cpu = {k: process_cpu_seconds(p) - before[k] for k, p in pids.items()}
    errors = [r.error for r in runs if r.error]
    done = [r for r in runs if r.error is None]
    lat = np.concatenate([np.asarray(r.latencies_ms, np.float64) for r in done]) if done else np.zeros(0)
    rtf = [r.wall_seconds / r.audio_seconds for r in done if r.audio_seconds]
    budget = budget_ms or chunk_ms
    p50, p95, p99 = (float(np.percentile(lat, q)) for q in (50, 95, 99)) if lat.size else (float("nan"),) * 3
    limits = [1 + (budget + 1120) / 1000 / r.audio_seconds for r in done]  # + one model step of look-ahead
    out = {"sessions": n, "transport": "websocket", "chunk_ms": chunk_ms, "p50_ms": p50, "p95_ms": p95,
           "p99_ms": p99, "rtf_max": max(rtf) if rtf else float("nan"), "errors": errors, "budget_ms": budget,
           "session_seconds": round(session_seconds, 2), "wall_s": round(wall_s, 2),
           "loadgen_cpu_s": round(cpu_s, 2),
           "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
           "cpu_ms_per_session_second": {k: round(1000 * v / session_seconds, 3) for k, v in cpu.items()}}
    out["realtime"] = bool(not errors and len(done) == n and rtf and p99 < budget
                           and all(r <= m for r, m in zip(rtf, limits, strict=True)))
    return out


def search(url: str, lo: int, hi: int, audios: list[np.ndarray], chunk_ms: float = 160.0,
           rtf_max: float | None = None, progress: bool = True, budget_ms: float | None = None,
           spread_s: float = STEP_SPREAD_S, after_run: Callable[[int, dict], None] | None = None) -> dict:
    """Largest N in [lo, hi] whose run is real time: double from `lo` until one fails, then bisect. `after_run`
    (n, result) is called after each run; what it raises ends the search (e.g. the server died)."""
    runs: dict[int, dict] = {}

    def ok(n: int) -> bool:
        runs[n] = run_sessions(url, n, audios, chunk_ms, rtf_max, spread_s, progress=progress, budget_ms=budget_ms)
        if after_run is not None:
            after_run(n, runs[n])
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
    ap.add_argument("--spread-s", type=float, default=STEP_SPREAD_S,
                    help="sessions start evenly spread over this many seconds (default: one 1.12 s model step)")
    ap.add_argument("--budget-ms", type=float, help="p99 latency limit for real time (default: --chunk-ms)")
    ap.add_argument("--rtf-max", type=float, help="largest wall / audio counted as real time (default: 1 + budget)")
    ap.add_argument("--websocket", metavar="WS_URL",
                    help="drive sessions through the WebSocket gateway at this URL (e.g. ws://127.0.0.1:8080/v1/stream)"
                         " instead of gRPC; needs --sessions")
    ap.add_argument("--cpu-pid", action="append", default=[], metavar="NAME=PID",
                    help="with --websocket: also report this process's (and its process group's) CPU per "
                         "session-second, e.g. gateway=1234 tritonserver=1200 (repeat)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.lo < 1 or args.hi < args.lo:
        ap.error("need 1 <= --min <= --max")
    if args.websocket:
        if not args.sessions:
            ap.error("--websocket needs --sessions")
        try:
            pids = {k: int(v) for k, v in (x.split("=", 1) for x in args.cpu_pid)}
        except ValueError:
            ap.error("--cpu-pid takes NAME=PID")
        audios = make_audios(args.seconds, args.chunk_ms, args.audio)
        result = run_ws_sessions(args.websocket, args.sessions, audios, args.chunk_ms, args.spread_s, args.budget_ms,
                                 cpu_pids=pids, progress=not args.no_progress)
        text = json.dumps(result, indent=1)
        print(text)
        if args.out:
            args.out.write_text(text)
        return 0
    try:
        audios = make_audios(args.seconds, args.chunk_ms, args.audio)
        warm = audios[0][: 3 * SAMPLE_RATE]  # one session first: the server's first calls allocate
        stream_audio(args.url, warm, chunk_ms=args.chunk_ms)
        if args.sessions:
            result = run_sessions(args.url, args.sessions, audios, args.chunk_ms, args.rtf_max, args.spread_s,
                                  progress=not args.no_progress, budget_ms=args.budget_ms)
        else:
            result = search(args.url, args.lo, args.hi, audios, args.chunk_ms, args.rtf_max, not args.no_progress,
                            args.budget_ms, args.spread_s)
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

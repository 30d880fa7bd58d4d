"""Host-side capacity: the served pipeline's CPU per session-step with graphs that cost nothing, at full size.

    python -m bench.capacity [--sessions 64 256 512 1024] [--pieces-ms 160 1120] [--hours 4] [--out FILE]

The request handling, engine and reply code the `multitalker` model runs (`SequenceManager` + `Engine`, replies
encoded to JSON as the Triton glue does) drive `bench.null_graphs`: the public checkpoints' shapes (full dims, 4
speakers, preset [70, 13]), a conversation pattern (two speakers per session, ~3 labels per second each) and the
device-resident state as virtual arrays. Sessions are in steady state (speaker cache and FIFO full) before
measuring. Reported per session-step (one 1.12 s model step of one session): host CPU by stage
(`mtasr.profile`), the arithmetic that runs on the accelerator (graph calls, decoder products) apart, and the
state bytes copied. `--hours`: one long session's per-step cost at minute 5 and in its last hour (audio timing).
Last line:
`capacity: sessions=N ms_per_session_step=<160 ms pieces> ms_per_session_step_1s=<1.12 s pieces>
bytes_per_session_step=<n> server_ms_per_session_s=<n> sessions_per_core=<floor(1120 / ms_per_session_step_1s)>`
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench.null_graphs import NullRnnt, NullRunner, full_size_features, full_size_manifest
from mtasr.pipeline import single_threaded_blas
from mtasr.pipeline.config import PipelineConfig
from mtasr.pipeline.engine import Engine
from mtasr.pipeline.replies import Reply
from mtasr.pipeline.sequences import SequenceManager
from mtasr.pipeline.sessions import SessionPolicy
from mtasr.pipeline.validation import AudioRequest
from mtasr.profile import CLOCK, DEVICE_STAGES, HOST_STAGES, REQUESTS
from mtasr.spec import SAMPLE_RATE

KEY = "capacity-bench-session-key"  # one in-process client owns every session
STEP_S = 1.12
WARM_STEPS = 40  # cache (188) + FIFO (188) fill after 27 steps of 14 frames; then a compression every ~10 steps


def make_engine(sessions: int, xp=None) -> Engine:
    """The served engine at full size over null graphs; device-side state virtual (no memory), or in array module
    `xp` (CuPy on a GPU: `bench.device_check`; numpy: real host copies)."""
    manifest = full_size_manifest()
    cfg = PipelineConfig.from_manifest(manifest)
    d = manifest.dims
    return Engine(cfg, full_size_features(), NullRunner(manifest, max_rows=max(sessions, 1), xp=xp),
                  NullRnnt(d.n_logits, d.pred_layers, d.pred_hidden, cfg.geometry.valid_out_len, xp),
                  capacity=sessions)


def encode(reply: Reply) -> int:
    """What the Triton glue does with a reply (JSON outputs, activity tensor): bytes of JSON."""
    if reply.error:
        raise RuntimeError(reply.error)
    parts = (reply.segments_json(), reply.interim_json(), reply.transcript_json())
    np.ascontiguousarray(reply.activity, dtype=np.float32)
    return sum(len(p) for p in parts)


class Load:
    """`sessions` sessions, each sending `piece_s` pieces of audio in lockstep (one request each per batch)."""

    def __init__(self, engine: Engine, sessions: int, piece_s: float, base: int = 1) -> None:
        self.engine = engine
        self.manager = SequenceManager(engine, SessionPolicy(max_sessions=sessions, idle_timeout_s=3600.0))
        self.sessions = sessions
        self.piece = int(round(piece_s * SAMPLE_RATE))
        self.audio = (np.random.default_rng(0).standard_normal(self.piece) * 0.05).astype(np.float32)
        self.base = base
        self.sent = 0  # pieces per session so far

    def batch(self, end: bool = False) -> int:
        requests = [AudioRequest(corrid=self.base + i, start=self.sent == 0, end=end, audio=self.audio,
                                 session_key=KEY) for i in range(self.sessions)]
        self.sent += 1
        return sum(encode(r) for r in self.manager.handle(requests))

    def timed(self, batches: int) -> tuple[float, int]:
        """`batches` batches under the stage clock (reset first): their thread CPU seconds and reply bytes."""
        gc.collect()
        CLOCK.reset()
        CLOCK.enabled = True
        reply_bytes = 0
        t0 = time.thread_time()
        try:
            for _ in range(batches):
                reply_bytes += self.batch()
        finally:
            CLOCK.enabled = False
        return time.thread_time() - t0, reply_bytes

    def end(self) -> None:
        self.batch(end=True)
        self.manager.close()


def measure(sessions: int, piece_ms: float, steps: int = 12, engine: Engine | None = None) -> dict:
    """Steady-state host cost per session-step with `piece_ms` pieces."""
    engine = engine or make_engine(sessions)
    load = Load(engine, sessions, piece_ms / 1000)
    per_step = STEP_S / (piece_ms / 1000)  # requests per session per model step
    for _ in range(math.ceil(WARM_STEPS * per_step)):
        load.batch()
    pools = (engine.diarizer.pool, engine.asr.pool)
    copied0 = sum(p.copied_bytes for p in pools)
    device0 = sum(p.device_copied_bytes for p in pools)
    n_batches = math.ceil(steps * per_step)
    total, reply_bytes = load.timed(n_batches)
    session_steps = sessions * n_batches / per_step
    copied = sum(p.copied_bytes for p in pools) - copied0
    device_copied = sum(p.device_copied_bytes for p in pools) - device0
    stage_s = dict(CLOCK.seconds)
    stage_s[REQUESTS] = stage_s.get(REQUESTS, 0.0) + total - sum(CLOCK.seconds.values())  # the residual
    ms = {k: round(stage_s.get(k, 0.0) / session_steps * 1000, 4) for k in (*HOST_STAGES, *DEVICE_STAGES)}
    host = sum(ms[k] for k in HOST_STAGES)
    load.end()
    return {"sessions": sessions, "piece_ms": piece_ms, "session_steps": round(session_steps),
            "host_ms_per_session_step": round(host, 4), "stage_ms": ms,
            "device_ms_per_session_step": round(sum(ms[k] for k in DEVICE_STAGES), 4),
            "bytes_per_session_step": round(copied / session_steps),  # host state copied
            "device_bytes_per_session_step": round(device_copied / session_steps),  # device-side gathers/scatters
            "reply_bytes_per_session_step": round(reply_bytes / session_steps)}


def flatness(hours: float, sessions: int = 16, window_steps: int = 60, windows: int = 5) -> dict:
    """Host cost per session-step of `sessions` sessions `hours` into a session against `sessions` sessions 5 minutes
    in (audio timing, 1.12 s pieces), side by side: the two groups' windows of `window_steps` steps alternate
    (`windows` each), so both see the same machine; host stages only (the stage clock), medians, their ratio; and
    the per-session state that could grow (hypothesis tokens, runs, final segments kept for the END transcript)."""
    groups = {"minute5": Load(make_engine(sessions), sessions, STEP_S),
              "last_hour": Load(make_engine(sessions), sessions, STEP_S, base=10_000)}
    targets = {"minute5": int(300 / STEP_S), "last_hour": int(hours * 3600 / STEP_S) - windows * window_steps}
    for name, load in groups.items():
        while load.sent < targets[name]:
            load.batch()
    costs: dict[str, list[float]] = {name: [] for name in groups}
    for _ in range(windows):
        for name, load in groups.items():
            total, _ = load.timed(window_steps)
            host = total - sum(CLOCK.seconds.get(k, 0.0) for k in DEVICE_STAGES)
            costs[name].append(host / (window_steps * sessions) * 1000)
    out = {"hours": hours, "sessions": sessions, "windows": windows, "window_steps": window_steps}
    for name, load in groups.items():
        out[f"ms_per_session_step_{name}"] = round(float(np.median(costs[name])), 4)
        out[f"state_{name}"] = state_size(load)
        load.end()
    out["ratio"] = round(out["ms_per_session_step_last_hour"] / out["ms_per_session_step_minute5"], 3)
    return out


def server_cpu(graphs: Path, sessions: int = 16, seconds: float = 20.0, chunk_ms: float = 160.0) -> dict:
    """A real tritonserver on `graphs` (tiny: the graphs cost little) with `sessions` real-time sessions of
    `seconds` audio: the server's CPU (tritonserver and its Python stubs, from /proc) per session-second, the load
    generator's own CPU beside it (same cores)."""
    from bench.serving import served
    from client.loadgen import make_audios, process_cpu_seconds, run_sessions

    audios = make_audios(seconds, chunk_ms)
    with served(graphs, "70_13", max_sessions=max(sessions, 32), admission_headroom=0.0) as server:
        run_sessions(server.grpc_url, 2, audios[:1], chunk_ms, progress=False)  # warm-up: graphs, allocations
        before = process_cpu_seconds(server.pid)
        load = run_sessions(server.grpc_url, sessions, audios, chunk_ms, progress=False)
        server_s = process_cpu_seconds(server.pid) - before
        if load["errors"] or server.proc is None or server.proc.poll() is not None:
            raise RuntimeError(f"server load run failed: {load['errors'][:3]}")
    session_s = sessions * seconds
    return {"sessions": sessions, "seconds": seconds, "chunk_ms": chunk_ms, "server_cpu_s": round(server_s, 2),
            "server_ms_per_session_s": round(1000 * server_s / session_s, 3),
            "loadgen_ms_per_session_s": round(1000 * load["loadgen_cpu_s"] / session_s, 3),
            "p99_ms": round(load["p99_ms"], 1), "realtime": load["realtime"]}


# The arithmetic one session-step asks of the device at full size (bench.roofline's counts at the served shapes):
# diarizer with a full speaker cache and FIFO, and the encoder at [70, 13] for each of two active speakers.
DIARIZER_GFLOP_PER_STEP = 106.2
ENCODER_GFLOP_PER_ROW = 28.0
H100_DENSE_FP16_TFLOPS = 989.0  # NVIDIA's H100 SXM datasheet figure (dense, no sparsity)
HOST_CORES = 16


def render(c: dict) -> list[str]:
    """The capacity section of BENCHMARKS.md from its results (`bench.report`'s `capacity` part)."""
    from mtasr.profile import DEVICE_STAGES, HOST_STAGES

    m = c["machine"]
    lines = ["## Host-side capacity (full-size shapes, graphs that cost nothing)", "",
             f"Measured {m['date']} on {m['cores']} cores (5-minute load average {m['load_average_at_start']} at the "
             f"start, {m['load_average_at_end']} at the end; thread CPU time, so other work on the machine slows "
             "these figures less than wall-clock ones).", "",
             "`make capacity` (`bench/capacity.py`): the served request handling, engine and reply code over "
             "`bench.null_graphs` (public checkpoints' dims, 4 speakers, [70, 13], two speakers per session, ~3 "
             "labels/s each, speaker cache in steady state). Host CPU ms per session-step (one session's 1.12 s "
             "model step) by stage; the device's arithmetic (graph calls, decoder and feature products: numpy on "
             "this CPU) and the device-side state copies are reported apart.", "",
             "| sessions | piece ms | host ms / session-step | " + " | ".join(HOST_STAGES) + " | device ms ("
             + ", ".join(DEVICE_STAGES) + ") | host bytes | device bytes |",
             "|" + "---|" * (len(HOST_STAGES) + 6)]
    for p in c["points"]:
        st = p["stage_ms"]
        dev = ", ".join(f"{st[k]:.3f}" for k in DEVICE_STAGES)
        lines.append(f"| {p['sessions']} | {p['piece_ms']:.0f} | **{p['host_ms_per_session_step']:.3f}** | "
                     + " | ".join(f"{st[k]:.3f}" for k in HOST_STAGES)
                     + f" | {dev} | {p['bytes_per_session_step']} | {p['device_bytes_per_session_step']} |")
    top = max(p["sessions"] for p in c["points"])
    long_ = next(p for p in c["points"] if p["sessions"] == top and p["piece_ms"] == max(
        q["piece_ms"] for q in c["points"]))
    per_core = math.floor(STEP_S * 1000 / long_["host_ms_per_session_step"])
    flops = DIARIZER_GFLOP_PER_STEP + 2 * ENCODER_GFLOP_PER_ROW
    gpu_bound = math.floor(H100_DENSE_FP16_TFLOPS * 1000 * STEP_S / flops)
    lines += ["", f"One core's orchestration steps **{per_core}** sessions per 1.12 s at {top} sessions with 1.12 s "
              f"pieces. Estimate for a {HOST_CORES}-core GPU host (not measured: no GPU here): orchestration is "
              f"one engine thread per model instance, so {HOST_CORES - 2} cores (two left to Triton's gRPC and "
              f"batcher threads) carry ~{per_core * (HOST_CORES - 2)} sessions; one H100's dense fp16 peak carries "
              f"{gpu_bound} sessions at {flops:.0f} GFLOP per session-step (100 % of peak; expect a half to a third "
              f"of it), so the GPU, not the host, bounds a host with one such GPU."]
    if "flatness" in c:
        f = c["flatness"]
        lines += ["", f"Long sessions ({f['sessions']} sessions of {f['hours']:g} h, audio timing, 1.12 s pieces): "
                  f"{f['ms_per_session_step_minute5']:.3f} ms per session-step at minute 5, "
                  f"{f['ms_per_session_step_last_hour']:.3f} ms in the last hour (ratio **{f['ratio']}**); state "
                  f"at those points {f['state_minute5']} / {f['state_last_hour']} (final segments are kept for the "
                  "END transcript; everything a step reads stays bounded)."]
    if "server" in c:
        s = c["server"]
        lines += ["", f"Real tritonserver, tiny graphs, {s['sessions']} real-time sessions of {s['seconds']:g} s "
                  f"({s['chunk_ms']:.0f} ms pieces): server CPU (tritonserver + Python stubs) "
                  f"**{s['server_ms_per_session_s']} ms per session-second**, load generator "
                  f"{s['loadgen_ms_per_session_s']} ms on the same cores; p99 {s['p99_ms']} ms."]
    return lines


def state_size(load: Load) -> dict:
    """Per-session state that could grow with the session: hypothesis tokens, runs, words kept, diarizer window."""
    sessions = [live.stream for live in load.manager.live.values()]
    speakers = [inst for s in sessions for inst in s.speakers.values()]
    return {"tokens": sum(len(i.tokens) for i in speakers), "runs": sum(len(i.runs) for i in speakers),
            "final_segments": sum(len(s.segments.final) for s in sessions),
            "window_frames": sum(s.window.shape[0] for s in sessions)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, nargs="+", default=[64, 256, 512, 1024])
    ap.add_argument("--pieces-ms", type=float, nargs="+", default=[160.0, 1120.0])
    ap.add_argument("--steps", type=int, default=12, help="measured model steps per point")
    ap.add_argument("--hours", type=float, default=4.0, help="length of the flatness session (0: skip)")
    ap.add_argument("--server-graphs", type=Path, help="exported graphs (tiny) for the real-tritonserver part")
    ap.add_argument("--server-sessions", type=int, default=16)
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    ap.add_argument("--results", type=Path, help="merge them into this results file (bench/results.json) as "
                    "`capacity` and render BENCHMARKS.md again")
    args = ap.parse_args(argv)
    single_threaded_blas()  # as the multitalker model does
    started = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "load_average_at_start": round(os.getloadavg()[1], 2), "cores": os.cpu_count()}
    rows = []
    for n in args.sessions:
        for piece in args.pieces_ms:
            row = measure(n, piece, args.steps)
            rows.append(row)
            print(json.dumps(row), flush=True)
    result: dict = {"points": rows, "machine": started}
    if args.hours > 0:
        result["flatness"] = flatness(args.hours)
        print(json.dumps(result["flatness"]), flush=True)
    if args.server_graphs:
        result["server"] = server_cpu(args.server_graphs, args.server_sessions)
        print(json.dumps(result["server"]), flush=True)
    result["machine"]["load_average_at_end"] = round(os.getloadavg()[1], 2)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.results:  # into make bench's results, and BENCHMARKS.md rendered again from them
        from bench import report

        merged = json.loads(args.results.read_text())
        merged["capacity"] = result
        report.check(merged)
        args.results.write_text(json.dumps(merged, indent=1) + "\n")
        report.BENCHMARKS.write_text(report.render(merged))
    top = max(args.sessions)

    def host(piece: float) -> float:
        return next(r["host_ms_per_session_step"] for r in rows if r["sessions"] == top and r["piece_ms"] == piece)

    short, long_ = min(args.pieces_ms), max(args.pieces_ms)
    bytes_ = next(r["bytes_per_session_step"] for r in rows if r["sessions"] == top and r["piece_ms"] == long_)
    server = result["server"]["server_ms_per_session_s"] if "server" in result else "skipped"
    print(f"capacity: sessions={top} ms_per_session_step={host(short):.3f} ms_per_session_step_1s={host(long_):.3f} "
          f"bytes_per_session_step={bytes_} server_ms_per_session_s={server} "
          f"sessions_per_core={math.floor(1120 / host(long_))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

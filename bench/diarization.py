"""Diarization service throughput (the tutorial's Step 1 served): cost of one batched step at steady state
(speaker cache and FIFO full) for S sessions at once, per session, against the roofline; the largest S that stays
real time (a step of S sessions within the chunk's audio, chunk_len x 80 ms = 0.48 s at the 1.04 s setting).

    python -m bench.diarization --graphs DIR [--preset low] [--sessions 1 8 32]

In process, ONNX Runtime on this machine's cores, as the `diarization` model runs it (no gRPC): an upper bound
on the served session count. The steady-state roofline: the graph's GFLOPs per session-step (counted from an ONNX
Runtime profile at the shapes the engine fed its last steady-state step) over the measured fp32 GEMM peak
(`--precision int8`: the int8 twin against the int8 GEMM peak).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.int8 import int8_gemm_peak
from bench.roofline import graph_peak
from mtasr.audio import synth_conversation
from mtasr.diarization import DiarizationConfig, DiarizationEngine
from mtasr.features import FeatureParams
from mtasr.manifest import FP32, INT8, PRECISIONS, Manifest
from mtasr.pipeline import OrtRunner, single_threaded_blas
from mtasr.spec import FRAME_SEC


class RecordingRunner:
    """A graph runner that keeps the feeds of its last call (the shapes a step really ran at)."""

    def __init__(self, runner: OrtRunner) -> None:
        self.runner, self.last_feeds = runner, {}

    def __call__(self, graph: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        self.last_feeds = feeds
        return self.runner(graph, feeds, outputs)


def steady_step_ms(engine: DiarizationEngine, n_sessions: int, steps: int) -> float:
    """Median wall ms of one step of `n_sessions` sessions once their cache and FIFO are full."""
    p = engine.cfg.preset
    fill_steps = -(-(p.spkcache_len + p.fifo_len) // p.chunk_len) + 1
    seconds = (fill_steps + steps + 2) * p.chunk_len * FRAME_SEC + p.chunk_right_context * FRAME_SEC
    audio = synth_conversation(seconds, n_speakers=3, seed=1)
    sessions = [engine.new_stream(f"s{i}") for i in range(n_sessions)]
    for s in sessions:
        engine.push_audio(s, audio)  # all chunks pending; END never sent: full-size chunks only
    times = []
    for k in range(fill_steps + steps):
        t = time.perf_counter()
        engine.step(sessions)
        if k >= fill_steps:
            times.append((time.perf_counter() - t) * 1000)
    for s in sessions:
        engine.close(s)
    return float(np.median(times))


def run(graphs: Path, preset: str = "low", sessions: tuple[int, ...] = (1, 8, 32), steps: int = 5,
        max_sessions: int = 512, precision: str = FP32) -> dict:
    """Step cost by session count, the largest real-time count and the roofline, on the fp32 standalone diarizer
    or (`precision` int8) its int8 twin, as `make serve PRECISION=int8` serves it."""
    single_threaded_blas()
    graphs = Path(graphs)
    manifest = Manifest.load(graphs)
    cfg = DiarizationConfig.from_manifest(manifest, preset)
    if precision == INT8:
        cfg = dataclasses.replace(cfg, graph=manifest.int8[cfg.graph])
    runner = RecordingRunner(OrtRunner(graphs))
    engine = DiarizationEngine(cfg, FeatureParams.load(graphs / manifest.features.diarizer), runner,
                               capacity=max(sessions))
    budget_ms = cfg.preset.chunk_len * FRAME_SEC * 1000
    by_sessions = {}
    for n in sessions:
        ms = steady_step_ms(engine, n, steps)
        by_sessions[n] = {"step_ms": round(ms, 2), "ms_per_session": round(ms / n, 3), "realtime": ms <= budget_ms}
    # the largest real-time count: double while real time, then bisect
    lo, hi = 0, 1
    while hi <= max_sessions and steady_step_ms(engine, hi, steps) <= budget_ms:
        lo, hi = hi, hi * 2
    hi = min(hi, max_sessions + 1)
    while hi - lo > max(1, lo // 8):  # within 12 %
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if steady_step_ms(engine, mid, steps) <= budget_ms else (lo, mid)
    # the arithmetic of one session-step at the shapes the engine really fed: one row of its last (steady-state)
    # call; the feeds may be views of the pool's slots, which keep their values until another session starts
    feeds = {k: v[:1] for k, v in runner.last_feeds.items()}
    # the fp32 peak at this graph's own GEMM shapes and threads, weights constant (bench.roofline.graph_peak)
    counted = graph_peak(graphs / manifest.diarizer.standalone_graph / "model.onnx", feeds)
    gflops = counted["gflops"]
    peak = int8_gemm_peak()["int8_gops"] if precision == INT8 else counted["peak_gflops"]
    floor_ms = gflops / peak * 1000
    best = min(v["ms_per_session"] for v in by_sessions.values())
    return {"preset": preset, "precision": precision, "graph": cfg.graph, "latency_sec": cfg.preset.latency_sec,
            "budget_ms": budget_ms, "by_sessions": by_sessions,
            "max_realtime_sessions": lo, "gflops_per_session_step": round(gflops, 4), "peak_gflops": peak,
            "roofline_ms_per_session": round(floor_ms, 4), "roofline_sessions": int(budget_ms / floor_ms),
            "best_fraction_of_roofline": round(floor_ms / best, 3)}


def table(r: dict, size: str) -> str:
    lines = [f"Preset `{r['preset']}` ({r['latency_sec']} s latency), graph `{r.get('graph')}`: a step must finish "
             f"within {r['budget_ms']:.0f} ms of audio. Steady state (speaker cache and FIFO full), in process.", "",
             "| sessions per step | step ms | ms per session | real time |", "|---|---|---|---|"]
    for n, v in r["by_sessions"].items():
        lines.append(f"| {n} | {v['step_ms']} | {v['ms_per_session']} | {'yes' if v['realtime'] else 'no'} |")
    lines += ["", f"Largest real-time session count ({size}): **{r['max_realtime_sessions']}**." + (
              f" Roofline: {r['gflops_per_session_step']} GFLOP per session-step at the measured "
              f"{'int8' if r.get('precision') == INT8 else 'fp32'} GEMM peak {r['peak_gflops']} G(FL)OP/s = "
              f"{r['roofline_ms_per_session']} ms, i.e. at most {r['roofline_sessions']} sessions; the best batch "
              f"reaches {r['best_fraction_of_roofline']:.0%} of it." if "peak_gflops" in r else
              f" {r['gflops_per_session_step']} GFLOP per session-step (no valid peak in these results).")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.diarization", description=__doc__.split("\n")[0])
    ap.add_argument("--graphs", type=Path, required=True)
    ap.add_argument("--preset", default="low")
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--precision", choices=PRECISIONS, default=FP32, help="int8: the standalone diarizer's int8 twin")
    args = ap.parse_args(argv)
    print(json.dumps(run(args.graphs, args.preset, tuple(args.sessions), args.steps, precision=args.precision)))
    return 0


if __name__ == "__main__":
    sys.exit(main())


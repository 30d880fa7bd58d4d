"""Orchestrator overhead: time in the served pipeline outside the graph calls, per request and per model step.

    python -m bench.overhead --graphs DIR [--preset 70_13] [--sessions 8] [--seconds 10] [--chunk-ms 160]

Drives the same `SequenceManager` + `Engine` that the `multitalker` model runs (request validation, features,
speaker-cache update, greedy decoding loop, transcript and reply JSON), with ONNX Runtime in process, as the
cpu repository serves it. Every graph call is timed; overhead = wall time - graph time. State bytes copied: what
the state pools gathered (when not a view) and scattered back, per session and step. Not included: the
Triton glue in model.py (tensor <-> numpy, a few lines) and gRPC.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from mtasr.pipeline import Engine, OrtRunner, PipelineConfig, single_threaded_blas
from mtasr.pipeline.sequences import SequenceManager
from mtasr.pipeline.sessions import SessionPolicy
from mtasr.pipeline.validation import AudioRequest
from mtasr.spec import SAMPLE_RATE

KEY = "overhead-bench-session-key"  # one in-process client owns every session


class TimedRunner:
    """Wraps a runner; accumulates seconds and calls per graph."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.seconds: Counter = Counter()
        self.calls: Counter = Counter()

    def __call__(self, graph, feeds, outputs):
        t = time.perf_counter()
        try:
            return self.runner(graph, feeds, outputs)
        finally:
            self.seconds[graph] += time.perf_counter() - t
            self.calls[graph] += 1


def run(graphs: Path, preset: str = "70_13", sessions: int = 8, seconds: float = 10.0,
        chunk_ms: float = 160.0) -> dict:
    """`sessions` streams sent in lockstep, one `chunk_ms` piece each per batch (as the sequence batcher would)."""
    from mtasr.audio import synth_conversation

    single_threaded_blas()  # as the multitalker model does
    cfg = PipelineConfig.from_folder(graphs, preset=preset)
    runner = TimedRunner(OrtRunner(graphs))
    engine = Engine.from_folder(graphs, runner, cfg)
    piece = int(chunk_ms * SAMPLE_RATE / 1000)
    audios = [synth_conversation(seconds, n_speakers=2, seed=i) for i in range(sessions)]
    n_pieces = -(-len(audios[0]) // piece)

    def stream(base: int) -> tuple[float, int]:
        manager = SequenceManager(engine, SessionPolicy(max_sessions=max(sessions, 1)))
        t0 = time.perf_counter()
        for k in range(n_pieces):
            batch = [AudioRequest(corrid=base + i, start=k == 0, end=k == n_pieces - 1,
                                  audio=a[k * piece:(k + 1) * piece].astype(np.float32), session_key=KEY)
                     for i, a in enumerate(audios)]
            replies = manager.handle(batch)
            assert not any(r.error for r in replies), [r.error for r in replies]
        return time.perf_counter() - t0, n_pieces * sessions

    pools = [engine.diarizer.pool, engine.asr.pool]
    stream(1000)  # warm-up: sessions and allocations
    runner.seconds.clear()
    runner.calls.clear()
    copied = sum(p.copied_bytes + p.device_copied_bytes for p in pools)  # cpu: device fields are host memory
    wall, requests = stream(2000)
    copied = sum(p.copied_bytes + p.device_copied_bytes for p in pools) - copied
    graph_s = sum(runner.seconds.values())
    steps = runner.calls[cfg.graphs["diarizer"]]  # one diarizer call per executed step (all sessions batched)
    step_sessions = steps * sessions
    return {"preset": preset, "sessions": sessions, "chunk_ms": chunk_ms, "requests": requests,
            "model_steps": steps, "wall_s": round(wall, 3), "graph_s": round(graph_s, 3),
            "graph_calls": dict(runner.calls), "graph_s_by_graph": {k: round(v, 3) for k, v in runner.seconds.items()},
            "overhead_ms_per_request": round((wall - graph_s) / requests * 1000, 3),
            "overhead_ms_per_session_step": round((wall - graph_s) / step_sessions * 1000, 3),
            "state_bytes_copied_per_session_step": round(copied / step_sessions)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n")[0])
    ap.add_argument("--graphs", type=Path, required=True)
    ap.add_argument("--preset", default="70_13")
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--chunk-ms", type=float, default=160.0)
    args = ap.parse_args(argv)
    print(json.dumps(run(args.graphs, args.preset, args.sessions, args.seconds, args.chunk_ms)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

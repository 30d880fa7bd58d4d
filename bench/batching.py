"""Encoder step time in process (onnxruntime): k active speakers of s sessions in ONE batched call vs k*s calls.

    python -m bench.batching --graphs /tmp/bgraphs [--preset 70_13] [--speakers 1 2 3 4] [--sessions 1 2 4 8]

Speakers default to 1 .. the model's count (its diarizer's outputs, 4 or 8).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from mtasr.examples import example_feed
from mtasr.pipeline import OrtRunner, PipelineConfig
from mtasr.spec import EncoderInputs, encoder_spec

EI = EncoderInputs.tensor_names()  # tensor names by attribute


def encoder_feeds(cfg: PipelineConfig, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of one full streaming step for `batch` speaker rows, caches half full (as the served pipeline)."""
    d, g = cfg.dims, cfg.geometry
    frames = g.step_frames
    n_enc = max(int(g.encoder_frames(np.array([frames]))[0]), 1)
    half = d.enc_last_channel // 2
    feed = example_feed(encoder_spec(d), {"batch": batch, "chunk_frames": frames, "enc_frames": n_enc},
                        {EI.length: frames, EI.cache_last_channel_len: half}, seed)
    feed[EI.cache_last_channel][:, :, : d.enc_last_channel - half] = 0.0  # only the last `half` frames are cache
    feed[EI.spk_targets] = (feed[EI.spk_targets] > 0.3).astype(np.float32)  # diarizer-like on/off activity
    feed[EI.bg_spk_targets] = (feed[EI.bg_spk_targets] > 0.7).astype(np.float32)
    return feed


def call_ms(fn, repeats: int) -> list[float]:
    """Wall times of `repeats` calls of `fn` in ms, after one warm-up call."""
    fn()  # warm-up (allocations for this batch size)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return times


def median_ms(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls of `fn` in ms, after one warm-up call."""
    return statistics.median(call_ms(fn, repeats))


def best_ms(fn, repeats: int) -> float:
    """Fastest of `repeats` calls of `fn` in ms (after a warm-up): a peak is the best the machine did."""
    return min(call_ms(fn, repeats))


def run(graphs: Path | str, preset: str | None = None, speakers: tuple[int, ...] | None = None,
        sessions: tuple[int, ...] = (1, 2, 4, 8), repeats: int = 20, threads: int = 0) -> dict:
    """Median ms of one batched encoder call vs as many single-row calls, for every (speakers, sessions)."""
    cfg = PipelineConfig.from_folder(graphs, preset=preset)
    speakers = speakers or tuple(range(1, cfg.n_spk + 1))
    runner = OrtRunner(graphs, threads=threads)
    graph, outputs = cfg.graphs["encoder"], encoder_spec(cfg.dims).output_names
    single = encoder_feeds(cfg, 1)
    rows = []
    for s in sessions:
        for k in speakers:
            n = k * s
            feeds = encoder_feeds(cfg, n)
            batched = median_ms(lambda f=feeds: runner(graph, f, outputs), repeats)
            singles = median_ms(lambda n=n: [runner(graph, single, outputs) for _ in range(n)], repeats)
            rows.append({"speakers": k, "sessions": s, "rows": n, "batched_ms": round(batched, 3),
                         "single_calls_ms": round(singles, 3), "speedup": round(singles / batched, 2)})
    return {"graph": graph, "preset": "_".join(map(str, cfg.preset)), "repeats": repeats, "rows": rows}


def table(result: dict) -> str:
    """Markdown table of `run`'s rows."""
    lines = [f"encoder {result['graph']} (median of {result['repeats']})", "",
             "| speakers | sessions | rows | batched ms | k*s single ms | speedup |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['speakers']} | {r['sessions']} | {r['rows']} | {r['batched_ms']:.2f} | "
              f"{r['single_calls_ms']:.2f} | {r['speedup']:.2f}x |" for r in result["rows"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.batching", description=__doc__.splitlines()[0])
    ap.add_argument("--graphs", type=Path, required=True, help="exported graphs folder (manifest.json)")
    ap.add_argument("--preset", help="latency preset, e.g. 70_13 (default: the manifest's)")
    ap.add_argument("--speakers", type=int, nargs="+", help="active speakers per session (default: 1 .. the model's)")
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: default)")
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    result = run(args.graphs, args.preset, tuple(args.speakers or ()), tuple(args.sessions), args.repeats,
                 args.threads)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    else:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

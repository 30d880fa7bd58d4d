"""int8 vs fp32 graphs side by side: one steady-state step of each, alternating in one process, medians.

    python -m bench.int8 --graphs DIR [--preset 70_13] [--rows 2] [--repeats 20] [--threads 0]

`DIR` is an exported folder with int8 twins (`python -m export ... --int8`). Steps: the diarizer with a full speaker
cache and FIFO (1 row), the encoder at the preset with `rows` speaker rows, caches half full (as `bench.roofline`).
fp32 and int8 calls alternate so that both see the same machine load; the figure is fp32 ms / int8 ms (> 1: int8
faster), with the max abs of the int8 outputs vs the fp32 ones on the same inputs. Prints a table and
`int8: diarizer=<x>x encoder=<x>x`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.batching import encoder_feeds
from bench.roofline import diarizer_feeds
from mtasr.manifest import Manifest
from mtasr.pipeline import PipelineConfig
from mtasr.pipeline.runner import ort_session


def alternating_ms(calls: dict[str, object], repeats: int) -> dict[str, float]:
    """Median ms per call of each named function, the functions called in turn `repeats` times (after a warm-up)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for fn in calls.values():
        fn()
    for _ in range(repeats):
        for name, fn in calls.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1000)
    return {name: statistics.median(v) for name, v in times.items()}


def run(graphs: Path, preset: str = "70_13", rows: int = 2, repeats: int = 20, threads: int = 0) -> dict:
    """Per step: fp32 and int8 median ms, their ratio and the int8 outputs' max abs vs fp32."""
    graphs = Path(graphs)
    manifest = Manifest.load(graphs)
    fp32 = PipelineConfig.from_manifest(manifest, preset=preset)
    int8 = PipelineConfig.from_manifest(manifest, preset=preset, precision="int8")
    feeds = {"diarizer": diarizer_feeds(fp32), "encoder": encoder_feeds(fp32, rows)}
    out: dict = {"preset": preset, "encoder_rows": rows, "threads": threads, "repeats": repeats, "steps": {}}
    for role, feed in feeds.items():
        sessions = {p: ort_session(graphs / cfg.graphs[role] / "model.onnx", threads)
                    for p, cfg in (("fp32", fp32), ("int8", int8))}
        results = {p: s.run(None, feed) for p, s in sessions.items()}
        diff = max(float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
                   for a, b in zip(results["int8"], results["fp32"], strict=True))
        ms = alternating_ms({p: (lambda s=s, f=feed: s.run(None, f)) for p, s in sessions.items()}, repeats)
        out["steps"][role] = {"graphs": {"fp32": fp32.graphs[role], "int8": int8.graphs[role]},
                              "fp32_ms": round(ms["fp32"], 2), "int8_ms": round(ms["int8"], 2),
                              "speedup": round(ms["fp32"] / ms["int8"], 2), "max_abs": diff}
    return out


def table(result: dict) -> str:
    lines = ["| step | fp32 ms | int8 ms | fp32 / int8 | int8 max abs vs fp32 |", "|---|---|---|---|---|"]
    for role, s in result["steps"].items():
        label = f"encoder ({result['encoder_rows']} rows)" if role == "encoder" else "diarizer (full cache + FIFO)"
        lines.append(f"| {label} | {s['fp32_ms']} | {s['int8_ms']} | {s['speedup']:.2f}× | {s['max_abs']:.3g} |")
    return "\n".join(lines)


def line(result: dict) -> str:
    return "int8: " + " ".join(f"{role}={s['speedup']:.2f}x" for role, s in result["steps"].items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.int8", description=__doc__.split("\n")[0])
    ap.add_argument("--graphs", type=Path, required=True, help="exported graphs folder with int8 twins")
    ap.add_argument("--preset", default="70_13")
    ap.add_argument("--rows", type=int, default=2, help="encoder rows (active speakers) per step")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: all cores)")
    args = ap.parse_args(argv)
    result = run(args.graphs, args.preset, args.rows, args.repeats, args.threads)
    print(table(result))
    print(json.dumps(result))
    print(line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

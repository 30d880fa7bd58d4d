"""`make bench`: every benchmark in one run; writes bench/results.json, BENCHMARKS.md and PNG plots.

    python -m bench.run [--full] [--smoke] [--tiny-graphs DIR] [--full-graphs DIR] [--out bench]

Parts: NeMo native vs served vs in process (tiny; full size with --full), real-time load search (tiny),
diarization service throughput (tiny; full with --full),
perf_analyzer sweep (tiny), roofline (tiny; full with --full), int8 vs fp32 graph steps (`bench.int8`, every size
whose graphs have int8 twins), state memory (spec + server RSS), encoder batching, orchestrator overhead. Missing
graphs are exported first (random init, the public architectures for full, with int8 twins).
`--smoke` shrinks every part (seconds, sessions, repeats) for CI: same code paths, meaningless figures.
The last line printed is
`bench: served_vs_native=<x> full_rtf=<r> full_rtf_int8=<r> int8_speedup=<x> realtime_sessions_tiny=<n> p99_ms=<ms>
peak_fraction=<f> diarize_sessions_tiny=<n> diarize_sessions_full=<n>` (one line): served_vs_native, full_rtf and
full_rtf_int8 from the full-size steady-state session (`--full`; else the tiny one / na), int8_speedup = served fp32
time / served int8 time, the diarization service's largest real-time session count (in process).

A part that raises, or whose figures `bench.report.problems` refuses (a NaN, a load run against a dead server,
a step above its peak), fails the run: exit 1, and only results.partial.json is written. Otherwise results.json,
then BENCHMARKS.md, docs/benchmarks.md's figures block and the plots rendered from it by `bench.report`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mtasr.spec import SAMPLE_RATE

ROOT = Path(__file__).resolve().parents[1]
PRESET = "70_13"
PARTIAL = "results.partial.json"  # progress of a run; results.json is written once every part has passed


@dataclass(frozen=True)
class Sizes:
    """How big each part runs (full benchmark vs CI smoke)."""

    native_seconds: float = 20.0
    full_seconds: float = 12.0
    steady_seconds: float = 60.0  # full size: long enough to fill the speaker cache and FIFO (steady state)
    load_seconds: float = 10.0
    # 64: above it (128, then 96 sessions) tritonserver 2.51 died (SIGSEGV) in the bench of 2026-11-29; the served
    # default admits 32 (`max_sessions`)
    load_max: int = 64
    budget_ms: float = 250.0
    burst_spread_s: float = 0.16  # the burst run: every session's model step in the same 160 ms piece
    perf_concurrency: str = "1:8:1"
    perf_interval_ms: int = 6000
    full_perf_concurrency: str = "1:2:1"
    full_perf_interval_ms: int = 30000
    repeats: int = 10
    memory_sessions: tuple[int, ...] = (1, 8, 32)
    batching_sessions: tuple[int, ...] = (1, 2, 4, 8)
    diarize_sessions: tuple[int, ...] = (1, 8, 32)
    diarize_sessions_full: tuple[int, ...] = (1, 2)
    diarize_steps: int = 5
    diarize_max: int = 512


SMOKE = Sizes(native_seconds=3.0, full_seconds=3.0, steady_seconds=3.0, load_seconds=3.0, load_max=2,
              perf_concurrency="1:1:1", perf_interval_ms=1500, repeats=2, memory_sessions=(1, 2),
              batching_sessions=(1, 2), diarize_sessions=(1, 2), diarize_sessions_full=(1,), diarize_steps=1,
              diarize_max=1)


def ensure_graphs(folder: Path, size: str) -> Path:
    """`folder` if it holds exported graphs, else export random-init `size` models (preset 70,13) into it."""
    if (folder / "manifest.json").is_file():
        return folder
    print(f"bench: exporting random-init {size} graphs into {folder}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "export", "--random-init", size, "--out", str(folder),
                    "--presets", "70,13", "--int8"], cwd=ROOT, check=True)
    return folder


def machine() -> dict:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import onnxruntime

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average_at_start": round(os.getloadavg()[1], 2)}


class BenchError(RuntimeError):
    """A part that failed: the run stops, and no results.json or BENCHMARKS.md is written from it."""


def _part(results: dict, name: str, fn, *args, **kwargs) -> None:
    """Run one part into `results[name]`; fail the run when it raises or gives results `bench.report` refuses.
    Progress goes to results.partial.json beside results.json (results.json itself only at the end)."""
    from bench import report

    print(f"bench: {name} ...", file=sys.stderr, flush=True)
    t = time.perf_counter()
    results[name] = fn(*args, **kwargs)
    results.setdefault("part_seconds", {})[name] = round(time.perf_counter() - t, 1)
    found = report.problems({name: results[name]})
    if found:
        raise BenchError(f"bench: part {name} failed:\n  " + "\n  ".join(found))
    (results["_out"] / PARTIAL).write_text(json.dumps({k: v for k, v in results.items() if k != "_out"},
                                                      indent=1, default=str, allow_nan=False))


def alive(server, what: str) -> None:
    """Raise `BenchError` unless `server` is still running and ready: a run against a dead server is void."""
    if server.proc.poll() is not None or not server.ready():
        raise BenchError(f"bench: tritonserver died during {what} (exit code {server.proc.poll()}); its figures "
                         f"are void. Server log tail:\n{server.log_tail(2000)}")


def load_search(graphs: Path, sizes: Sizes) -> dict:
    """Largest N of real-time 2-3 speaker sessions (160 ms pieces) with p99 below the budget, on one server, the
    sessions' starts spread over one model step (independent clients); then the same N with every session's step
    in the same piece (`burst`), and the server's and the load generator's CPU seconds per request."""
    from bench.memory import process_tree_cpu_seconds
    from bench.serving import served
    from client import loadgen

    audios = loadgen.make_audios(sizes.load_seconds, 160.0, variants=8)
    with served(graphs, PRESET, max_sessions=sizes.load_max) as server:  # the cap must not end the search
        loadgen.run_sessions(server.grpc_url, 1, audios, progress=False)  # warm-up
        result = loadgen.search(server.grpc_url, 1, sizes.load_max, audios, budget_ms=sizes.budget_ms,
                                after_run=lambda n, _: alive(server, f"the {n}-session load run"))
        n = max(1, result["max_realtime_sessions"])
        cpu0 = process_tree_cpu_seconds(server.pid)
        burst = loadgen.run_sessions(server.grpc_url, n, audios, spread_s=sizes.burst_spread_s, progress=False,
                                     budget_ms=sizes.budget_ms)
        alive(server, f"the {n}-session burst run")
        burst["server_cpu_s"] = round(process_tree_cpu_seconds(server.pid) - cpu0, 2)
        burst["server_ms_per_request"] = round(burst["server_cpu_s"] / max(1, burst["chunks"]) * 1000, 2)
        burst["loadgen_ms_per_request"] = round(burst["loadgen_cpu_s"] / max(1, burst["chunks"]) * 1000, 2)
    result["burst"] = burst
    result["budget_ms"] = sizes.budget_ms
    return result


def memory_part(graphs: Path, sizes: Sizes) -> dict:
    from bench import memory
    from bench.serving import served

    out = {"spec_bytes": memory.spec_report(graphs, PRESET)}
    # sessions are opened one after another and held while RSS settles: no idle expiry, room for all of them
    with served(graphs, PRESET, **memory.LIMITS) as server:
        out["rss_bytes"] = memory.measure_rss(server.grpc_url, server.pid, sizes.memory_sessions)
    return out


def run_all(tiny: Path, full: Path | None, sizes: Sizes, out: Path) -> dict:
    from bench import batching, diarization, int8, native_vs_served, overhead, perf, roofline
    from mtasr.manifest import INT8, Manifest

    results: dict = {"_out": out, "machine": machine(), "preset": PRESET, "smoke": sizes == SMOKE}
    _part(results, "native_vs_served_tiny", native_vs_served.run, tiny, sizes.native_seconds, PRESET, "kernel")
    if full is not None:
        _part(results, "native_vs_served_full", native_vs_served.run, full, sizes.full_seconds, PRESET, "kernel",
              int8=False)
        _part(results, "native_vs_served_full_steady", native_vs_served.run, full, sizes.steady_seconds, PRESET,
              "kernel")
        _part(results, "roofline_full", roofline.run, full, PRESET, 2, sizes.repeats, size="full")
    _part(results, "roofline_tiny", roofline.run, tiny, PRESET, 2, sizes.repeats, size="tiny")
    for size, graphs in (("tiny", tiny), ("full", full)):
        if graphs is None:
            continue
        # full size: a session-step takes ~0.5 s and each count first fills the cache (~30 steps): few counts
        counts = sizes.diarize_sessions if size == "tiny" else sizes.diarize_sessions_full
        _part(results, f"diarization_{size}", diarization.run, graphs, "low", counts, sizes.diarize_steps,
              sizes.diarize_max)
        if Manifest.load(graphs).int8:
            _part(results, f"int8_{size}", int8.run, graphs, PRESET, 2, 2 * sizes.repeats)
            if size == "full":
                _part(results, "diarization_full_int8", diarization.run, graphs, "low", counts,
                      sizes.diarize_steps, sizes.diarize_max, INT8)
    _part(results, "overhead", overhead.run, tiny, PRESET, 8, sizes.load_seconds)
    _part(results, "batching", batching.run, tiny, PRESET, None, sizes.batching_sessions, sizes.repeats)
    _part(results, "memory", memory_part, tiny, sizes)
    if perf.PERF_ANALYZER.is_file():
        _part(results, "perf_analyzer", perf.run, tiny, sizes.perf_concurrency, sizes.load_seconds,
              out / "perf_analyzer.csv", None, PRESET, sizes.perf_interval_ms)
        if full is not None:  # sequences of the steady-state length: the speaker cache fills in each
            _part(results, "perf_analyzer_full", perf.run, full, sizes.full_perf_concurrency, sizes.steady_seconds,
                  out / "perf_analyzer_full.csv", None, PRESET, sizes.full_perf_interval_ms)
    _part(results, "load", load_search, tiny, sizes)
    # new parts: one `_part(results, "<key>", fn, ...)` call here and one `bench.report.Part` for its section
    from bench import report

    results.pop("_out")
    results["step_seconds"] = perf.step_samples(tiny, PRESET) / SAMPLE_RATE
    results["machine"]["load_average_at_end"] = round(os.getloadavg()[1], 2)
    results["summary"] = summary(results)
    report.check(results)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str, allow_nan=False))
    (out / PARTIAL).unlink(missing_ok=True)
    return results


def _floors(r: dict) -> dict:
    """Floors of the full-size steady-state RTF, per second of audio, from one step's counted arithmetic (diarizer
    1 row + encoder 2 rows): at the measured fp32 GEMM peak, at the steps' own GEMMs' speeds (each node alone at
    its shapes), and at the measured int8 GEMM peak."""
    roof, q, step = r.get("roofline_full"), r.get("int8_full"), r["step_seconds"]
    out: dict = {"full_rtf_floor_fp32": None, "full_rtf_gemm_floor_fp32": None, "full_rtf_floor_int8": None}
    if roof:
        gflop = sum(x["gflops"] for x in roof["steps"].values())
        out["full_rtf_floor_fp32"] = round(gflop / roof["peak"]["peak_gflops"] / step, 3)
        out["full_rtf_gemm_floor_fp32"] = round(sum(x["gemm_floor_ms"] for x in roof["steps"].values()) / 1000
                                                / step, 3)
    if q and "peak" in q:
        out["full_rtf_floor_int8"] = round(sum(x["gop"] for x in q["steps"].values()) / q["peak"]["int8_gops"]
                                           / step, 3)
    return out


def summary(r: dict) -> dict:
    steady = r.get("native_vs_served_full_steady")
    vs = steady or r.get("native_vs_served_full") or r["native_vs_served_tiny"]
    roof = r.get("roofline_full") or r["roofline_tiny"]
    load = r["load"]
    with_int8 = vs if "int8_speedup" in vs else r["native_vs_served_tiny"]
    return {"served_vs_native": vs["served_vs_native"],
            "served_vs_native_size": "full" if vs is not r["native_vs_served_tiny"] else "tiny",
            "full_rtf": steady["served_rtf"] if steady else None,
            "full_rtf_short": r["native_vs_served_full"]["served_rtf"] if "native_vs_served_full" in r else None,
            "full_rtf_int8": steady.get("served_int8_rtf") if steady else None,
            "int8_speedup": with_int8.get("int8_speedup"),
            "int8_speedup_size": "full" if with_int8 is steady else "tiny",
            "realtime_sessions_tiny": load["max_realtime_sessions"], "p99_ms": load["p99_ms_at_max"],
            "peak_fraction": roof["steps"]["encoder"]["peak_fraction"],
            "peak_fraction_size": "full" if "roofline_full" in r else "tiny", **_floors(r),
            **{f"diarize_sessions_{size}": r[f"diarization_{size}"]["max_realtime_sessions"]
               if f"diarization_{size}" in r else None for size in ("tiny", "full", "full_int8")}}


def main(argv: list[str] | None = None) -> int:
    from bench import report

    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="also the full-size parts (exports ~12 GB if needed)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes for CI (figures not meaningful)")
    ap.add_argument("--tiny-graphs", type=Path, default=ROOT / "artifacts" / "bench_tiny")
    ap.add_argument("--full-graphs", type=Path, default=ROOT / "artifacts" / "bench_full")
    ap.add_argument("--out", type=Path, default=ROOT / "bench")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    tiny = ensure_graphs(args.tiny_graphs, "tiny")
    full = ensure_graphs(args.full_graphs, "full") if args.full else None
    try:
        results = run_all(tiny, full, SMOKE if args.smoke else Sizes(), args.out)
    except (BenchError, report.InvalidResults) as exc:
        print(exc, file=sys.stderr)
        print(f"bench: failed; nothing written but {args.out / PARTIAL}", file=sys.stderr)
        return 1
    paths = report.plots(results, args.out)
    committed = args.out.resolve() == (ROOT / "bench").resolve()
    md = ROOT / "BENCHMARKS.md" if committed else args.out / "BENCHMARKS.md"
    report.write(results, md, docs=committed, plot_dir=args.out)
    print(f"bench: wrote {args.out / 'results.json'}, {md}, {', '.join(p.name for p in paths)}", file=sys.stderr)
    print(report.final_line(results["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

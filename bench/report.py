"""BENCHMARKS.md, the docs' generated blocks (figures, reply sizes) and the plots, from the committed results alone.

    python -m bench.report [--results bench/results.json] [--check] [--plots]

`make bench` (`bench.run`) measures, checks (`problems`: any NaN, a load run against a dead server, a step above
its peak fails the run) and writes results.json, then renders through this module. Rendering the committed
results.json again must give the committed BENCHMARKS.md and docs blocks (`--check`; tests/test_bench_report.py).

A benchmark part is one results key and one render function, listed in `PARTS` in the order BENCHMARKS.md shows
them; a part whose key is not in the results is left out. A new part adds its measurement to `bench.run` (its
results key) and one `Part` here. Hand-written, dated notes live in bench/records.md, linked, never pasted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results.json"
BENCHMARKS = ROOT / "BENCHMARKS.md"
FIGURES_DOC = ROOT / "docs" / "benchmarks.md"  # the headline figures (bench-figures block)
REPLY_SIZE_DOC = ROOT / "docs" / "serving.md"  # replies and timing (reply-size block)
REPLY_SIZE = ROOT / "bench" / "reply_size.json"
RECORDS = "bench/records.md"
PLOTS = ("latency_vs_concurrency.png", "served_vs_native.png")

LINE_KEYS = ("served_vs_native", "full_rtf", "full_rtf_int8", "int8_speedup", "realtime_sessions_tiny", "p99_ms",
             "peak_fraction", "diarize_sessions_tiny", "diarize_sessions_full")


class InvalidResults(ValueError):
    """A results file a failed or void measurement made: not rendered, never committed."""


def final_line(s: dict) -> str:
    """`make bench`'s last line, from the summary."""

    def fmt(v) -> str:
        return "na" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))

    return "bench: " + " ".join(f"{k}={fmt(s.get(k))}" for k in LINE_KEYS)


# --- validity ------------------------------------------------------------------------------------------------


def _non_finite(value, path: str = "") -> list[str]:
    if isinstance(value, float) and not math.isfinite(value):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _non_finite(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _non_finite(v, f"{path}[{i}]")]
    return []


def load_run_problems(run: dict, label: str) -> list[str]:
    """A load run is a measurement when replies were timed. Sessions that failed on a live server (bench.run
    checks it after every run: a dead server fails the run there) are a finding, e.g. STARTs refused when the
    server is full: the run is not real time, and the table counts them."""
    first_error = (run.get("errors") or ["no error"])[0][:200]
    return [] if run.get("chunks") else [f"{label}: no reply was timed ({first_error})"]


def problems(r: dict) -> list[str]:
    """Why results cannot be rendered (empty when they can): NaN or infinity anywhere, a load or burst run that
    timed no reply, a step above its peak or faster than its own GEMMs, a fraction of a roofline above 1."""
    from bench import roofline

    out = [f"not a finite number: {p}" for p in _non_finite(r)]
    if "load" in r:
        for n, run in r["load"]["runs"].items():
            out += load_run_problems(run, f"load, {n} sessions")
        if "burst" in r["load"]:
            out += load_run_problems(r["load"]["burst"], "load, burst")
    for size in ("tiny", "full"):
        roof = r.get(f"roofline_{size}")
        if roof and "peak" in roof:
            out += roofline.check(roof, f"roofline_{size}")
        q = r.get(f"int8_{size}")
        for role, s in (q or {}).get("steps", {}).items():
            if s.get("int8_peak_fraction", 0) > 1:
                out.append(f"int8_{size}: {role} at {s['int8_peak_fraction']:.0%} of the int8 GEMM peak")
    for key in ("diarization_tiny", "diarization_full", "diarization_full_int8"):
        if r.get(key, {}).get("best_fraction_of_roofline", 0) > 1:
            out.append(f"{key}: the best batch at {r[key]['best_fraction_of_roofline']:.0%} of its roofline")
    return out


def check(r: dict) -> None:
    """Raise `InvalidResults` listing every problem."""
    found = problems(r)
    if found:
        raise InvalidResults("results not valid:\n  " + "\n  ".join(found))


# --- sections ------------------------------------------------------------------------------------------------


def _native_vs_served(r: dict) -> list[str]:
    lines = ["## NeMo native vs served, single session", "",
             "| models | audio s | NeMo native RTF | served RTF | in-process RTF | served / native | outputs agree "
             "| served int8 RTF | int8 speed-up | int8 words = fp32 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, label in (("tiny", "tiny"), ("full", "full"), ("full_steady", "full, steady state")):
        v = r.get(f"native_vs_served_{key}")
        if v:
            q = [f"{v['served_int8_rtf']}", f"{v['int8_speedup']}×", f"{v['int8_word_agreement']:.1%}"] \
                if "int8_speedup" in v else ["–"] * 3
            lines.append(f"| {label} | {v['audio_seconds']} | {v['native_rtf']} | {v['served_rtf']} | "
                         f"{v['in_process_rtf']} | {v['served_vs_native']}× | {v['outputs_agree']} | "
                         f"{' | '.join(q)} |")
    return lines + ["", *bound_sentences(r)]


def bound_sentences(r: dict, tables: str = "below") -> list[str]:
    """Each headline figure against its bound, one sentence each (only bounds whose peak is in the results);
    `tables`: where the roofline tables are, from where the sentences stand."""
    s, out = r["summary"], []
    steady = r.get("native_vs_served_full_steady")
    if steady and s.get("full_rtf_floor_fp32"):
        bound = steady["native_rtf"] / s["full_rtf_floor_fp32"]
        out.append(f"- Full size, steady state: served fp32 RTF {steady['served_rtf']} against an arithmetic floor of "
                   f"{s['full_rtf_floor_fp32']} (one step's counted GFLOPs at the measured fp32 GEMM peak, per "
                   f"{r['step_seconds']:.2f} s of audio); served / native {steady['served_vs_native']}×, whose bound "
                   f"is native RTF / floor = {bound:.2f}× (the 2.5× goal "
                   f"{'fits under' if bound >= 2.5 else 'is above'} it).")
        if s.get("full_rtf_gemm_floor_fp32"):
            out.append(f"- The steps' own GEMMs alone (each at the speed it runs at alone, at its shapes) take "
                       f"RTF {s['full_rtf_gemm_floor_fp32']}: what this exported graph and ONNX Runtime can reach "
                       "without changing the graph.")
    elif steady:
        out.append("- Full size, steady state: no valid fp32 peak in these results, so no arithmetic floor and no "
                   "bound on served / native is argued from them.")
    if steady and s.get("full_rtf_floor_int8") and "served_int8_rtf" in steady:
        out.append(f"- int8: served RTF {steady['served_int8_rtf']} ({steady['int8_speedup']}× fp32) against an int8 "
                   f"floor of {s['full_rtf_floor_int8']} (the same arithmetic at the measured int8 GEMM peak); the "
                   "0.4 goal needs the steps' float remainder (attention products, convolutions, normalisation) and "
                   f"the int8 MatMuls near their peak — see the int8 roofline rows and operator shares {tables}.")
    load, burst = r["load"], r["load"].get("burst")
    if burst:
        per_request = burst["server_ms_per_request"] + burst["loadgen_ms_per_request"]
        cores = r["machine"]["cores"]
        cpu_bound = int(cores * 1000 / per_request / (1000 / burst["chunk_ms"]))
        out.append(f"- Tiny load: {load['max_realtime_sessions']} real-time sessions (p99 < {load['budget_ms']:.0f} "
                   f"ms). CPU bound: {per_request:.2f} ms of CPU per {burst['chunk_ms']:.0f} ms request (server "
                   f"{burst['server_ms_per_request']} + load generator {burst['loadgen_ms_per_request']}) on "
                   f"{cores} cores = {cpu_bound} sessions; before that the p99 budget binds, since a model "
                   "step's request waits behind the other sessions' steps.")
    return out


def _load(r: dict) -> list[str]:
    load = r["load"]
    lines = [f"## Real-time load (tiny; 160 ms pieces, p99 budget {load['budget_ms']:.0f} ms)", "",
             f"Largest N real time: **{load['max_realtime_sessions']}** "
             f"(p99 {load['p99_ms_at_max'] or 0:.0f} ms; the search stops at {load['range'][1]}). One load-generator "
             "process drives every session on one asyncio loop; sessions start spread over one 1.12 s model step, "
             "as independent clients would. The server is checked alive after every run.", "",
             "| sessions | p50 ms | p95 ms | p99 ms | worst wall/audio | load generator cores | failed sessions "
             "| real time |", "|---|---|---|---|---|---|---|---|"]
    for k, v in sorted(load["runs"].items(), key=lambda kv: int(kv[0])):
        lines.append(f"| {k} | {v['p50_ms']:.1f} | {v['p95_ms']:.1f} | {v['p99_ms']:.1f} | {v['rtf_max']:.3f} | "
                     f"{v.get('loadgen_cores', '–')} | {len(v['errors'])} | {v['realtime']} |")
    burst = load.get("burst")
    if burst:
        lines += ["", f"Burst: the same {burst['sessions']} sessions started within {burst['spread_s']} s, so every "
                  f"session's model step falls in the same piece: p50 {burst['p50_ms']:.0f} ms, p99 "
                  f"{burst['p99_ms']:.0f} ms, real time: {burst['realtime']}. CPU per 160 ms request: server "
                  f"(tritonserver + stubs) {burst['server_ms_per_request']} ms, load generator "
                  f"{burst['loadgen_ms_per_request']} ms."]
    return lines


def _perf(r: dict) -> list[str]:
    from bench import perf

    return ["## perf_analyzer (tiny; back-to-back 1.12 s requests, gRPC, sequence batching)", "",
            perf.table(r["perf_analyzer"])]


def _perf_full(r: dict) -> list[str]:
    from bench import perf

    pf = r["perf_analyzer_full"]
    return [f"## perf_analyzer (full, fp32; sequences of {pf['sequence_length']} requests of 1.12 s: the speaker "
            "cache fills)", "", perf.table(pf)]


def _roofline(size: str) -> Callable[[dict], list[str]]:
    def render(r: dict) -> list[str]:
        from bench import roofline

        roof = r[f"roofline_{size}"]
        if "peak" in roof:
            return [f"## Roofline ({size})", "", roofline.table(roof)]
        lines = [f"## Roofline ({size})", "", "No valid fp32 peak in these results (see above): counted arithmetic "
                 "(the diarizer's checked against `bench.roofline.sortformer_step_flops`) and step times only.", "",
                 "| step | GFLOPs counted | GFLOPs analytic | ms | GFLOP/s |", "|---|---|---|---|---|"]
        for name, s in roof["steps"].items():
            label = f"{name} ({roof['encoder_rows']} rows)" if name == "encoder" else f"{name} (1 row)"
            lines.append(f"| {label} | {s['gflops']} | {s.get('analytic_gflops', '–')} | {s['ms']} | "
                         f"{s['gflops_per_s']} |")
        return lines

    return render


def _diarization(key: str) -> Callable[[dict], list[str]]:
    label = key.removeprefix("diarization_").replace("_", ", ")

    def render(r: dict) -> list[str]:
        from bench import diarization

        return [f"## Diarization service ({label})", "", diarization.table(r[key], label)]

    return render


def _int8(size: str) -> Callable[[dict], list[str]]:
    def render(r: dict) -> list[str]:
        from bench import int8

        q = r[f"int8_{size}"]
        lines = [f"## int8 vs fp32 graphs ({size}; `python -m bench.int8`)", "",
                 f"One steady-state step, fp32 and int8 sessions called in turn in one process, medians of "
                 f"{q['repeats']}; int8 = `export --int8` (MatMul and pointwise-convolution weights int8 per channel, "
                 "activations quantised per call), served with `make serve PRECISION=int8`.", "", int8.table(q)]
        return lines + (["", int8.roofline_table(q)] if "peak" in q else [])

    return render


def _overhead(r: dict) -> list[str]:
    o = r["overhead"]
    return [f"## Orchestrator overhead (tiny, in process, {o['sessions']} sessions)", "",
            f"{o['overhead_ms_per_request']} ms per 160 ms request, {o['overhead_ms_per_session_step']} ms per "
            f"session per 1.12 s model step, outside {sum(o['graph_calls'].values())} graph calls "
            f"({o['graph_calls']})."]


def _batching(r: dict) -> list[str]:
    from bench import batching

    return ["## Encoder batching (tiny)", "", batching.table(r["batching"])]


def _memory(r: dict) -> list[str]:
    spec, rss = r["memory"]["spec_bytes"], r["memory"]["rss_bytes"]
    return ["## Memory", "", "State bytes per session (spec): " + ", ".join(
        f"{k} {v['total'] / 2**20:.2f} MiB" for k, v in spec.items() if isinstance(v, dict) and "total" in v), "",
        f"Server RSS (tiny): baseline {rss['baseline'] / 2**20:.0f} MiB; " + ", ".join(
            f"{k} open {v / 2**20:.0f} MiB" for k, v in rss["open"].items()) +
        f"; after END {rss['after_end'] / 2**20:.0f} MiB; second round of {max(rss['open'], key=int)}: open "
        f"{rss['open_round2'] / 2**20:.0f} MiB, after END {rss['after_end_round2'] / 2**20:.0f} MiB "
        f"(no growth: {rss['no_growth_round2']})."]


@dataclass(frozen=True)
class Part:
    """One section of BENCHMARKS.md: the results key it needs and how it renders (markdown lines)."""

    key: str
    render: Callable[[dict], list[str]]


# In BENCHMARKS.md order. New parts (e.g. capacity) add a line here and their key in bench.run.
PARTS: tuple[Part, ...] = (
    Part("native_vs_served_tiny", _native_vs_served),
    Part("load", _load),
    Part("perf_analyzer", _perf),
    Part("perf_analyzer_full", _perf_full),
    Part("roofline_tiny", _roofline("tiny")),
    Part("roofline_full", _roofline("full")),
    Part("diarization_tiny", _diarization("diarization_tiny")),
    Part("int8_tiny", _int8("tiny")),
    Part("diarization_full", _diarization("diarization_full")),
    Part("int8_full", _int8("full")),
    Part("diarization_full_int8", _diarization("diarization_full_int8")),
    Part("overhead", _overhead),
    Part("batching", _batching),
    Part("memory", _memory),
    Part("capacity", lambda r: _capacity(r["capacity"])),
)


def _capacity(c: dict) -> list[str]:
    from bench.capacity import render

    return render(c)


def _header(r: dict) -> list[str]:
    m = r["machine"]
    lines = ["# Benchmarks", "", "Generated by `make bench` (`python -m bench.run`) from `bench/results.json` "
             "(`python -m bench.report` renders it again); do not edit by hand. Hand-written, dated notes of "
             f"one-off measurements: [{RECORDS}]({RECORDS}).", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; Python {m['python']}, "
             f"ONNX Runtime {m['onnxruntime']}; {m['date']}. Random-init models with the public architectures "
             "(tiny for tests; full = 117.7 M + 622.3 M params). Shared machine: compare ratios within one run. "
             f"5-minute load average {m['load_average_at_start']} at the start, {m.get('load_average_at_end')} at "
             "the end (above the core count = other work competed for the cores).",
             "", "```", final_line(r["summary"]), "```"]
    if r.get("smoke"):
        lines += ["", "**Smoke run (CI sizes): the figures are not meaningful.**"]
    if r.get("voided"):
        lines += ["", "Removed from this run's results as void (the rest of the run stands):"]
        lines += [f"- {v['what']}: {v['why']} (removed {v['date']})" for v in r["voided"]]
    return lines


def render(r: dict, plot_links: tuple[str, ...] = tuple(f"bench/{p}" for p in PLOTS)) -> str:
    """BENCHMARKS.md from the results (checked first); `plot_links` relative to the markdown file."""
    check(r)
    lines = _header(r)
    for part in PARTS:
        if part.key in r:
            lines += ["", *part.render(r)]
    lines += ["", *(f"![{Path(p).stem}]({p})" for p in plot_links)]
    return "\n".join(lines) + "\n"


# --- docs blocks ---------------------------------------------------------------------------------------------


def figures_block(r: dict) -> str:
    """docs/benchmarks.md's headline figures: the last line, the bounds, where the full tables are."""
    m, s = r["machine"], r["summary"]
    tables = Path(os.path.relpath(BENCHMARKS, FIGURES_DOC.parent)).as_posix()
    lines = [f"From `make bench` of {m['date']} ({m['cpu']}, {m['cores']} cores, random-init weights; all tables in "
             f"[BENCHMARKS.md]({tables})):", "", "```", final_line(s), "```"]
    steady = r.get("native_vs_served_full_steady")
    if steady:
        lines += ["", f"- Full size, 2 speakers, {steady['audio_seconds']:.0f} s (steady state: speaker cache and "
                  f"FIFO full): served RTF {steady['served_rtf']} fp32"
                  + (f" and **{steady['served_int8_rtf']} int8** ({steady['int8_speedup']}×, "
                     f"{steady['int8_word_agreement']:.0%} of the fp32 words)" if "served_int8_rtf" in steady else "")
                  + f", NeMo native {steady['native_rtf']} (served / native {steady['served_vs_native']}×)."]
    load = r["load"]
    lines.append(f"- Tiny models, served: **{load['max_realtime_sessions']}** concurrent real-time sessions at p99 "
                 f"{load['p99_ms_at_max'] or 0:.0f} ms (budget {load['budget_ms']:.0f} ms; the search stops at "
                 f"{load['range'][1]}).")
    lines += bound_sentences(r, "in BENCHMARKS.md")
    for size in ("tiny", "full", "full_int8"):
        d = r.get(f"diarization_{size}")
        if d:
            one = d["by_sessions"][min(d["by_sessions"], key=int)]
            lines.append(f"- Diarization service ({size.replace('_', ', ')}): one session's step "
                         f"{one['step_ms']} ms against the {d['budget_ms']:.0f} ms budget of the {d['latency_sec']} "
                         f"s setting; **{d['max_realtime_sessions']}** real-time sessions in process.")
    return "\n".join(lines)


def reply_size_block(d: dict) -> str:
    """docs/serving.md's reply-size paragraph, from bench/reply_size.json (`python -m bench.reply_size`)."""
    a, n = d["audio"], d["nemo"]
    return (f"Replies stay flat over long sessions (`{d['command']}`, {d['machine']['date']}: the graphs in "
            f"`{d['graphs']}`, a {d['minutes']:g}-minute session of the committed samples in {d['chunk_ms']:.0f} ms "
            f"pieces, {a['replies']:,} replies each): audio timing {a['first_minute_mean']:,.0f} bytes per reply on "
            f"average in the first minute and {a['last_minute_mean']:,.0f} in the last (largest "
            f"{a['first_minute_max']:,} and {a['last_minute_max']:,}), the END reply with the whole SegLST "
            f"({a['segments']} utterances) {a['end_reply'] / 1000:,.0f} KB, {a['total_bytes'] / 1e6:.2f} MB in all; "
            f"NeMo timing {n['first_minute_mean']:,.0f} → {n['last_minute_mean']:,.0f} bytes per reply (largest "
            f"{n['first_minute_max']:,} → {n['last_minute_max']:,}), {n['total_bytes'] / 1e6:.1f} MB in all.")


@dataclass(frozen=True)
class DocBlock:
    """A generated stretch of the markdown file `doc`: between its markers, `render` of the JSON file `source`."""

    name: str
    doc: Path
    source: Path
    render: Callable[[dict], str]

    @property
    def label(self) -> str:
        return f"{Path(os.path.relpath(self.doc, ROOT)).as_posix()} ({self.name})"

    @property
    def begin(self) -> str:
        source = self.source.relative_to(ROOT)
        return f"<!-- {self.name}:begin (generated by `python -m bench.report` from {source}) -->"

    @property
    def end(self) -> str:
        return f"<!-- {self.name}:end -->"

    def present(self, text: str) -> bool:
        return self.begin in text and self.end in text

    def current(self, text: str) -> str:
        return text[text.index(self.begin) + len(self.begin) : text.index(self.end)].strip()

    def replaced(self, text: str, data: dict) -> str:
        return text[: text.index(self.begin) + len(self.begin)] + "\n" + self.render(data) + "\n" + \
            text[text.index(self.end) :]


DOC_BLOCKS = (DocBlock("bench-figures", FIGURES_DOC, RESULTS, figures_block),
              DocBlock("reply-size", REPLY_SIZE_DOC, REPLY_SIZE, reply_size_block))


def _source(block: DocBlock, results: dict | None) -> dict:
    return results if results is not None and block.source == RESULTS else json.loads(block.source.read_text())


def stale_doc_blocks(results: dict | None = None) -> list[str]:
    """The docs blocks missing from their file or differing from a rendering of their source (`results` stands for
    results.json), as `file (block)`."""
    out = []
    for block in DOC_BLOCKS:
        text = block.doc.read_text()
        if not block.present(text) or block.current(text) != block.render(_source(block, results)).strip():
            out.append(block.label)
    return out


def write_doc_blocks(results: dict) -> None:
    """Render every docs block into its file (markers missing from it are an error: a block was moved)."""
    for block in DOC_BLOCKS:
        text = block.doc.read_text()
        if not block.present(text):
            raise ValueError(f"{block.label}: markers not found ({block.begin})")
        block.doc.write_text(block.replaced(text, _source(block, results)))


# --- plots ---------------------------------------------------------------------------------------------------


def plots(r: dict, out: Path) -> list[Path]:
    """latency_vs_concurrency.png (load runs + perf_analyzer) and served_vs_native.png, into `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 4))
    runs = sorted(r["load"]["runs"].items(), key=lambda kv: int(kv[0]))
    n = [int(k) for k, _ in runs]
    for q in ("p50", "p99"):
        ax.plot(n, [v[f"{q}_ms"] for _, v in runs], "o-", label=f"real-time sessions, {q}")
    if "perf_analyzer" in r:
        rows = r["perf_analyzer"]["rows"]
        ax.plot([x["concurrency"] for x in rows], [x["p99_ms"] for x in rows], "s--", label="perf_analyzer, p99")
    ax.axhline(r["load"]["budget_ms"], color="gray", lw=0.8, ls=":", label="budget")
    ax.set(xlabel="concurrent sessions / concurrency", ylabel="latency per request (ms)", yscale="log",
           title="tiny models, [70,13], 2-core CPU")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out / PLOTS[0])
    fig.savefig(paths[-1], dpi=110, metadata={"Software": None})
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    labels, bars = [], []
    for size in ("tiny", "full"):
        v = r.get(f"native_vs_served_{size}")
        if v:
            labels += [f"{size}\nNeMo native", f"{size}\nserved", f"{size}\nin process"]
            bars += [v["native_rtf"], v["served_rtf"], v["in_process_rtf"]]
    ax.bar(labels, bars, color=["#888", "#2a7", "#27a"] * (len(bars) // 3))
    ax.axhline(1.0, color="red", lw=0.8, ls=":")
    ax.set(ylabel="real-time factor (wall / audio)", title="single session, 2 speakers, [70,13]")
    fig.tight_layout()
    paths.append(out / PLOTS[1])
    fig.savefig(paths[-1], dpi=110, metadata={"Software": None})
    plt.close(fig)
    return paths


def write(r: dict, md: Path = BENCHMARKS, docs: bool = True, plot_dir: Path | None = None) -> None:
    """BENCHMARKS.md at `md` (plots linked relative to it, drawn into `plot_dir` when given) and, when `docs`, the
    docs blocks (`DOC_BLOCKS`)."""
    plot_dir = plot_dir or md.parent / "bench"
    links = tuple(Path(plot_dir / p).relative_to(md.parent).as_posix() for p in PLOTS)
    md.write_text(render(r, links))
    if docs:
        write_doc_blocks(r)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--check", action="store_true", help="exit 1 when BENCHMARKS.md or a docs block differ")
    ap.add_argument("--plots", action="store_true", help="also draw bench/*.png again")
    args = ap.parse_args(argv)
    r = json.loads(args.results.read_text())
    try:
        md = render(r)
    except InvalidResults as exc:
        print(f"bench.report: {exc}", file=sys.stderr)
        return 1
    if args.check:
        stale = ([BENCHMARKS.name] if BENCHMARKS.read_text() != md else []) + stale_doc_blocks(r)
        if stale:
            print(f"bench.report: {', '.join(stale)} differ from {args.results}: run python -m bench.report",
                  file=sys.stderr)
        return 1 if stale else 0
    write(r, BENCHMARKS)
    if args.plots:
        plots(r, ROOT / "bench")
    print(f"bench.report: wrote {BENCHMARKS.name} and the docs blocks from {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

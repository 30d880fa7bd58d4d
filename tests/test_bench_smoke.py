"""Smoke test of `make bench` at CI sizes: one run of every part (`bench.run.run_all` with `SMOKE` sizes) on the
run's tiny graphs, then each part's figures checked for form: they ran and give well-formed numbers (no speed is
asserted). The parts' own CLIs share this code; the unit checks of the renderer are in test_bench_report.py."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from bench import batching, int8, memory, perf, report, roofline, run
from mtasr.spec import PUBLIC_CHECKPOINT_DIMS


@pytest.fixture(scope="module")
def smoke(tiny_graphs, tmp_path_factory) -> dict:
    """One `make bench` at smoke sizes: its in-memory results and its output folder."""
    out = tmp_path_factory.mktemp("bench_smoke")
    return {"results": run.run_all(tiny_graphs, None, run.SMOKE, out), "out": out}


def test_results_file_and_benchmarks_md(smoke):
    """Every part ran; results.json (and nothing partial) was written and passes the renderer's checks;
    BENCHMARKS.md renders from results.json alone; the last line is well formed."""
    results, out = smoke["results"], smoke["out"]
    assert {"native_vs_served_tiny", "roofline_tiny", "diarization_tiny", "int8_tiny", "overhead", "batching",
            "memory", "load"} <= set(results)
    assert results["native_vs_served_tiny"]["outputs_agree"] is True
    written = json.loads((out / "results.json").read_text())
    assert written["summary"] == results["summary"] and not (out / run.PARTIAL).exists()
    assert report.problems(written) == []
    paths = report.plots(written, out)
    assert all(p.stat().st_size > 1000 for p in paths)
    report.write(written, out / "BENCHMARKS.md", docs=False, plot_dir=out)
    md = (out / "BENCHMARKS.md").read_text()
    assert "Smoke run" in md and "## Roofline (tiny)" in md and "## Diarization service (tiny)" in md
    assert "## int8 vs fp32 graphs (tiny" in md and "int8 GEMM 2048³ peak" in md and "Burst:" in md
    assert "](latency_vs_concurrency.png)" in md and "fp32 GEMM peak:" in md
    tiny = results["native_vs_served_tiny"]
    assert tiny["int8_speedup"] > 0 and 0 <= tiny["int8_word_agreement"] <= 1
    line = report.final_line(results["summary"])
    assert re.fullmatch(r"bench: served_vs_native=\S+ full_rtf=na full_rtf_int8=na int8_speedup=[0-9.]+ "
                        r"realtime_sessions_tiny=\d+ p99_ms=\S+ peak_fraction=[0-9.]+ diarize_sessions_tiny=\d+ "
                        r"diarize_sessions_full=na", line), line
    assert results["diarization_tiny"]["by_sessions"][2]["step_ms"] > 0


def test_load_search_and_burst(smoke):
    """The load search (alive-checked after each run) and the burst run against one server."""
    load = smoke["results"]["load"]
    assert set(load["runs"]) <= {"1", "2"} and "1" in load["runs"] and load["range"] == [1, run.SMOKE.load_max]
    assert 0 <= load["max_realtime_sessions"] <= 2
    for n, r in [*load["runs"].items(), ("burst", load["burst"])]:
        sessions = r["sessions"] if n == "burst" else int(n)
        # a session refused by the (live) server, e.g. when it is full, makes the run not real time
        assert r["sessions"] == sessions and r["chunks"] > 0 and not (r["errors"] and r["realtime"])
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"] < math.inf
        assert len(r["rtf"]) == sessions - len(r["errors"]) and all(0 < x < math.inf for x in r["rtf"])
    assert load["burst"]["server_ms_per_request"] > 0 and load["burst"]["loadgen_ms_per_request"] > 0


def test_batching(smoke):
    result = smoke["results"]["batching"]
    n_spk = PUBLIC_CHECKPOINT_DIMS.n_spk
    assert [(r["speakers"], r["sessions"], r["rows"]) for r in result["rows"]] == [
        (k, s, k * s) for s in run.SMOKE.batching_sessions for k in range(1, n_spk + 1)]
    for r in result["rows"]:
        assert r["batched_ms"] > 0 and r["single_calls_ms"] > 0 and r["speedup"] > 0
    assert "| speakers |" in batching.table(result)


def test_int8_side_by_side(smoke):
    result = smoke["results"]["int8_tiny"]
    assert set(result["steps"]) == {"diarizer", "encoder"}
    for role, step in result["steps"].items():
        assert step["graphs"]["int8"] == step["graphs"]["fp32"] + "_int8", role
        assert step["fp32_ms"] > 0 and step["int8_ms"] > 0 and step["speedup"] > 0
        assert 0.0 < step["max_abs"] < 1.0, role  # the int8 graph ran: close to fp32, not equal
        assert step["gop"] > 0 and 0 < step["int8_peak_fraction"] and step["ops"]["int8"]
    assert "| diarizer (full cache + FIFO) |" in int8.table(result) and int8.line(result).startswith("int8: ")


def test_memory(smoke, tiny_graphs):
    rss = smoke["results"]["memory"]["rss_bytes"]
    assert rss["baseline"] > 0 and len(rss["open"]) == len(run.SMOKE.memory_sessions)
    assert all(v > 0 for v in rss["open"].values()) and rss["after_end"] > 0
    report_ = memory.spec_report(tiny_graphs)
    d = PUBLIC_CHECKPOINT_DIMS
    channel = d.enc_layers * d.enc_last_channel * d.enc_d_model * 4  # cache_last_channel, float32
    time_ = d.enc_layers * d.enc_d_model * d.enc_last_time * 4
    assert report_["full"]["encoder_caches_per_speaker"] == channel + time_ + 8
    assert report_["full"]["encoder_caches"] == 4 * (channel + time_ + 8)
    for sizes in report_.values():
        assert sizes["total"] == sum(v for k, v in sizes.items() if k not in ("total", "encoder_caches_per_speaker"))
        assert all(isinstance(v, int) and v > 0 for v in sizes.values())
    assert report_["graphs"]["total"] < report_["full"]["total"]
    assert memory.tree_rss(os.getpid()) > 0


def test_flop_count_of_known_graphs(tmp_path):
    """The roofline's FLOP counter gives 2*M*N*K for a MatMul and 2*out*Cin/g*k for a grouped Conv."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((8, 2, 3), np.float32), "w")  # Conv1d: 8 out, 4 in, groups 2, k 3
    nodes = [helper.make_node("MatMul", ["a", "b"], ["c"]), helper.make_node("Conv", ["x", "w"], ["y"], group=2)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [5, 6]),
                                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [6, 7]),
                                           helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 10])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    feeds = {"a": np.ones((5, 6), np.float32), "b": np.ones((6, 7), np.float32), "x": np.ones((1, 4, 10), np.float32)}
    counted = roofline.profile_flops(path, feeds)
    assert counted["by_op_flops"] == {"MatMul": 2 * 5 * 6 * 7, "Conv": 2 * 8 * 8 * 2 * 3}
    assert counted["gflops"] == (2 * 5 * 6 * 7 + 2 * 8 * 8 * 2 * 3) / 1e9


def test_roofline(smoke):
    """Counted FLOPs equal the analytic count of the Sortformer step; the peak is the best of the square GEMM and
    the steps' own GEMM nodes; fractions follow from the rounded figures (timings are not judged)."""
    r = smoke["results"]["roofline_tiny"]
    assert r["steps"]["diarizer"]["analytic_gflops"] == r["steps"]["diarizer"]["gflops"] == 0.426
    peak = r["peak"]["peak_gflops"]
    assert peak == max(r["peak"]["onnxruntime_gflops"], *(s["best_node_gflops"] for s in r["steps"].values()))
    for step in r["steps"].values():
        assert step["gflops"] > 0 and step["ms"] > 0 and set(step["by_op_gflops"]) <= {"MatMul", "Conv", "Gemm"}
        assert step["distinct_nodes"] > 0 and step["gemm_floor_ms"] > 0
        # GFLOP/s comes from the unrounded count and time: the rounded ones (3 and 2 decimals) give it within 1 %
        assert step["gflops_per_s"] == pytest.approx(step["gflops"] / step["ms"] * 1000, rel=0.01, abs=0.1)
        assert step["peak_fraction"] == round(step["gflops_per_s"] / peak, 3)
    assert "| diarizer (1 row) | 0.426 | 0.426 |" in roofline.table(r)
    d = smoke["results"]["diarization_tiny"]
    assert d["gflops_per_session_step"] == 0.4242 and 0 < d["best_fraction_of_roofline"]


def test_overhead(smoke):
    r = smoke["results"]["overhead"]
    assert r["requests"] == r["sessions"] * -(-int(run.SMOKE.load_seconds * 16000) // 2560)
    # the decoder's products run in the array module (mtasr.rnnt), not through the decoder_joint graph
    assert set(r["graph_calls"]) == {"diarizer", "encoder_70_13"} and r["model_steps"] >= 1
    assert 0 < r["graph_s"] < r["wall_s"] and r["overhead_ms_per_request"] > 0


def test_perf_input_data_is_the_chunk_schedule(tiny_graphs):
    """perf_analyzer input: whole 1.12 s steps of the spec's `audio` tensor, base64 of float32 samples."""
    import base64

    step = perf.step_samples(tiny_graphs, "70_13")
    assert step == 112 * 160
    data = perf.input_data(step, seconds=3.0, streams=2)["data"]
    assert len(data) == 2 and all(len(stream) == 2 for stream in data)
    for stream in data:
        for request in stream:
            assert set(request) == {"audio"} and request["audio"]["shape"] == [step]
            assert np.frombuffer(base64.b64decode(request["audio"]["b64"]), np.float32).shape == (step,)


@pytest.mark.skipif(not os.environ.get("CI") and not Path(".triton/bin/perf_analyzer").exists(),
                    reason="no perf_analyzer: make serve-setup")
def test_perf_analyzer(smoke):
    r = smoke["results"]["perf_analyzer"]
    lo, hi, _ = map(int, run.SMOKE.perf_concurrency.split(":"))
    assert [row["concurrency"] for row in r["rows"]] == list(range(lo, hi + 1))
    assert (smoke["out"] / "perf_analyzer.csv").is_file()
    for row in r["rows"]:
        assert row["inferences_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["audio_x_realtime"] == pytest.approx(row["inferences_per_s"] * 1.12, abs=0.02)

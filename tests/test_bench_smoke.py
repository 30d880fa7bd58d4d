"""Smoke test of the measurement scripts with tiny settings: they run and give well-formed numbers (no speed
is asserted)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from bench import batching, memory
from client import loadgen
from client.server import TritonServer
from model_repository.build import build
from mtasr.spec import PUBLIC_CHECKPOINT_DIMS


@pytest.fixture(scope="module")
def graphs(tiny_parity):
    folder = tiny_parity["work"] / "graphs"
    assert (folder / "manifest.json").is_file(), tiny_parity["proc"].stderr[-2000:]
    return folder


def test_loadgen(graphs, tmp_path):
    repo = build(graphs, "cpu", tmp_path / "repo")
    audios = loadgen.make_audios(3.0, 160.0, variants=2)
    with TritonServer(repo, log_path=tmp_path / "server.log") as server:
        result = loadgen.search(server.grpc_url, 1, 2, audios, progress=False)
        rss = memory.tree_rss(server.pid)
    assert set(result["runs"]) <= {"1", "2"} and "1" in result["runs"]
    assert 0 <= result["max_realtime_sessions"] <= 2
    for n, run in result["runs"].items():
        assert run["sessions"] == int(n) and not run["errors"] and run["chunks"] > 0
        assert 0 < run["p50_ms"] <= run["p95_ms"] <= run["p99_ms"] <= run["max_ms"] < math.inf
        assert len(run["rtf"]) == int(n) and all(0 < r < math.inf for r in run["rtf"])
    assert rss > 0


def test_batching(graphs):
    result = batching.run(graphs, speakers=(1, 2), sessions=(1,), repeats=2)
    assert [(r["speakers"], r["rows"]) for r in result["rows"]] == [(1, 1), (2, 2)]
    for r in result["rows"]:
        assert r["batched_ms"] > 0 and r["single_calls_ms"] > 0 and r["speedup"] > 0
    assert "| speakers |" in batching.table(result)


def test_int8_side_by_side(graphs):
    from bench import int8

    result = int8.run(graphs, rows=2, repeats=2)
    assert set(result["steps"]) == {"diarizer", "encoder"}
    for role, step in result["steps"].items():
        assert step["graphs"]["int8"] == step["graphs"]["fp32"] + "_int8", role
        assert step["fp32_ms"] > 0 and step["int8_ms"] > 0 and step["speedup"] > 0
        assert 0.0 < step["max_abs"] < 1.0, role  # the int8 graph ran: close to fp32, not equal
    assert "| diarizer (full cache + FIFO) |" in int8.table(result) and int8.line(result).startswith("int8: ")


def test_memory_spec(graphs):
    report = memory.spec_report(graphs)
    d = PUBLIC_CHECKPOINT_DIMS
    channel = d.enc_layers * d.enc_last_channel * d.enc_d_model * 4  # cache_last_channel, float32
    time_ = d.enc_layers * d.enc_d_model * d.enc_last_time * 4
    assert report["full"]["encoder_caches_per_speaker"] == channel + time_ + 8
    assert report["full"]["encoder_caches"] == 4 * (channel + time_ + 8)
    for sizes in report.values():
        assert sizes["total"] == sum(v for k, v in sizes.items() if k not in ("total", "encoder_caches_per_speaker"))
        assert all(isinstance(v, int) and v > 0 for v in sizes.values())
    assert report["graphs"]["total"] < report["full"]["total"]
    assert memory.tree_rss(os.getpid()) > 0


def test_flop_count_of_known_graphs(tmp_path):
    """The roofline's FLOP counter gives 2*M*N*K for a MatMul and 2*out*Cin/g*k for a grouped Conv."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from bench import roofline

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


def test_roofline(graphs):
    from bench import roofline

    r = roofline.run(graphs, repeats=1, peak=roofline.matmul_peak(n=256, repeats=2))
    assert r["peak"]["peak_gflops"] == max(r["peak"]["onnxruntime_gflops"], r["peak"]["numpy_gflops"]) > 0
    for step in r["steps"].values():
        assert step["gflops"] > 0 and step["ms"] > 0 and set(step["by_op_gflops"]) <= {"MatMul", "Conv", "Gemm"}
        # the report rounds gflops (3 decimals) and ms (2) after computing the fraction: bound it from them
        g, ms, peak = step["gflops"], step["ms"], r["peak"]["peak_gflops"]
        low = (g - 5e-4) / ((ms + 5e-3) / 1000) / peak
        high = (g + 5e-4) / ((ms - 5e-3) / 1000) / peak
        assert round(low, 3) <= step["peak_fraction"] <= round(high, 3)


def test_overhead(graphs):
    from bench import overhead

    r = overhead.run(graphs, sessions=2, seconds=2.0)
    assert r["requests"] == 2 * -(-int(2.0 * 16000) // 2560)
    assert set(r["graph_calls"]) == {"diarizer", "encoder_70_13", "decoder_joint"} and r["model_steps"] >= 1
    assert 0 < r["graph_s"] < r["wall_s"] and r["overhead_ms_per_request"] > 0


def test_perf_input_data_is_the_chunk_schedule(graphs):
    """perf_analyzer input: whole 1.12 s steps of the spec's `audio` tensor, base64 of float32 samples."""
    import base64

    import numpy as np

    from bench import perf

    step = perf.step_samples(graphs, "70_13")
    assert step == 112 * 160
    data = perf.input_data(step, seconds=3.0, streams=2)["data"]
    assert len(data) == 2 and all(len(stream) == 2 for stream in data)
    for stream in data:
        for request in stream:
            assert set(request) == {"audio"} and request["audio"]["shape"] == [step]
            assert np.frombuffer(base64.b64decode(request["audio"]["b64"]), np.float32).shape == (step,)


@pytest.mark.skipif(not os.environ.get("CI") and not Path(".triton/bin/perf_analyzer").exists(),
                    reason="no perf_analyzer: make serve-setup")
def test_perf_analyzer(graphs, tmp_path):
    from bench import perf

    r = perf.run(graphs, "1:2:1", seconds=3.0, csv_path=tmp_path / "p.csv", interval_ms=1500)
    assert [row["concurrency"] for row in r["rows"]] == [1, 2] and (tmp_path / "p.csv").is_file()
    for row in r["rows"]:
        assert row["inferences_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["audio_x_realtime"] == pytest.approx(row["inferences_per_s"] * 1.12, abs=0.02)


def test_bench_run_smoke(graphs, tmp_path):
    """`make bench` at CI sizes: every part runs, native/served/in-process agree, the last line is well formed."""
    import re

    from bench import run

    results = run.run_all(graphs, None, run.SMOKE, tmp_path)
    assert results["native_vs_served_tiny"]["outputs_agree"] is True
    assert json.loads((tmp_path / "results.json").read_text())["summary"] == results["summary"]
    paths = run.plots(results, tmp_path)
    assert all(p.stat().st_size > 1000 for p in paths)
    md = run.markdown(results, paths)
    assert "Smoke run" in md and "## Roofline (tiny)" in md and "## Diarization service (tiny)" in md
    assert "## int8 vs fp32 graphs (tiny" in md and results["int8_tiny"]["steps"]["encoder"]["int8_ms"] > 0
    assert "int8 GEMM 2048³ peak" in md and "Burst:" in md  # the int8 roofline rows; the load's burst run
    tiny = results["native_vs_served_tiny"]
    assert tiny["int8_speedup"] > 0 and 0 <= tiny["int8_word_agreement"] <= 1
    assert results["load"]["burst"]["server_ms_per_request"] > 0
    line = run.final_line(results["summary"])
    assert re.fullmatch(r"bench: served_vs_native=\S+ full_rtf=na full_rtf_int8=na int8_speedup=[0-9.]+ "
                        r"realtime_sessions_tiny=\d+ p99_ms=\S+ peak_fraction=[0-9.]+ diarize_sessions_tiny=\d+ "
                        r"diarize_sessions_full=na", line), line
    assert results["diarization_tiny"]["by_sessions"][2]["step_ms"] > 0

"""Smoke test of the measurement scripts with tiny settings: they run and give well-formed numbers (no speed
is asserted)."""

from __future__ import annotations

import math
import os

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


def test_native_vs_served(graphs):
    """The side-by-side run: NeMo native, served through Triton and in process give the same SegLST."""
    from bench import native_vs_served

    r = native_vs_served.run(graphs, seconds=4.0, preset="70_13", mode="kernel")
    assert r["outputs_agree"] is True
    assert min(r["native_seconds"], r["served_seconds"], r["in_process_seconds"]) > 0
    assert r["served_vs_native"] > 0 and r["audio_seconds"] == 4.0

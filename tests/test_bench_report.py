"""BENCHMARKS.md and the docs' figures are rendered from the committed results files alone (drift test); a
results file with a NaN, a failed load run or a step above its peak is refused; a failing part fails `make bench`.
"""

from __future__ import annotations

import copy
import json
import re
import types

import numpy as np
import pytest

from bench import report, roofline, run

RESULTS = json.loads(report.RESULTS.read_text())


def test_benchmarks_md_and_docs_blocks_are_generated():
    assert report.render(RESULTS) == report.BENCHMARKS.read_text(), "run: python -m bench.report"
    assert all(block.present(block.doc.read_text()) for block in report.DOC_BLOCKS)
    assert report.stale_doc_blocks() == [], "run: python -m bench.report"


def test_a_stale_or_moved_docs_block_is_named(tmp_path, monkeypatch):
    doc = tmp_path / "page.md"
    block = report.DocBlock("reply-size", doc, report.REPLY_SIZE, report.reply_size_block)
    monkeypatch.setattr(report, "DOC_BLOCKS", (block,))
    doc.write_text("no markers here\n")
    [stale] = report.stale_doc_blocks()
    assert stale.endswith("/page.md (reply-size)")
    with pytest.raises(ValueError, match="markers not found"):
        report.write_doc_blocks(RESULTS)
    doc.write_text(f"before\n{block.begin}\nold text\n{block.end}\nafter\n")
    assert report.stale_doc_blocks() == [stale]
    report.write_doc_blocks(RESULTS)
    assert report.stale_doc_blocks() == [] and doc.read_text().startswith("before\n") and "old text" not in \
        doc.read_text()


def test_committed_results_are_valid_and_records_are_linked_not_pasted():
    assert report.problems(RESULTS) == []
    md = report.BENCHMARKS.read_text()
    assert not re.search(r"\bnan\b", md, re.IGNORECASE)
    assert f"]({report.RECORDS})" in md
    records = (report.ROOT / report.RECORDS).read_text()
    headings = [ln for ln in records.splitlines() if ln.startswith("## ")]
    assert headings and not any(h in md for h in headings)


def _load_run(**over) -> dict:
    base = {"sessions": 1, "chunk_ms": 160.0, "chunks": 10, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0,
            "max_ms": 4.0, "rtf": [1.0], "rtf_max": 1.0, "errors": [], "realtime": True}
    return {**base, **over}


@pytest.mark.parametrize("spoil, expect", [
    (lambda r: r["load"]["runs"].update({"2": _load_run(sessions=2, chunks=0, p50_ms=float("nan"),
                                                        errors=["UNAVAILABLE: connection refused"])}),
     ["not a finite number: load.runs.2.p50_ms", "load, 2 sessions: no reply was timed (UNAVAILABLE"]),
    (lambda r: r["load"].update({"burst": _load_run(chunks=0, errors=["reset"])}), ["load, burst: no reply"]),
    (lambda r: r["roofline_tiny"].update({"peak": {"peak_gflops": 10.0}}), ["roofline_tiny: diarizer ran at"]),
    (lambda r: r["diarization_full_int8"].update({"best_fraction_of_roofline": 1.17}), ["diarization_full_int8"]),
])
def test_void_figures_are_refused(spoil, expect):
    r = copy.deepcopy(RESULTS)
    spoil(r)
    found = report.problems(r)
    for want in expect:
        assert any(p.startswith(want) for p in found), (want, found)
    with pytest.raises(report.InvalidResults):
        report.render(r)


def test_a_failing_part_or_a_dead_server_fails_the_run(tmp_path):
    results = {"_out": tmp_path}
    with pytest.raises(run.BenchError, match="part load failed"):
        run._part(results, "load", lambda: {"runs": {"1": _load_run(chunks=0, errors=["refused"])}, "budget_ms": 1})
    # sessions refused by a live, full server are a finding, not a failed run
    run._part(results, "load", lambda: {"runs": {"2": _load_run(sessions=2, errors=["server at capacity"])}})
    assert not (tmp_path / "results.json").exists()
    run._part(results, "overhead", lambda: {"x": 1.0})
    assert json.loads((tmp_path / run.PARTIAL).read_text())["overhead"] == {"x": 1.0}

    dead = types.SimpleNamespace(proc=types.SimpleNamespace(poll=lambda: -11), ready=lambda: False,
                                 log_tail=lambda n: "Segmentation fault")
    with pytest.raises(run.BenchError, match=r"died during the 96-session load run \(exit code -11\)"):
        run.alive(dead, "the 96-session load run")


def test_a_weight_behind_a_transpose_counts_as_constant(tmp_path):
    """The roofline times each GEMM node alone with its constant inputs as initializers (pre-packed, as ONNX
    Runtime folds them in the served graph), so a weight reached through a Transpose must count as constant."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((7, 6), np.float32), "w")
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]), helper.make_node("MatMul", ["a", "wt"], ["c"]),
             helper.make_node("MatMul", ["c", "b"], ["d"], name="second")]  # the others unnamed
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [5, 6]),
                                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [7, 3])],
                              [helper.make_tensor_value_info("d", TensorProto.FLOAT, None)], initializer=[w])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    feeds = {"a": np.ones((5, 6), np.float32), "b": np.ones((7, 3), np.float32)}
    nodes = roofline.gemm_nodes(path, feeds)
    assert [(n.flops, [c for _, c in n.inputs]) for n in nodes] == [(2 * 5 * 6 * 7, [False, True]),
                                                                    (2 * 5 * 7 * 3, [False, False])]
    gemms = roofline.step_gemms(path, feeds, repeats=2)
    assert gemms["gflops"] == (2 * 5 * 6 * 7 + 2 * 5 * 7 * 3) / 1e9 and gemms["distinct_nodes"] == 2
    assert gemms["gemm_floor_ms"] > 0 and gemms["best_node_gflops"] > 0


def test_analytic_sortformer_count_scales_as_the_architecture():
    """The analytic count grows with the attention span as T² (scores) plus T (projections)."""
    arch = roofline.SortformerArch.random_init("tiny")
    f = [roofline.sortformer_step_flops(arch, 121, n, n, 2) for n in (0, 94, 188)]
    assert 0 < f[0] < f[1] < f[2]
    assert f[2] - f[1] > f[1] - f[0]  # quadratic in the cached frames

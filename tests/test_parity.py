"""The tiny parity run: every stage equal to NeMo within 1e-4 and every token equal, chained >= 20 steps; int8 graphs
measured against fp32, never failing the run."""

from __future__ import annotations

import json

from conftest import PARITY_LINE

from export.parity.figures import Figures

TOL = 1e-4


def test_parity_line_and_exit_code(tiny_parity):
    proc = tiny_parity["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = PARITY_LINE.match(tiny_parity["last"])
    assert m, f"last line is not the parity line: {tiny_parity['last']!r}"
    for stage in ("diarizer", "encoder", "decoder_joint", "features", "cache_update"):
        assert float(m[stage]) <= TOL, f"{stage} = {m[stage]}"
    assert int(m["same"]) == int(m["total"]) > 0
    assert int(m["speakers8_same"]) == int(m["speakers8_total"]) > 0  # the 8-output diarizer's flow, every token
    assert int(m["diarize_same"]) == int(m["diarize_total"]) > 0  # the diarization service's turns, every one
    assert int(m["int8_total"]) > 0 and int(m["int8_same"]) <= int(m["int8_total"])  # reported, not required equal


def test_parity_covers_what_it_claims(tiny_parity):
    """Not vacuous: compression happened, >= 20 chained steps per chain, tokens in every chain, round trip exact."""
    details = json.loads((tiny_parity["work"] / "parity.json").read_text())
    assert details["nemo_roundtrip_max_abs"] == 0.0
    assert details["diarizer_multitalker_flow_spkcache_full_steps"] > 0
    assert details["diarizer_multitalker_flow_steps"] >= 20
    assert details["diarizer_standalone_steps"] >= 20
    for preset in ("70_0", "70_13"):
        for mode in ("kernel", "masked"):
            check = f"encoder_{preset}_{mode}"
            assert details[f"{check}_steps"] >= 20
            same, total = map(int, details[f"{check}_tokens"].split("/"))
            assert same == total > 0, check
    # 8 speakers: the export recorded the count, >= 5 were active and transcribed, the diarizer matched
    manifest8 = json.loads((tiny_parity["work"] / "speakers8" / "graphs" / "manifest.json").read_text())
    assert manifest8["dims"]["n_spk"] == manifest8["diarizer"]["spkcache"]["n_spk"] == 8
    assert details["speakers8_active"] >= 5 and len(details["speakers8_transcribed"]) >= 5
    assert details["speakers8_diarizer"] <= TOL
    fp16 = details["fp16"]  # fp16 vs fp32 graphs, measured on ONNX Runtime CPU
    assert set(fp16) == {"diarizer", "diarizer_standalone", "encoder_70_0", "encoder_70_13"}
    assert all(isinstance(v, float) and v < 1.0 for v in fp16.values()), fp16
    # int8 vs fp32: every int8 twin measured, the pipeline chained >= 20 steps on both
    assert set(details["int8_graph_max_abs"]) == {"diarizer", "diarizer_standalone", "encoder_70_0", "encoder_70_13"}
    assert all(0.0 < v < 1.0 for v in details["int8_graph_max_abs"].values()), details["int8_graph_max_abs"]
    assert details["int8_steps"] >= 20 and "int8_steps_int8" not in details
    m = PARITY_LINE.match(tiny_parity["last"])
    assert details["int8_tokens"] == f"{m['int8_same']}/{m['int8_total']}"


def test_int8_differences_do_not_fail_parity():
    fig = Figures(tokens_same=3, tokens_total=3, diarize_same=2, diarize_total=2, int8=(1, 3))
    assert fig.ok() and PARITY_LINE.match(fig.line())["int8_same"] == "1"
    assert PARITY_LINE.match(Figures(tokens_same=3, tokens_total=3).line())["int8_total"] is None
    assert not Figures(tokens_same=3, tokens_total=3, diarize_same=1, diarize_total=2).ok()  # a turn differs

"""The shipped demo models: graph parity with NeMo on real (espeak) speech, and an eval smoke through Triton.

`make eval` on a few held-out sessions: the served stack (tritonserver, ONNX Runtime, mtasr-client) and NeMo's
reference flow must produce the same transcripts and scores, and the models must recognise words.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import PARITY_LINE, ROOT, assert_same_seglst, run_cli

DIAR, ASR = ROOT / "demo_models" / "diar_demo.nemo", ROOT / "demo_models" / "asr_demo.nemo"
pytestmark = [pytest.mark.skipif(not (DIAR.is_file() and ASR.is_file()), reason="demo models are not shipped"),
              pytest.mark.export, pytest.mark.server]  # exports the trained models; the eval serves them
EVAL_LINE = re.compile(r"^eval: cpwer=(?P<cpwer>\S+) cpwer_overlap=(?P<cpwer_overlap>\S+) tcpwer=(?P<tcpwer>\S+) "
                       r"der=(?P<der>\S+) sessions=(?P<sessions>\d+) pipeline=(?P<pipeline>\S+)$")
SAMPLE = ROOT / "tests" / "data" / "long_three_speakers.flac"


def test_parity_on_trained_models(tmp_path):
    proc = run_cli("export.parity", "--nemo", str(DIAR), str(ASR), "--audio", str(SAMPLE), "--work", str(tmp_path))
    last = [ln for ln in proc.stdout.splitlines() if ln.strip()][-1]
    print(last)
    m = PARITY_LINE.match(last)
    assert m, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, last
    assert int(m["same"]) == int(m["total"]) > 20  # trained: the ASR emits words, every token equal to NeMo's


def test_eval_smoke_served_equals_reference(tmp_path):
    proc = run_cli("demo_models.evaluate", "--sessions", "4", "--max-seconds", "12", "--data",
                   str(tmp_path / "heldout"), "--out", str(tmp_path / "eval"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = {m["pipeline"]: m for m in map(EVAL_LINE.match, proc.stdout.splitlines()) if m}
    print("\n".join(m.group(0) for m in lines.values()))
    served, reference = lines["served"], lines["nemo-reference"]
    for key in ("cpwer", "cpwer_overlap", "tcpwer", "der", "sessions"):
        assert served[key] == reference[key], key
    assert float(served["cpwer"]) < 60.0  # words are recognised (random weights score ~100)
    sessions = [json.loads(x) for x in (tmp_path / "heldout" / "sessions.jsonl").read_text().splitlines()]
    for s in sessions:
        got = json.loads((tmp_path / "eval" / "served" / f"{s['session_id']}.seglst.json").read_text())
        want = json.loads((tmp_path / "eval" / "nemo" / f"{s['session_id']}.seglst.json").read_text())
        for g in got:
            g["session_id"] = s["session_id"]
        assert_same_seglst(got, want)
        duration = s["duration"]
        assert all(w[1] <= duration + 0.1 for g in got for w in g["word_times"])  # nothing after the audio's end

"""Shared fixtures: one tiny parity run (models, .nemo files, graphs) reused by the export tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

ROOT = Path(__file__).resolve().parents[1]
PARITY_LINE = re.compile(
    r"^parity: diarizer=(?P<diarizer>\S+) encoder=(?P<encoder>\S+) decoder_joint=(?P<decoder_joint>\S+) "
    r"features=(?P<features>\S+) cache_update=(?P<cache_update>\S+) tokens=(?P<same>\d+)/(?P<total>\d+) "
    r"speakers8=(?P<speakers8_same>\d+)/(?P<speakers8_total>\d+) diarize=(?P<diarize_same>\d+)/(?P<diarize_total>\d+)"
    r"(?: int8_tokens=(?P<int8_same>\d+)/(?P<int8_total>\d+))?$"  # with --int8: the int8 pipeline vs fp32
)


def run_cli(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    """Run `python -m <args>` from the repository root, capturing output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def tiny_parity(tmp_path_factory) -> dict:
    """`python -m export.parity --size tiny --fp16 --int8` once per session: its exit code, last line and work
    folder (graphs/ holds the fp16 and int8 copies)."""
    work = tmp_path_factory.mktemp("parity_tiny")
    proc = run_cli("export.parity", "--size", "tiny", "--fp16", "--int8", "--work", str(work))
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return {"proc": proc, "last": lines[-1] if lines else "", "work": work}


def parse_pbtxt(text: str) -> mc.ModelConfig:
    """A `config.pbtxt` parsed back into Triton's ModelConfig."""
    return text_format.Parse(text, mc.ModelConfig())


TIME_TOL = 0.08  # seconds: one encoder frame


def assert_same_seglst(got: list[dict], want: list[dict]) -> None:
    """Same speakers and words in the same order; start/end times within one 80 ms frame."""
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want, strict=True):
        assert (g["speaker"], g["words"], g["session_id"]) == (w["speaker"], w["words"], w["session_id"])
        assert abs(g["start_time"] - w["start_time"]) <= TIME_TOL and abs(g["end_time"] - w["end_time"]) <= TIME_TOL

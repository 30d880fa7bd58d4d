"""The demo-model data generator: deterministic from its seed, fixed text/voice split, exact references."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("lhotse")
if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is not installed", allow_module_level=True)

from demo_models.data import HELDOUT_VOICES, MAX_OVERLAP, text_is_heldout, write_split  # noqa: E402


def _segs(folder: Path) -> list[dict]:
    return [g for p in sorted((folder / "seglst").glob("*.json")) for g in json.loads(p.read_text())]


def test_deterministic_and_split(tmp_path: Path) -> None:
    a = write_split(tmp_path / "a", 4, "train", seed=3, max_seconds=6.0, workers=1)
    b = write_split(tmp_path / "b", 4, "train", seed=3, max_seconds=6.0, workers=2)
    assert [s["duration"] for s in a] == [s["duration"] for s in b]
    for x, y in zip(sorted((tmp_path / "a" / "wav").iterdir()), sorted((tmp_path / "b" / "wav").iterdir()),
                    strict=True):
        assert x.read_bytes() == y.read_bytes()
    assert all(not text_is_heldout(g["words"]) for g in _segs(tmp_path / "a"))
    held = write_split(tmp_path / "h", 3, "heldout", seed=3, max_seconds=6.0, workers=1)
    assert all(text_is_heldout(g["words"]) for g in _segs(tmp_path / "h"))
    assert all(s["overlap_ratio"] <= MAX_OVERLAP for s in a + held)
    assert HELDOUT_VOICES


def test_references_agree(tmp_path: Path) -> None:
    (s,) = write_split(tmp_path, 1, "heldout", seed=5, max_seconds=8.0, workers=1)
    rttm = [line.split() for line in Path(s["rttm_filepath"]).read_text().splitlines()]
    segs = json.loads(Path(s["seglst_filepath"]).read_text())
    assert len(rttm) == len(segs)
    for r, g in zip(rttm, segs, strict=True):
        assert r[7] == g["speaker"] and abs(float(r[3]) - g["start_time"]) < 1e-3
        assert abs(float(r[3]) + float(r[4]) - g["end_time"]) < 2e-3
        assert g["end_time"] <= s["duration"]

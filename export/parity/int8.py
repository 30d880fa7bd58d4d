"""int8 graphs (`export --int8`) against their fp32 twins: what quantisation costs, measured, never a failure.

Two figures: the max abs of each int8 graph's outputs vs its fp32 twin on the same random inputs (ONNX Runtime
CPU), and the token agreement of the in-process pipeline (`mtasr.pipeline.Engine`, kernel mode, [70,13]) run on
the same audio once with the fp32 graphs and once with the int8 diarizer and encoder, every state chained
through >= 20 steps. The parity line reports the latter as `int8_tokens=<same>/<total>`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path

import numpy as np

from export.parity.figures import maxabs, random_feed, session
from export.parity.speakers import run_pipeline
from mtasr.manifest import Manifest


@dataclass
class Int8Check:
    """Tokens of the int8 pipeline that match the fp32 pipeline's, and the details for parity.json."""

    same: int = 0
    total: int = 0
    details: dict = field(default_factory=dict)


def int8_deviation(graphs: Path, manifest: Manifest) -> dict[str, float]:
    """Max abs over the outputs of each int8 graph vs its fp32 twin, on random inputs of the served shapes."""
    out = {}
    for name, twin in manifest.int8.items():
        feed = random_feed(manifest.graphs[name], manifest, name)
        ref = session(graphs / name / "model.onnx").run(None, feed)
        got = session(graphs / twin / "model.onnx").run(None, feed)
        out[name] = max(maxabs(a, b) for a, b in zip(got, ref, strict=True))
    return out


def token_agreement(ours: list[tuple[int, int]], theirs: list[tuple[int, int]]) -> tuple[int, int]:
    """(matching, total) (token, frame) pairs of two hypotheses: the longest common matching blocks, so that one
    inserted or dropped token costs one, not every token after it; total is the longer hypothesis."""
    matcher = SequenceMatcher(None, ours, theirs, autojunk=False)
    return sum(b.size for b in matcher.get_matching_blocks()), max(len(ours), len(theirs))


def check(graphs: Path, audio: np.ndarray) -> Int8Check:
    """Both figures on the exported folder `graphs` (which must hold int8 twins) and `audio` (16 kHz)."""
    t0 = time.perf_counter()
    manifest = Manifest.load(graphs)
    out = Int8Check()
    runs = {p: run_pipeline(graphs, audio, f"int8_{p}", precision=p) for p in ("fp32", "int8")}
    (fp32, fp32_activity), (int8, int8_activity) = runs["fp32"], runs["int8"]
    hyps = {p: {spk: list(zip(st.tokens, st.frame_indices, strict=True))
                for spk, st in s.speakers.items() if st.started} for p, (s, _) in runs.items()}
    for spk in sorted(set(hyps["fp32"]) | set(hyps["int8"])):
        same, total = token_agreement(hyps["int8"].get(spk, []), hyps["fp32"].get(spk, []))
        out.same, out.total = out.same + same, out.total + total
    words = {p: [(seg["speaker"], seg["words"]) for seg in s.segments.seglst()] for p, (s, _) in runs.items()}
    out.details = {
        "int8_graph_max_abs": int8_deviation(graphs, manifest),
        "int8_tokens": f"{out.same}/{out.total}",
        "int8_steps": int(fp32.steps),
        "int8_activity_max_abs": maxabs(int8_activity, fp32_activity),
        "int8_activity_decisions_differ": int(((int8_activity > 0.5) != (fp32_activity > 0.5)).sum()),
        "int8_speakers": {p: sorted(h) for p, h in hyps.items()},
        "int8_same_segments": words["int8"] == words["fp32"],
        "int8_seconds": round(time.perf_counter() - t0, 1),
    }
    if int8.steps != fp32.steps:
        out.details["int8_steps_int8"] = int(int8.steps)
    return out

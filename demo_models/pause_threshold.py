"""Measure where a speaker's word gaps separate turns: the evidence behind the utterance pause default.

    python -m demo_models.pause_threshold [--sessions 20] [--graphs artifacts/demo_trained]

Streams the held-out sessions (the `make eval` ones) through the in-process pipeline, takes each speaker's
audio-time words, and labels every gap between two consecutive words of one speaker: a turn boundary when the
words' midpoints fall in different reference turns. For each candidate threshold it prints how well
"gap >= threshold" predicts a boundary (precision, recall, F1).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import soundfile as sf

from demo_models.evaluate import EVAL_SEED
from mtasr.pipeline import Engine, OrtRunner, PipelineConfig
from mtasr.pipeline.words import session_frames, timed_words

CANDIDATES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0)


def speaker_words(engine: Engine, audio: np.ndarray) -> dict[int, list]:
    s = engine.new_stream("s", keep_hypotheses=True)
    engine.push_audio(s, audio, last=True)
    while s.pending:
        engine.step([s])
    cfg = engine.cfg
    out = {}
    for spk, st in s.speakers.items():
        if st.started:
            frames = session_frames(st.frame_indices, st.runs, cfg.nframes_per_chunk)
            out[spk] = timed_words(st.tokens, frames, cfg.vocabulary, cfg.frame_len_sec, s.audio_seconds)
    return out


def turn_of(t: float, turns: list[dict]) -> int:
    """Index of the reference turn covering time `t` (the nearest one when none does)."""
    dist = [0.0 if g["start_time"] <= t <= g["end_time"] else min(abs(t - g["start_time"]), abs(t - g["end_time"]))
            for g in turns]
    return int(np.argmin(dist))


def gaps(sessions: list[dict], engine: Engine) -> list[tuple[float, bool]]:
    """(gap seconds, is a turn boundary) for every pair of consecutive words of one hypothesis speaker."""
    out = []
    for s in sessions:
        audio, _ = sf.read(s["audio_filepath"], dtype="float32")
        turns = json.loads(Path(s["seglst_filepath"]).read_text())
        for words in speaker_words(engine, audio).values():
            for a, b in zip(words, words[1:], strict=False):
                boundary = turn_of((a.start + a.end) / 2, turns) != turn_of((b.start + b.end) / 2, turns)
                out.append((b.start - a.end, boundary))
    return out


def table(pairs: list[tuple[float, bool]]) -> list[dict]:
    rows = []
    for th in CANDIDATES:
        tp = sum(g >= th and b for g, b in pairs)
        fp = sum(g >= th and not b for g, b in pairs)
        fn = sum(g < th and b for g, b in pairs)
        p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
        rows.append({"pause_sec": th, "precision": round(p, 3), "recall": round(r, 3),
                     "f1": round(2 * p * r / max(p + r, 1e-9), 3)})
    return rows


def main(argv: list[str] | None = None) -> int:
    from demo_models.data import write_split

    ap = argparse.ArgumentParser(prog="python -m demo_models.pause_threshold", description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--data", type=Path, default=Path("artifacts/eval/heldout"))
    ap.add_argument("--graphs", type=Path, default=Path("artifacts/demo_trained"))
    args = ap.parse_args(argv)
    summary = args.data / "sessions.jsonl"
    if not summary.exists() or sum(1 for _ in summary.open()) != args.sessions:
        write_split(args.data, args.sessions, "heldout", EVAL_SEED, 20.0)
    sessions = [json.loads(line) for line in summary.read_text().splitlines()]
    cfg = PipelineConfig.from_folder(args.graphs, preset="70_13")
    engine = Engine.from_folder(args.graphs, OrtRunner(args.graphs), cfg)
    pairs = gaps(sessions, engine)
    rows = table(pairs)
    inside, across = [g for g, b in pairs if not b] or [0.0], [g for g, b in pairs if b] or [0.0]
    print(f"{len(pairs)} word gaps, {sum(b for _, b in pairs)} at turn boundaries; within turns: median "
          f"{np.median(inside):.2f} s, p90 {np.percentile(inside, 90):.2f} s; at boundaries: median "
          f"{np.median(across):.2f} s")
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

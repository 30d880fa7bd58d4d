"""Reply bytes per request over a long session, audio timing vs NeMo timing, on one server.

    python -m bench.reply_size --graphs artifacts/demo_trained [--minutes 10] [--out bench/reply_size.json]

The session is the committed samples played one after another (with 1 s of silence between) until `--minutes`;
each timing streams it once in 160 ms pieces. Prints, per timing, the JSON bytes of `segments` + `interim` +
`transcript` per reply: mean and max over the first and the last minute (the END reply, which carries the whole
SegLST in audio timing, apart), and the total. Writes them, with the machine and the command, to `--out`
(committed: bench/reply_size.json, which docs/serving.md's reply-size paragraph is rendered from by `bench.report`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from client.server import ROOT
from client.stream import stream_audio
from mtasr.audio import read_audio
from mtasr.spec import SAMPLE_RATE, TIMINGS

SAMPLES = ("two_speakers_overlap", "three_speakers", "long_three_speakers")


def long_session(minutes: float) -> np.ndarray:
    clips = [read_audio(ROOT / "tests" / "data" / f"{n}.flac") for n in SAMPLES]
    gap = np.zeros(SAMPLE_RATE, np.float32)
    out, n, i = [], 0, 0
    while n < minutes * 60 * SAMPLE_RATE:
        out += [clips[i % len(clips)], gap]
        n += len(clips[i % len(clips)]) + len(gap)
        i += 1
    return np.concatenate(out)[: int(minutes * 60 * SAMPLE_RATE)]


def profile(url: str, audio: np.ndarray, timing: str, chunk_ms: float = 160.0) -> dict:
    """Bytes per reply of one session: first / last minute (mean, max; the END reply apart) and total."""
    r = stream_audio(url, audio, session_id="long", chunk_ms=chunk_ms, timing=timing)
    per_min = int(60_000 / chunk_ms)
    steps, end = r.reply_bytes[:-1], r.reply_bytes[-1]
    first, last = steps[:per_min], steps[-per_min:]
    return {"replies": len(r.reply_bytes), "first_minute_mean": round(float(np.mean(first)), 1),
            "first_minute_max": int(max(first)), "last_minute_mean": round(float(np.mean(last)), 1),
            "last_minute_max": int(max(last)), "end_reply": int(end), "total_bytes": int(sum(r.reply_bytes)),
            "segments": len(r.seglst)}


def run(graphs: Path, minutes: float, chunk_ms: float = 160.0) -> dict:
    from bench.serving import served

    audio = long_session(minutes)
    with served(graphs, "70_13") as server:
        return {"minutes": minutes, "chunk_ms": chunk_ms,
                **{t: profile(server.grpc_url, audio, t, chunk_ms) for t in TIMINGS}}


def main(argv: list[str] | None = None) -> int:
    from bench.run import machine

    ap = argparse.ArgumentParser(prog="python -m bench.reply_size", description=__doc__.split("\n")[0])
    ap.add_argument("--graphs", type=Path, default=ROOT / "artifacts" / "demo_trained")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "reply_size.json",
                    help="results file (default: the committed bench/reply_size.json)")
    args = ap.parse_args(argv)
    graphs = args.graphs.resolve()
    where = graphs.relative_to(ROOT).as_posix() if graphs.is_relative_to(ROOT) else graphs.name
    result = {"machine": machine(), "graphs": where,
              "command": f"python -m bench.reply_size --graphs {where} --minutes {args.minutes:g}",
              **run(graphs, args.minutes)}
    text = json.dumps(result, indent=1, allow_nan=False)
    args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

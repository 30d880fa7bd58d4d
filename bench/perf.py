"""perf_analyzer against the `multitalker` model (or `--model diarization`) over gRPC, with real audio chunk
sequences as input data.

    python -m bench.perf --graphs DIR [--concurrency 1:8:1] [--seconds 10] [--out bench/perf.csv]
    python -m bench.perf --url 127.0.0.1:8001 ...      # a server that is already running

The input data is generated, not hand-written: the orchestrator's input tensor (name, dtype) comes from
`mtasr.spec.orchestrator_spec()`, and each sequence is synthetic conversation audio cut into requests of one model
step (the preset's `shift_frames` mel frames x hop length: 1.12 s at [70,13]), so every request after the first
runs the diarizer, the encoder and the decoder once. perf_analyzer drives Triton's sequence batcher itself
(START/END/CORRID); one request per sequence is in flight at a time (`--serial-sequences`), as for a live client.
The stability check is off (3 windows, any spread): on a shared 2-core machine it would never pass.
Requests are sent back to back, not paced: the sweep measures capacity (audio seconds served per second).
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from client.stream import new_session_key
from mtasr.spec import (
    ADMIN_KEY_HEADER,
    DIARIZATION,
    ORCHESTRATOR,
    SAMPLE_RATE,
    SESSION_KEY_HEADER,
    SUBSAMPLING,
    grpc_restricted_header,
    orchestrator_spec,
)

ROOT = Path(__file__).resolve().parents[1]
PERF_ANALYZER = Path(os.environ.get("MTASR_PERF_ANALYZER", ROOT / ".triton" / "bin" / "perf_analyzer"))


def step_samples(graphs: Path, preset: str = "70_13", model: str = ORCHESTRATOR) -> int:
    """Audio samples of one model step: of the multitalker `preset`, or of the diarization service's default
    setting (chunk_len x 80 ms)."""
    from mtasr.diarization import DEFAULT_PRESET, PRESETS
    from mtasr.features import FeatureParams
    from mtasr.manifest import Manifest
    from mtasr.pipeline import PipelineConfig

    features = Manifest.load(graphs).features
    if model == DIARIZATION:
        hop = FeatureParams.load(graphs / features.diarizer).hop_length
        return PRESETS[DEFAULT_PRESET].chunk_len * SUBSAMPLING * hop
    cfg = PipelineConfig.from_folder(graphs, preset=preset)
    return cfg.geometry.shift_frames * FeatureParams.load(graphs / features.asr).hop_length


def input_data(step: int, seconds: float, streams: int = 4, seed: int = 0) -> dict:
    """perf_analyzer `--input-data` JSON: `streams` sequences of whole-step audio requests (base64 raw tensors)."""
    from mtasr.audio import synth_conversation

    audio = orchestrator_spec().inputs[0]
    steps = max(1, int(seconds * SAMPLE_RATE) // step)
    data = []
    for i in range(streams):
        x = synth_conversation(steps * step / SAMPLE_RATE, n_speakers=2, seed=seed + i)[: steps * step]
        x = x.astype(np.dtype(audio.dtype))
        data.append([{audio.name: {"b64": base64.b64encode(x[k * step:(k + 1) * step].tobytes()).decode(),
                                   "shape": [step]}} for k in range(steps)])
    return {"data": data}


def sequence_id_range(span: int = 1_000_000) -> str:
    """A random `start:end` for perf_analyzer's sequence ids (it parses them as signed 32-bit): runs and other
    clients of the same server do not collide."""
    start = secrets.randbelow(2**31 - 1 - span) + 1
    return f"{start}:{start + span}"


def perf_headers(admin_key: str | None) -> list[str]:
    """perf_analyzer `-H` flags: a session key (one for the whole run; the orchestrator checks it per sequence)
    and, for the model config and statistics it reads, the server's admin key."""
    flags = ["-H", f"{SESSION_KEY_HEADER}:{new_session_key()}"]
    if admin_key:
        flags += ["-H", f"{grpc_restricted_header(ADMIN_KEY_HEADER)}:{admin_key}"]
    return flags


def run_perf_analyzer(url: str, data_file: Path, steps: int, concurrency: str, csv_path: Path,
                      interval_ms: int = 8000, binary: Path = PERF_ANALYZER,
                      admin_key: str | None = None, model: str = ORCHESTRATOR) -> list[dict]:
    """One perf_analyzer sweep; the CSV rows (one per concurrency) as dicts with numbers."""
    cmd = [str(binary), "-m", model, "-i", "grpc", "-u", url, "--input-data", str(data_file),
           "--sequence-length", str(steps), "--sequence-length-variation", "0", "--serial-sequences",
           "--sequence-id-range", sequence_id_range(), *perf_headers(admin_key), "--concurrency-range", concurrency,
           "--measurement-interval", str(interval_ms), "--stability-percentage", "1000", "--max-trials", "3",
           "--percentile", "99", "-f", str(csv_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    rows = sorted(csv.DictReader(io.StringIO(csv_path.read_text())), key=lambda r: int(r["Concurrency"]))
    return [{k: float(v) if k != "Concurrency" else int(v) for k, v in r.items() if v not in ("", None)} for r in rows]


def summarize(rows: list[dict], step_seconds: float) -> list[dict]:
    """Per concurrency: requests/s, audio seconds served per second, latency percentiles (ms)."""
    out = []
    for r in rows:
        ips = r["Inferences/Second"]
        out.append({"concurrency": r["Concurrency"], "inferences_per_s": round(ips, 2),
                    "audio_x_realtime": round(ips * step_seconds, 2),
                    **{f"{p}_ms": round(r[f"{p} latency"] / 1000, 1) for p in ("p50", "p90", "p95", "p99")}})
    return out


def run(graphs: Path, concurrency: str = "1:4:1", seconds: float = 10.0, csv_path: Path | None = None,
        url: str | None = None, preset: str = "70_13", interval_ms: int = 8000, model: str = ORCHESTRATOR) -> dict:
    """Build a repository from `graphs`, start tritonserver (unless `url`), sweep `model`, return the summary."""
    step = step_samples(graphs, preset, model)
    steps = max(1, int(seconds * SAMPLE_RATE) // step)
    with tempfile.TemporaryDirectory() as tmp:
        data_file = Path(tmp) / "input_data.json"
        data_file.write_text(json.dumps(input_data(step, seconds)))
        csv_path = csv_path or Path(tmp) / "perf.csv"
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        if url is None:
            from bench.serving import served

            with served(graphs, preset) as server:
                rows = run_perf_analyzer(server.grpc_url, data_file, steps, concurrency, csv_path, interval_ms,
                                         admin_key=server.admin_key, model=model)
        else:
            rows = run_perf_analyzer(url, data_file, steps, concurrency, csv_path, interval_ms,
                                     admin_key=os.environ.get("MTASR_ADMIN_KEY"), model=model)
    return {"step_seconds": step / SAMPLE_RATE, "sequence_length": steps, "csv": str(csv_path),
            "rows": summarize(rows, step / SAMPLE_RATE)}


def table(result: dict) -> str:
    lines = ["| concurrency | requests/s | audio × real time | p50 ms | p95 ms | p99 ms |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['concurrency']} | {r['inferences_per_s']} | {r['audio_x_realtime']} | {r['p50_ms']} | "
              f"{r['p95_ms']} | {r['p99_ms']} |" for r in result["rows"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__.split("\n")[0])
    ap.add_argument("--graphs", type=Path, required=True, help="exported graphs folder (with manifest.json)")
    ap.add_argument("--url", help="gRPC url of a running server (default: start one on free ports); its admin key "
                                  "(for the model config perf_analyzer reads) from env MTASR_ADMIN_KEY")
    ap.add_argument("--concurrency", default="1:4:1", help="perf_analyzer --concurrency-range start:end:step")
    ap.add_argument("--seconds", type=float, default=10.0, help="audio per sequence")
    ap.add_argument("--preset", default="70_13", help="latency preset (default: %(default)s, 1.12 s steps)")
    ap.add_argument("--model", choices=(ORCHESTRATOR, DIARIZATION), default=ORCHESTRATOR,
                    help="the multitalker model (default) or the diarization service (0.48 s steps)")
    ap.add_argument("--interval-ms", type=int, default=8000, help="perf_analyzer --measurement-interval")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "perf.csv", help="CSV written by perf_analyzer")
    args = ap.parse_args(argv)
    if not PERF_ANALYZER.is_file():
        print(f"no perf_analyzer at {PERF_ANALYZER}: run `make serve-setup`", file=sys.stderr)
        return 2
    result = run(args.graphs, args.concurrency, args.seconds, args.out, args.url, args.preset, args.interval_ms,
                 args.model)
    print(table(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

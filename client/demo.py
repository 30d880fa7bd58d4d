"""`make demo`: export models (tiny random-init, or real `.nemo` files from DIAR_NEMO / ASR_NEMO), build a CPU
model repository, start tritonserver, stream a committed multi-speaker sample in real time with the live
transcript, write SegLST / RTTM / PNG, stop the server."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from client.server import ROOT, TritonServer

SAMPLE = ROOT / "tests" / "data" / "two_speakers_overlap.flac"


def export_models(out: Path) -> Path:
    """Export once: real checkpoints when DIAR_NEMO and ASR_NEMO are set, else tiny random-init models."""
    if (out / "manifest.json").is_file():
        return out
    diar, asr = os.environ.get("DIAR_NEMO"), os.environ.get("ASR_NEMO")
    source = ["--nemo", diar, asr] if diar and asr else ["--random-init", "tiny"]
    subprocess.run([sys.executable, "-m", "export", *source, "--out", str(out), "--presets", "all"], check=True,
                   cwd=ROOT)
    return out


def main(argv: list[str] | None = None) -> int:
    from client import cli
    from model_repository.build import build

    ap = argparse.ArgumentParser(prog="mtasr-demo", description=__doc__.split("\n")[0])
    ap.add_argument("--audio", type=Path, nargs="+", default=[SAMPLE])
    ap.add_argument("--out", type=Path, default=ROOT / "artifacts" / "demo_out")
    ap.add_argument("--preset", default="70_13")
    ap.add_argument("--speaker-mode", choices=("kernel", "masked"), default="kernel")
    ap.add_argument("--no-realtime", action="store_true")
    args = ap.parse_args(argv)
    real = bool(os.environ.get("DIAR_NEMO") and os.environ.get("ASR_NEMO"))
    graphs = export_models(ROOT / "artifacts" / ("demo_real" if real else "demo"))
    repo = build(graphs, "cpu", ROOT / "artifacts" / "demo_repo", preset=args.preset,
                 speaker_mode=args.speaker_mode)
    if not real:
        print("NOTE: random-weight models: the words below are meaningless; set DIAR_NEMO and ASR_NEMO to serve "
              "real checkpoints.", flush=True)
    with TritonServer(repo, log_path=ROOT / "artifacts" / "demo_server.log") as server:
        print(f"tritonserver pid {server.pid} on {server.grpc_url}", flush=True)
        client_args = [*map(str, args.audio), "--out", str(args.out), "--url", server.grpc_url]
        status = cli.main(client_args + ([] if args.no_realtime else ["--realtime"]))
    print(f"outputs in {args.out}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())

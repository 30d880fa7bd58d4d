"""`make demo`: export models (`.nemo` files from DIAR_NEMO / ASR_NEMO, else the small trained demo models in
demo_models/, else tiny random-init ones), build a CPU model repository, start tritonserver, stream a committed
multi-speaker sample in real time with the live transcript, write SegLST / RTTM / PNG, stop the server."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from client.server import ROOT, TritonServer

SAMPLE = ROOT / "tests" / "data" / "two_speakers_overlap.flac"
DEMO_MODELS = (ROOT / "demo_models" / "diar_demo.nemo", ROOT / "demo_models" / "asr_demo.nemo")
DEMO_REPO = ROOT / "artifacts" / "demo_repo"  # `mtasr-reference`'s default reads its manifest


def graphs_folder() -> Path:
    """Where the demo exports: real checkpoints, the shipped demo models, or tiny random-init ones (the Makefile's
    `make serve` default mirrors this choice)."""
    if os.environ.get("DIAR_NEMO") and os.environ.get("ASR_NEMO"):
        return ROOT / "artifacts" / "demo_real"
    return ROOT / "artifacts" / ("demo_trained" if all(p.is_file() for p in DEMO_MODELS) else "demo")


def model_files() -> tuple[str, str] | None:
    """The `.nemo` pair to serve: DIAR_NEMO / ASR_NEMO when set, else the shipped demo models (if present)."""
    diar, asr = os.environ.get("DIAR_NEMO"), os.environ.get("ASR_NEMO")
    if diar and asr:
        return diar, asr
    if all(p.is_file() for p in DEMO_MODELS):
        return str(DEMO_MODELS[0]), str(DEMO_MODELS[1])
    return None


def export_models(out: Path) -> Path:
    """Export once: the `.nemo` files of `model_files()`, else tiny random-init models."""
    if (out / "manifest.json").is_file():
        return out
    files = model_files()
    source = ["--nemo", *files] if files else ["--random-init", "tiny"]
    # small models get their int8 twins too (seconds), so `make serve PRECISION=int8` works on the demo's graphs;
    # real checkpoints: `make export PRECISION=int8` (minutes and GBs for every encoder preset)
    int8 = [] if os.environ.get("DIAR_NEMO") and os.environ.get("ASR_NEMO") else ["--int8"]
    subprocess.run([sys.executable, "-m", "export", *source, "--out", str(out), "--presets", "all", *int8],
                   check=True, cwd=ROOT)
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
    files = model_files()
    real = files is not None
    graphs = export_models(graphs_folder())
    repo = build(graphs, "cpu", DEMO_REPO, preset=args.preset,
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

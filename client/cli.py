"""`mtasr-client AUDIO... --out DIR`: stream files to the multitalker model, show a live speaker-coloured
transcript, write `<stem>.seglst.json`, `<stem>.rttm` and `<stem>.png` (speaker activity).

Each file is its own session with a fresh random sequence id and session key. A session that fails part way
(server gone) writes what it had received as `<stem>.partial.seglst.json` / `.partial.rttm` and the command
exits non-zero with one line per failure."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from client.audio import AudioError, read_audio
from client.stream import (
    ClientError,
    Connection,
    StreamError,
    StreamResult,
    connect,
    rttm_lines,
    stream_audio,
    validate_stream_options,
)

COLORS = ["\033[91m", "\033[92m", "\033[94m", "\033[93m"]
RESET = "\033[0m"
_print_lock = threading.Lock()


def _show(session: str, segs: list[dict], color: bool, prefix: bool) -> None:
    with _print_lock:
        for s in segs:
            spk = int(s["speaker"].rsplit("_", 1)[-1]) if s["speaker"].rsplit("_", 1)[-1].isdigit() else 0
            head = f"[{session}] " if prefix else ""
            line = f"{head}{s['speaker']} {s['start_time']:7.2f}-{s['end_time']:7.2f}  {s['words']}"
            print(f"{COLORS[spk % 4]}{line}{RESET}" if color else line, flush=True)


def plot_activity(path: Path, activity: np.ndarray, title: str) -> None:
    """A PNG of the speaker activity like the tutorial's plot (speakers x 80 ms frames)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, activity.shape[0] / 40), 2.2))
    ax.imshow(activity.T, cmap="viridis", aspect="auto", interpolation="nearest", vmin=0, vmax=1)
    ax.set_yticks(range(activity.shape[1]), [f"spk{i}" for i in range(activity.shape[1])])
    ax.set_xlabel("80 ms frames")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_outputs(out: Path, stem: str, result: StreamResult, plot: bool = True) -> None:
    """`<stem>.seglst.json`, `.rttm`, `.png`; a partial result is written as `<stem>.partial.*` (no PNG)."""
    out.mkdir(parents=True, exist_ok=True)
    if result.partial:
        stem, plot = f"{stem}.partial", False
    (out / f"{stem}.seglst.json").write_text(json.dumps(result.seglst, indent=1))
    (out / f"{stem}.rttm").write_text("\n".join(rttm_lines(stem, result.activity)) + "\n")
    if plot and result.activity.size:
        plot_activity(out / f"{stem}.png", result.activity, f"{stem}: speaker activity")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mtasr-client", description=__doc__.split("\n")[0])
    ap.add_argument("audio", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--url", default="localhost:8001", help="Triton gRPC address")
    ap.add_argument("--chunk-ms", type=float, default=160.0, help="audio per request, in (0, 2000] ms")
    ap.add_argument("--realtime", action="store_true", help="pace the audio in real time")
    ap.add_argument("--concurrency", type=int, default=1, help="files streamed at once")
    ap.add_argument("--sequence-id", type=int,
                    help="Triton sequence id of the (single) session; default: a fresh random 63-bit id per file")
    ap.add_argument("--api-key", help="inference key of a server started with one (or env MTASR_API_KEY)")
    ap.add_argument("--tls-ca", type=Path, help="PEM root certificate to trust: connect with TLS")
    ap.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's roots")
    ap.add_argument("--quiet", action="store_true", help="no live transcript")
    ap.add_argument("--no-color", action="store_true")
    ap.add_argument("--no-plot", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    import os

    args = _parser().parse_args(argv)
    conn = Connection(args.url, api_key=args.api_key or os.environ.get("MTASR_API_KEY") or None, tls=args.tls,
                      tls_ca=args.tls_ca)
    try:
        validate_stream_options(args.chunk_ms, args.sequence_id)
        if args.sequence_id is not None and len(args.audio) > 1:
            raise ClientError("--sequence-id names one session: give one audio file (or let ids be random)")
        if args.concurrency < 1:
            raise ClientError(f"--concurrency must be >= 1, got {args.concurrency}")
        if args.tls_ca is not None and not args.tls_ca.is_file():
            raise ClientError(f"--tls-ca {args.tls_ca}: no such file")
        audios = [(p.stem, read_audio(p)) for p in args.audio]
        connect(conn).close()
    except (AudioError, ClientError) as exc:
        print(f"mtasr-client: error: {exc}", file=sys.stderr)
        return 2
    color = not args.no_color and sys.stdout.isatty()

    def run(i: int) -> StreamResult:
        stem, samples = audios[i]
        show = None if args.quiet else (lambda segs, _act: _show(stem, segs, color, len(audios) > 1))
        try:
            result = stream_audio(conn, samples, args.sequence_id, stem, args.chunk_ms, args.realtime,
                                  on_reply=show)
        except StreamError as exc:
            write_outputs(args.out, stem, exc.partial, plot=False)
            raise StreamError(f"{exc}; partial output in {args.out / (stem + '.partial.seglst.json')}",
                              exc.partial) from None
        write_outputs(args.out, stem, result, plot=not args.no_plot)
        return result

    status = 0
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        futures = [pool.submit(run, i) for i in range(len(audios))]
        for (stem, _), fut in zip(audios, futures, strict=True):
            try:
                r = fut.result()
                lat = np.percentile(r.latencies_ms, [50, 99]) if r.latencies_ms else [0, 0]
                print(f"{stem}: {len(r.seglst)} segments, {r.audio_seconds:.1f} s audio in {r.wall_seconds:.1f} s, "
                      f"latency p50 {lat[0]:.0f} ms p99 {lat[1]:.0f} ms -> {args.out / (stem + '.seglst.json')}")
            except ClientError as exc:
                print(f"mtasr-client: error: {exc}", file=sys.stderr)
                status = 1
            except Exception as exc:  # noqa: BLE001 - one line, never a traceback
                print(f"mtasr-client: error: {stem}: {type(exc).__name__}: {' '.join(str(exc).split())}",
                      file=sys.stderr)
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())

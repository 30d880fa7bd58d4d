"""`mtasr-client AUDIO... --out DIR`: stream files to the multitalker model, show a live speaker-coloured
transcript, write `<stem>.seglst.json`, `<stem>.rttm` and `<stem>.png` (speaker activity), and on request the
words with their times (`<stem>.words.json`, `<stem>.ctm`). `--task diarize` streams to the diarization service
instead: a live speaker timeline (each turn once final), NeMo's speaker turns as SegLST and RTTM, the PNG.

Live view: each utterance is printed in its speaker's colour once it is final; on a terminal the utterances still
being spoken show dim on the last line (timing "audio"; with `--timing nemo` every changed segment is printed).

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

from client.stream import (
    ClientError,
    Connection,
    StreamError,
    StreamResult,
    connect,
    rttm_lines,
    stream_audio,
    turn_rttm_lines,
    validate_stream_options,
)
from mtasr.audio import AudioError, audio_rate, read_audio
from mtasr.spec import DIARIZATION, ORCHESTRATOR, SAMPLE_RATE

TASKS = {"transcribe": ORCHESTRATOR, "diarize": DIARIZATION}  # task -> the model that serves it

# One colour per speaker, as many as an 8-output Sortformer has: (live view ANSI escape, PNG colour).
SPEAKER_COLORS: tuple[tuple[str, str], ...] = (
    ("\033[91m", "#e6194b"),  # red
    ("\033[92m", "#3cb44b"),  # green
    ("\033[94m", "#4363d8"),  # blue
    ("\033[93m", "#e6b400"),  # yellow
    ("\033[95m", "#f032e6"),  # magenta
    ("\033[96m", "#18b6d8"),  # cyan
    ("\033[38;5;208m", "#f58231"),  # orange (256-colour terminals)
    ("\033[38;5;99m", "#7b2fd0"),  # violet (256-colour terminals)
)
COLORS = [ansi for ansi, _ in SPEAKER_COLORS]
DIM, RESET, CLEAR_LINE = "\033[2m", "\033[0m", "\r\033[K"
FORMATS = ("seglst", "rttm", "png", "words", "ctm")
DEFAULT_FORMATS = "seglst,rttm,png"
WORD_FORMATS = ("words", "ctm")  # need word times: timing "audio"


def _speaker_index(seg: dict) -> int:
    tail = seg["speaker"].rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class LiveView:
    """Prints final segments in their speaker's colour; on a terminal, the interim tails dim on the last line."""

    def __init__(self, color: bool, interim: bool) -> None:
        self.color = color
        self.interim = interim  # only on a terminal: the line is redrawn in place
        self.lock = threading.Lock()
        self.tail = ""

    def line(self, seg: dict, head: str) -> str:
        text = f"{head}{seg['speaker']} {seg['start_time']:7.2f}-{seg['end_time']:7.2f}  {seg['words']}"
        return f"{COLORS[_speaker_index(seg) % len(COLORS)]}{text}{RESET}" if self.color else text

    def show(self, session: str, prefix: bool, final: list[dict], interim: list[dict]) -> None:
        head = f"[{session}] " if prefix else ""
        with self.lock:
            out = CLEAR_LINE if self.interim and self.tail else ""
            out += "".join(self.line(seg, head) + "\n" for seg in final)
            if self.interim:
                self.tail = "  ".join(f"{s['speaker']}: {s['words']}" for s in interim)
                out += f"{DIM}{head}{self.tail}{RESET}" if self.tail else ""
            if out:
                sys.stdout.write(out)
                sys.stdout.flush()

    def close(self) -> None:
        with self.lock:
            if self.interim and self.tail:
                sys.stdout.write(CLEAR_LINE)
                sys.stdout.flush()
                self.tail = ""


def activity_image(activity: np.ndarray) -> np.ndarray:
    """(speakers, frames, RGB) in [0, 1]: each speaker's row fades from white to its live-view colour with its
    probability."""
    from matplotlib.colors import to_rgb

    n_spk = activity.shape[1]
    rgb = np.array([to_rgb(SPEAKER_COLORS[i % len(SPEAKER_COLORS)][1]) for i in range(n_spk)])  # (n_spk, 3)
    a = np.clip(activity.T, 0.0, 1.0)[:, :, None]
    return 1.0 - a * (1.0 - rgb[:, None, :])


def plot_activity(path: Path, activity: np.ndarray, title: str) -> None:
    """A PNG of the speaker activity like the tutorial's plot (speakers x 80 ms frames), one colour per speaker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_spk = activity.shape[1]
    fig, ax = plt.subplots(figsize=(max(6.0, activity.shape[0] / 40), 1.0 + 0.3 * n_spk))
    ax.imshow(activity_image(activity), aspect="auto", interpolation="nearest")
    ax.set_yticks(range(n_spk), [f"spk{i}" for i in range(n_spk)])
    ax.set_xlabel("80 ms frames")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def word_records(seglst: list[dict]) -> list[dict]:
    """One record per word with its times (segments carry `word_times` in audio timing)."""
    out = []
    for seg in seglst:
        for word, (start, end) in zip(seg["words"].split(), seg.get("word_times", []), strict=False):
            out.append({"session_id": seg["session_id"], "speaker": seg["speaker"], "word": word,
                        "start_time": start, "end_time": end})
    return out


def ctm_lines(records: list[dict]) -> list[str]:
    """CTM with the speaker in the channel column: `<session> <speaker> <start> <duration> <word>`."""
    return [f"{r['session_id']} {r['speaker']} {r['start_time']:.2f} {r['end_time'] - r['start_time']:.2f} {r['word']}"
            for r in records]


def write_outputs(out: Path, stem: str, result: StreamResult, formats: tuple[str, ...] = ("seglst", "rttm", "png"),
                  task: str = "transcribe") -> list[Path]:
    """The chosen files; a partial result is written as `<stem>.partial.*` (no PNG). Diarization RTTM holds the
    service's speaker turns; transcription RTTM the activity above 0.5."""
    out.mkdir(parents=True, exist_ok=True)
    if result.partial:
        stem, formats = f"{stem}.partial", tuple(f for f in formats if f != "png")
    written = []

    def put(suffix: str, text: str) -> None:
        path = out / f"{stem}.{suffix}"
        path.write_text(text)
        written.append(path)

    if "seglst" in formats:
        put("seglst.json", json.dumps(result.seglst, indent=1))
    if "rttm" in formats:
        lines = turn_rttm_lines(stem, result.seglst) if task == "diarize" else rttm_lines(stem, result.activity)
        put("rttm", "\n".join(lines) + "\n")
    records = word_records(result.seglst)
    if "words" in formats:
        put("words.json", json.dumps(records, indent=1))
    if "ctm" in formats:
        put("ctm", "".join(line + "\n" for line in ctm_lines(records)))
    if "png" in formats and result.activity.size:
        plot_activity(out / f"{stem}.png", result.activity, f"{stem}: speaker activity")
        written.append(out / f"{stem}.png")
    return written


def parse_formats(text: str, timing: str | None, task: str = "transcribe") -> tuple[str, ...]:
    formats = tuple(f.strip() for f in text.split(",") if f.strip())
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ClientError(f"--format takes a comma list of {', '.join(FORMATS)}; got {text!r}")
    if timing == "nemo" and set(formats) & set(WORD_FORMATS):
        raise ClientError("--format words/ctm need word times: not available with --timing nemo")
    if task == "diarize" and set(formats) & set(WORD_FORMATS):
        raise ClientError("--format words/ctm need words: --task diarize has speaker turns only")
    return formats


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
    ap.add_argument("--task", choices=tuple(TASKS), default="transcribe",
                    help="transcribe (multitalker ASR, default) or diarize (who spoke when: the diarization service)")
    ap.add_argument("--timing", choices=("audio", "nemo"),
                    help="timestamps: audio time with utterances and interim/final replies, or NeMo's arithmetic "
                         "(SpeakerTaggedASR's, for parity); default: the server's (audio)")
    ap.add_argument("--max-speakers", type=int, default=None,
                    help="run at most this many speakers per session (the diarizer's first ones; default: all, "
                         "as NeMo does): guards long two-person calls against phantom speakers")
    ap.add_argument("--format", default=DEFAULT_FORMATS,
                    help=f"outputs, a comma list of {', '.join(FORMATS)} (default: %(default)s)")
    ap.add_argument("--quiet", action="store_true", help="no live transcript")
    ap.add_argument("--no-color", action="store_true")
    ap.add_argument("--no-plot", action="store_true", help="same as leaving png out of --format")
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
        if args.max_speakers is not None and args.max_speakers < 0:
            raise ClientError(f"--max-speakers must be >= 0 (0: no cap), got {args.max_speakers}")
        if args.concurrency < 1:
            raise ClientError(f"--concurrency must be >= 1, got {args.concurrency}")
        if args.tls_ca is not None and not args.tls_ca.is_file():
            raise ClientError(f"--tls-ca {args.tls_ca}: no such file")
        if args.task == "diarize" and args.timing is not None:
            raise ClientError("--timing is for --task transcribe: speaker turns are always in audio time")
        formats = parse_formats(args.format, args.timing, args.task)
        formats = tuple(f for f in formats if f != "png") if args.no_plot else formats
        audios = [(p.stem, read_audio(p)) for p in args.audio]
        for p in args.audio:
            rate = audio_rate(p)
            if rate < SAMPLE_RATE:
                print(f"mtasr-client: warning: {p} is sampled at {rate} Hz: upsampled to {SAMPLE_RATE} Hz, but "
                      "accuracy drops for band-limited audio", file=sys.stderr)
        connect(conn, TASKS[args.task]).close()
    except (AudioError, ClientError) as exc:
        print(f"mtasr-client: error: {exc}", file=sys.stderr)
        return 2
    tty = sys.stdout.isatty()
    view = LiveView(color=not args.no_color and tty, interim=tty and len(audios) == 1)

    def run(i: int) -> StreamResult:
        stem, samples = audios[i]
        show = None if args.quiet else (lambda segs, _act, tails: view.show(stem, len(audios) > 1, segs, tails))
        try:
            result = stream_audio(conn, samples, args.sequence_id, stem, args.chunk_ms, args.realtime,
                                  model=TASKS[args.task], on_reply=show, timing=args.timing,
                                  max_speakers=args.max_speakers)
        except StreamError as exc:
            view.close()
            write_outputs(args.out, stem, exc.partial, formats, args.task)
            raise StreamError(f"{exc}; partial output in {args.out / (stem + '.partial.seglst.json')}",
                              exc.partial) from None
        view.close()
        write_outputs(args.out, stem, result, formats, args.task)
        return result

    status = 0
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        futures = [pool.submit(run, i) for i in range(len(audios))]
        for (stem, _), fut in zip(audios, futures, strict=True):
            try:
                r = fut.result()
                lat = np.percentile(r.latencies_ms, [50, 99]) if r.latencies_ms else [0, 0]
                kind = "turns" if args.task == "diarize" else "segments"
                print(f"{stem}: {len(r.seglst)} {kind}, {r.audio_seconds:.1f} s audio in {r.wall_seconds:.1f} s, "
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

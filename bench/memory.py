"""State bytes held per session, from the spec and a manifest's dims, and a served model's RSS with open sessions.

    python -m bench.memory --graphs /tmp/bgraphs                 # spec bytes (tiny + full) and measured RSS
    python -m bench.memory --graphs /tmp/bgraphs --spec-only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from client.stream import infer_piece, new_sequence_id, new_session_key
from mtasr.manifest import Manifest
from mtasr.spec import (
    N_MELS,
    PUBLIC_CHECKPOINT_DIMS,
    SAMPLE_RATE,
    DecoderJointInputs,
    DiarizerInputs,
    EncoderInputs,
    EncoderOutputs,
    ModelDims,
    carried_state,
    decoder_joint_spec,
    diarizer_spec,
    encoder_spec,
)

# The public checkpoints' preprocessor (NeMo FastConformer / Sortformer): 25 ms window, 10 ms hop.
FULL_WIN_LENGTH, FULL_HOP_LENGTH = 400, 160


def _nbytes(shape: tuple[int, ...], dtype) -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize


def _tensor_bytes(spec, name: str, **sizes: int) -> int:
    t = spec.tensor(name)
    return _nbytes(t.resolve(batch=1, **sizes), t.dtype)


def state_bytes(dims: ModelDims, step_frames: int, win_length: int = FULL_WIN_LENGTH,
                hop_length: int = FULL_HOP_LENGTH, n_spk: int | None = None) -> dict[str, int]:
    """Bytes of state one session holds at most, per part, with every one of `n_spk` speakers active (default:
    every output of the model's diarizer, `dims.n_spk`).

    Tensor shapes and dtypes come from `mtasr.spec`; the diarizer's speaker cache and FIFO are at their max
    lengths with their per-frame predictions; the features tail is the streaming log-mel's sample buffer
    (float64, < win + hop samples) plus the chunker's `step_frames` mel frames (pre-encode cache + one chunk).
    """
    n_spk = dims.n_spk if n_spk is None else n_spk
    enc, diar, dec = encoder_spec(dims), diarizer_spec(dims), decoder_joint_spec(dims)
    dj, di = DecoderJointInputs.tensor_names(), DiarizerInputs.tensor_names()
    per_speaker_encoder = sum(_tensor_bytes(enc, n) for n in carried_state(EncoderInputs, EncoderOutputs))
    per_speaker_decoder = (_tensor_bytes(dec, dj.h_in) + _tensor_bytes(dec, dj.c_in)
                           + _tensor_bytes(dec, dj.targets))  # LSTM state + last token
    diarizer = (_tensor_bytes(diar, di.spkcache, spkcache_frames=dims.spkcache_len)
                + _nbytes((dims.spkcache_len, n_spk), np.float32)  # spkcache_preds
                + _tensor_bytes(diar, di.fifo, fifo_frames=dims.fifo_len)
                + _nbytes((dims.fifo_len, n_spk), np.float32)  # fifo_preds
                + _nbytes((dims.diar_emb_dim,), np.float32) + _nbytes((1,), np.int64))  # mean_sil_emb, n_sil
    features = _nbytes((win_length + hop_length,), np.float64) + _nbytes((N_MELS, step_frames), np.float32)
    out = {"encoder_caches": n_spk * per_speaker_encoder, "decoder_state": n_spk * per_speaker_decoder,
           "diarizer_cache_fifo": diarizer, "features_tail": features}
    out["total"] = sum(out.values())
    out["encoder_caches_per_speaker"] = per_speaker_encoder
    return out


def spec_report(graphs: Path | None = None, preset: str | None = None) -> dict:
    """`state_bytes` for the graphs folder's dims (if given) and for the public checkpoints' dims."""
    step_frames = 121  # [70,13] at subsampling 8: 112 new + 9 pre-encode cache frames
    report: dict = {}
    if graphs is not None:
        manifest = Manifest.load(graphs)
        step_frames = manifest.preset(preset).streaming_cfg.step_frames
        from mtasr.features import FeatureParams

        fp = FeatureParams.load(Path(graphs) / manifest.features.asr)
        report["graphs"] = state_bytes(manifest.dims, step_frames, fp.win_length, fp.hop_length)
    report["full"] = state_bytes(PUBLIC_CHECKPOINT_DIMS, step_frames)
    return report


# ---------------------------------------------------------------------------------------------- measured RSS
def descendants(pid: int) -> list[int]:
    """`pid` and all its descendants (parent ids from /proc/*/stat)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by `pid` and its descendants (live ones: read before they exit)."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in descendants(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / tick


def tree_rss(pid: int) -> int:
    """Sum of VmRSS (bytes) over `pid` and its descendants (tritonserver + Python backend stubs)."""
    total = 0
    for p in descendants(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def _send(client, samples: np.ndarray, sequence_id: int, start: bool = False, end: bool = False) -> None:
    infer_piece(client, samples, sequence_id, _KEYS.setdefault(sequence_id, new_session_key()), start, end)


_KEYS: dict[int, str] = {}  # sequence id -> its session key
# Repository limits for the measurement: sessions stay open (no request) while RSS settles, up to 64 at once.
LIMITS = {"max_sessions": 64, "idle_timeout_s": 600.0, "admission_headroom": 0.0}  # by count: memory, not capacity


def measure_rss(url: str, pid: int, counts: tuple[int, ...] = (1, 8, 32), pieces: int = 4, piece_s: float = 0.5,
                settle_s: float = 1.0) -> dict:
    """Server tree RSS: cold, at baseline (after one warm-up sequence), with `counts` sequences open (START +
    pieces, no END), after END, and again for a second round of the largest count (growth there = a leak)."""
    from client.stream import connect
    from mtasr.audio import synth_conversation

    client = connect(url)
    n = int(piece_s * SAMPLE_RATE)
    audio = synth_conversation(pieces * piece_s + 0.1, n_speakers=3, seed=7)

    def rss() -> int:
        time.sleep(settle_s)
        return tree_rss(pid)

    cold = rss()
    warm = new_sequence_id()
    for i in range(pieces):  # one whole sequence first: one-time allocations (ORT arenas, imports) are not state
        _send(client, audio[i * n : (i + 1) * n], warm, start=i == 0, end=i == pieces - 1)
    out: dict = {"cold": cold, "baseline": rss(), "open": {}}
    opened: list[int] = []
    try:
        for round_ in (1, 2):  # round 2 repeats the largest count: a leak would grow RSS again
            for count in sorted(counts) if round_ == 1 else [max(counts)]:
                while len(opened) < count:
                    sid = new_sequence_id()
                    for i in range(pieces):
                        _send(client, audio[i * n : (i + 1) * n], sid, start=i == 0)
                    opened.append(sid)
                if round_ == 1:
                    out["open"][str(count)] = rss()
                else:
                    out["open_round2"] = rss()
            for s in opened:
                _send(client, audio[:n], s, end=True)
            opened.clear()
            out["after_end" if round_ == 1 else "after_end_round2"] = rss()
    finally:
        for s in opened:  # close whatever is still open
            try:
                _send(client, audio[:n], s, end=True)
            except Exception:  # noqa: BLE001 - best effort cleanup
                pass
        client.close()
    top = max(out["open"].values())
    out["returned_near_baseline"] = bool(out["after_end"] - out["baseline"] <= 0.25 * max(top - out["baseline"], 1))
    # steady state: what the first round left (ONNX Runtime's arena sized for the largest batch) is reused
    out["no_growth_round2"] = bool(out["after_end_round2"] - out["after_end"] <= 0.05 * max(top - out["baseline"], 1)
                                   + 2**20)
    out["per_session_bytes"] = {k: (v - out["baseline"]) / int(k) for k, v in out["open"].items()}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    ap.add_argument("--graphs", type=Path, help="exported graphs folder (manifest.json)")
    ap.add_argument("--preset", help="latency preset, e.g. 70_13 (default: the manifest's)")
    ap.add_argument("--spec-only", action="store_true", help="only the spec computation; no server")
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_memory"), help="where the repository is built")
    args = ap.parse_args(argv)
    report: dict = {"spec_bytes": spec_report(args.graphs, args.preset)}
    if not args.spec_only:
        if args.graphs is None:
            ap.error("--graphs is needed to measure RSS (or give --spec-only)")
        from client.server import TritonServer
        from model_repository.build import build

        repo = build(args.graphs, "cpu", args.work / "repo", preset=args.preset, **LIMITS)
        with TritonServer(repo) as server:
            report["rss_bytes"] = measure_rss(server.grpc_url, server.pid, tuple(args.sessions))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

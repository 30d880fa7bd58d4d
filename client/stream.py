"""Stream audio to the `multitalker` model over gRPC with Triton sequence batching.

    result = stream_audio("localhost:8001", samples, sequence_id=1, chunk_ms=160)
    result.seglst, result.activity, result.latencies_ms
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mtasr.spec import FRAME_SEC, NUM_SPEAKERS, ORCHESTRATOR, SAMPLE_RATE, orchestrator_spec


class ClientError(RuntimeError):
    """A failure the user can act on; the message is one line."""


@dataclass
class StreamResult:
    session_id: str
    seglst: list[dict] = field(default_factory=list)  # final SegLST
    activity: np.ndarray = field(default_factory=lambda: np.zeros((0, NUM_SPEAKERS), np.float32))
    latencies_ms: list[float] = field(default_factory=list)  # send -> response, per request
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0


def connect(url: str, model: str = ORCHESTRATOR, timeout: float = 10.0):
    """A gRPC client after checking the server is live and the model ready (clear errors otherwise)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.is_server_live():
                break
        except InferenceServerException:
            pass
        if time.monotonic() > deadline:
            raise ClientError(f"no Triton server answers at {url} (is it running? try `make serve`)")
        time.sleep(0.2)
    try:
        ready = client.is_model_ready(model)
    except InferenceServerException as exc:
        raise ClientError(f"cannot query model {model!r} at {url}: {exc.message()}") from None
    if not ready:
        raise ClientError(f"model {model!r} is not ready on {url} (see the server log)")
    return client


def _inputs(piece: np.ndarray):
    import tritonclient.grpc as grpcclient

    spec = orchestrator_spec().tensor("audio")
    x = grpcclient.InferInput(spec.name, [1, piece.shape[0]], "FP32")
    x.set_data_from_numpy(np.ascontiguousarray(piece[None], dtype=np.float32))
    return [x]


def stream_audio(url: str, samples: np.ndarray, sequence_id: int, session_id: str = "session",
                 chunk_ms: float = 160.0, realtime: bool = False, model: str = ORCHESTRATOR,
                 on_reply: Callable[[list[dict], np.ndarray], None] | None = None,
                 timeout: float = 600.0) -> StreamResult:
    """Send `samples` (16 kHz mono float32) in `chunk_ms` pieces as one sequence; wait for every reply."""
    client = connect(url, model)
    piece = max(1, int(round(chunk_ms * SAMPLE_RATE / 1000)))
    starts = list(range(0, max(len(samples), 1), piece))
    replies: queue.Queue = queue.Queue()
    sent_at: dict[str, float] = {}
    result = StreamResult(session_id=session_id, audio_seconds=len(samples) / SAMPLE_RATE)

    def callback(result, error):
        replies.put((result, error, time.perf_counter()))

    client.start_stream(callback=callback)
    t0 = time.perf_counter()
    activity = []
    try:
        done = threading.Event()
        errors: list[str] = []

        def receive():
            for _ in starts:
                try:
                    res, error, t = replies.get(timeout=timeout)
                except queue.Empty:
                    errors.append(f"no reply within {timeout:.0f} s")
                    break
                if error is not None:
                    errors.append(error.message() if hasattr(error, "message") else str(error))
                    break
                rid = res.get_response().id
                result.latencies_ms.append((t - sent_at.get(rid, t)) * 1000)
                # the server names sessions by sequence id; the client's name (file stem) is the SegLST session_id
                changed = json.loads(res.as_numpy("segments").reshape(-1)[0])
                segs = [{**seg, "session_id": session_id} for seg in changed]
                act = res.as_numpy("speaker_activity")[0]
                activity.append(act)
                if on_reply:
                    on_reply(segs, act)
                transcript = json.loads(res.as_numpy("transcript").reshape(-1)[0])
                result.seglst = [{**seg, "session_id": session_id} for seg in transcript]
            done.set()

        receiver = threading.Thread(target=receive, daemon=True)
        receiver.start()
        for i, s in enumerate(starts):
            if realtime:
                time.sleep(max(0.0, t0 + s / SAMPLE_RATE - time.perf_counter()))
            rid = f"{sequence_id}-{i}"
            sent_at[rid] = time.perf_counter()
            client.async_stream_infer(model, _inputs(samples[s : s + piece]), request_id=rid, sequence_id=sequence_id,
                                      sequence_start=i == 0, sequence_end=i == len(starts) - 1)
            if done.is_set():
                break
        receiver.join(timeout)
        if errors:
            raise ClientError(f"{session_id}: server error: {errors[0]}")
    finally:
        client.stop_stream()
        client.close()
    result.wall_seconds = time.perf_counter() - t0
    result.activity = np.concatenate(activity) if activity else result.activity
    return result


def rttm_lines(session_id: str, activity: np.ndarray, threshold: float = 0.5) -> list[str]:
    """RTTM speaker turns from per-80 ms speaker activity."""
    lines = []
    active = activity > threshold
    for spk in range(activity.shape[1] if activity.ndim == 2 else 0):
        col = np.concatenate([[False], active[:, spk], [False]])
        edges = np.flatnonzero(col[1:] != col[:-1])
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            lines.append(f"SPEAKER {session_id} 1 {a * FRAME_SEC:.2f} {(b - a) * FRAME_SEC:.2f} <NA> <NA> "
                         f"speaker_{spk} <NA> <NA>")
    return lines

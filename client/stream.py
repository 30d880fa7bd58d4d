"""Stream audio to the `multitalker` model over gRPC with Triton sequence batching.

    result = stream_audio(Connection("localhost:8001"), samples, chunk_ms=160)
    result.seglst, result.activity, result.latencies_ms

Every session gets a fresh random 63-bit sequence id and a random session key (sent as a gRPC header on its
stream): the server serves a live session only to the client holding its key.
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtasr.spec import (
    API_KEY_HEADER,
    FRAME_SEC,
    MAX_CHUNK_SECONDS,
    MAX_SPEAKERS_PARAMETER,
    ORCHESTRATOR,
    SAMPLE_RATE,
    SESSION_KEY_HEADER,
    TIMING_PARAMETER,
    TIMINGS,
    OrchestratorInputs,
    OrchestratorOutputs,
    TensorRecord,
    grpc_restricted_header,
)

MAX_SEQUENCE_ID = 2**64 - 1  # CORRID is UINT64; 0 means "no sequence" to Triton


class ClientError(RuntimeError):
    """A failure the user can act on; the message is one line."""


class StreamError(ClientError):
    """A session that failed part way; `partial` holds what had been received."""

    def __init__(self, message: str, partial: StreamResult) -> None:
        super().__init__(message)
        self.partial = partial


def new_sequence_id() -> int:
    """A random 63-bit sequence id (never 0): sessions of independent clients do not collide."""
    return secrets.randbelow(2**63 - 1) + 1


def new_session_key() -> str:
    """A random per-session secret (43 url-safe characters, 256 bits)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Connection:
    """Where and how to reach the server: gRPC address, optional API key, optional TLS."""

    url: str = "localhost:8001"
    api_key: str | None = None  # for a server started with an inference key (`--api-key`)
    tls: bool = False
    tls_ca: Path | None = None  # root certificate(s) to trust (PEM); implies TLS

    def headers(self) -> dict[str, str]:
        return {grpc_restricted_header(API_KEY_HEADER): self.api_key} if self.api_key else {}

    def client(self):
        import tritonclient.grpc as grpcclient

        if self.tls or self.tls_ca:
            return grpcclient.InferenceServerClient(self.url, ssl=True,
                                                    root_certificates=str(self.tls_ca) if self.tls_ca else None)
        return grpcclient.InferenceServerClient(self.url)

    def aio_client(self):
        """The asyncio gRPC client for the same address and TLS settings (one event loop drives many sessions)."""
        import tritonclient.grpc.aio as aioclient

        if self.tls or self.tls_ca:
            return aioclient.InferenceServerClient(self.url, ssl=True,
                                                   root_certificates=str(self.tls_ca) if self.tls_ca else None)
        return aioclient.InferenceServerClient(self.url)


def validate_stream_options(chunk_ms: float, sequence_id: int | None = None) -> None:
    """ClientError for options the server would refuse or Triton cannot carry."""
    if not 0 < chunk_ms <= MAX_CHUNK_SECONDS * 1000:
        raise ClientError(f"--chunk-ms must be in (0, {MAX_CHUNK_SECONDS * 1000:g}] (the server's largest piece), "
                          f"got {chunk_ms:g}")
    if sequence_id is not None and not 1 <= sequence_id <= MAX_SEQUENCE_ID:
        raise ClientError(f"sequence id must be in [1, 2**64 - 1], got {sequence_id}")


@dataclass
class StreamResult:
    session_id: str
    seglst: list[dict] = field(default_factory=list)  # final SegLST (the transcript so far when partial)
    # frames x speakers; the speaker count (the served diarizer's, 4 or 8) comes with the first reply
    activity: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    latencies_ms: list[float] = field(default_factory=list)  # send -> response, per request
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    sequence_id: int = 0
    partial: bool = False  # the session ended early (server gone, error): seglst/activity are what arrived
    timing: str | None = None  # what the session asked for (None: the server's default)
    reply_bytes: list[int] = field(default_factory=list)  # JSON bytes of segments + interim + transcript per reply


def connect(conn: Connection | str, model: str = ORCHESTRATOR, timeout: float = 10.0):
    """A gRPC client after checking the server is live and the model ready (clear errors otherwise)."""
    from tritonclient.utils import InferenceServerException

    conn = Connection(conn) if isinstance(conn, str) else conn
    client = conn.client()
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.is_server_live(headers=conn.headers()):
                break
        except InferenceServerException:
            pass
        if time.monotonic() > deadline:
            raise ClientError(f"no Triton server answers at {conn.url} (is it running? try `make serve`"
                              f"{'; TLS: check --tls-ca' if conn.tls or conn.tls_ca else ''})")
        time.sleep(0.2)
    try:
        ready = client.is_model_ready(model, headers=conn.headers())
    except InferenceServerException as exc:
        raise ClientError(f"cannot query model {model!r} at {conn.url}: {exc.message()}") from None
    if not ready:
        raise ClientError(f"model {model!r} is not ready on {conn.url} (see the server log)")
    return client


def infer_inputs(record: TensorRecord) -> list:
    """A record's tensors as gRPC `InferInput`s."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    out = []
    for name, array in record.feeds().items():
        x = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        x.set_data_from_numpy(np.ascontiguousarray(array))
        out.append(x)
    return out


def audio_inputs(piece: np.ndarray) -> list:
    """One audio piece as the orchestrator's gRPC inputs."""
    return infer_inputs(OrchestratorInputs(audio=np.asarray(piece, dtype=np.float32)[None]))


def infer_piece(client, samples: np.ndarray, sequence_id: int, session_key: str | None, start: bool = False,
                end: bool = False, headers: dict[str, str] | None = None, model: str = ORCHESTRATOR):
    """One unary request of a sequence (16 kHz mono float32 piece) with its session key; the InferResult."""
    key = {SESSION_KEY_HEADER: session_key} if session_key else {}
    return client.infer(model, audio_inputs(samples), sequence_id=sequence_id, sequence_start=start, sequence_end=end,
                        headers={**(headers or {}), **key})


OnReply = Callable[[list[dict], np.ndarray, list[dict]], None]  # (final segments, activity, interim tails)


def _segments(output: np.ndarray, session_id: str) -> list[dict]:
    """A JSON output of one reply as segments named by the client's session id (the server uses sequence ids)."""
    return [{**seg, "session_id": session_id} for seg in json.loads(output.reshape(-1)[0])]


def _message(error) -> str:
    text = error.message() if hasattr(error, "message") and callable(error.message) else str(error)
    return " ".join(str(text).split())  # one line


def stream_audio(conn: Connection | str, samples: np.ndarray, sequence_id: int | None = None,
                 session_id: str = "session", chunk_ms: float = 160.0, realtime: bool = False,
                 model: str = ORCHESTRATOR, on_reply: OnReply | None = None,
                 timeout: float = 600.0, session_key: str | None = None, timing: str | None = None,
                 max_speakers: int | None = None) -> StreamResult:
    """Send `samples` (16 kHz mono float32) in `chunk_ms` pieces as one sequence; wait for every reply.

    `on_reply(segments, activity, interim)` sees each reply: the segments that became final (timing "nemo": that
    changed), the 80 ms speaker activity frames it decided, and each speaker's unstable tail. `timing` asks for
    "audio" or "nemo" timestamps (None: the server's default). The sequence id and session key are fresh random
    values unless given. A session that fails part way raises `StreamError` carrying what had been received
    (`partial=True`: the final segments, then the interim tails).
    """
    from tritonclient.utils import InferenceServerException

    conn = Connection(conn) if isinstance(conn, str) else conn
    validate_stream_options(chunk_ms, sequence_id)
    if timing is not None and timing not in TIMINGS:
        raise ClientError(f"timing must be one of {', '.join(TIMINGS)}, got {timing!r}")
    if max_speakers is not None and max_speakers < 0:
        raise ClientError(f"max_speakers must be >= 0 (0: no cap), got {max_speakers}")
    start = {**({TIMING_PARAMETER: timing} if timing else {}),
             **({MAX_SPEAKERS_PARAMETER: int(max_speakers)} if max_speakers else {})}  # the START's parameters
    sequence_id = sequence_id or new_sequence_id()
    client = connect(conn, model)
    piece = max(1, int(round(chunk_ms * SAMPLE_RATE / 1000)))
    starts = list(range(0, max(len(samples), 1), piece))
    replies: queue.Queue = queue.Queue()
    sent_at: dict[str, float] = {}
    result = StreamResult(session_id=session_id, audio_seconds=len(samples) / SAMPLE_RATE, sequence_id=sequence_id,
                          timing=timing)
    headers = {**conn.headers(), SESSION_KEY_HEADER: session_key or new_session_key()}

    def callback(result, error):
        replies.put((result, error, time.perf_counter()))

    t0 = time.perf_counter()
    activity = []
    errors: list[str] = []
    finals: list[dict] = []  # audio timing: every final segment received
    interim: list[dict] = []  # the latest unstable tails
    try:
        client.start_stream(callback=callback, headers=headers)
        done = threading.Event()

        def receive():
            for _ in starts:
                try:
                    res, error, t = replies.get(timeout=timeout)
                except queue.Empty:
                    errors.append(f"no reply within {timeout:.0f} s")
                    break
                if error is not None:
                    errors.append(_message(error))
                    break
                rid = res.get_response().id
                result.latencies_ms.append((t - sent_at.get(rid, t)) * 1000)
                # the server names sessions by sequence id; the client's name (file stem) is the SegLST session_id
                out = OrchestratorOutputs.from_lookup(res.as_numpy)
                result.reply_bytes.append(sum(len(getattr(out, n).reshape(-1)[0])
                                              for n in OrchestratorOutputs.json_names()))
                segs, tails, transcript = (_segments(x, session_id) for x in (out.segments, out.interim,
                                                                               out.transcript))
                act = out.speaker_activity[0]
                activity.append(act)
                finals.extend(segs)
                interim[:] = tails
                if on_reply:
                    on_reply(segs, act, tails)
                if transcript or result.timing == "nemo":
                    result.seglst = transcript
            done.set()

        receiver = threading.Thread(target=receive, daemon=True)
        receiver.start()
        for i, s in enumerate(starts):
            if realtime:
                time.sleep(max(0.0, t0 + s / SAMPLE_RATE - time.perf_counter()))
            if done.is_set():
                break
            rid = f"{i}"
            sent_at[rid] = time.perf_counter()
            try:
                client.async_stream_infer(model, audio_inputs(samples[s : s + piece]), request_id=rid,
                                          sequence_id=sequence_id, sequence_start=i == 0,
                                          sequence_end=i == len(starts) - 1,
                                          parameters=start if i == 0 and start else None)
            except InferenceServerException as exc:  # the stream broke (server gone): the receiver says why
                receiver.join(5)
                if not errors:
                    errors.append(_message(exc))
                break
        receiver.join(timeout)
    except InferenceServerException as exc:
        errors.append(_message(exc))
    finally:
        try:
            client.stop_stream()
            client.close()
        except Exception:  # noqa: BLE001 - closing a broken channel must not hide the real error
            pass
    result.wall_seconds = time.perf_counter() - t0
    result.activity = np.concatenate(activity) if activity else result.activity
    if errors:
        result.partial = True
        if not result.seglst:  # audio timing (nemo timing had the whole transcript in every reply)
            result.seglst = sorted(finals, key=lambda x: x["start_time"]) + interim
        got = result.activity.shape[0] * FRAME_SEC
        raise StreamError(f"{session_id}: server error after {got:.1f} s of {result.audio_seconds:.1f} s audio: "
                          f"{errors[0]}", result)
    return result


def turn_rttm_lines(session_id: str, turns: list[dict]) -> list[str]:
    """RTTM from speaker turns (the diarization service's post-processed segments, NeMo's RTTM)."""
    return [f"SPEAKER {session_id} 1 {t['start_time']:.2f} {t['end_time'] - t['start_time']:.2f} <NA> <NA> "
            f"{t['speaker']} <NA> <NA>" for t in turns]


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

"""The gateway's native WebSocket protocol: the one place its paths, events, fields, error and close codes are
written. The server, the web page's tests, the load generator and docs/gateway.md (its tables are generated from
here: `python -m gateway.protocol`, drift-tested) all read this module.

Client -> server: binary frames are PCM16 little-endian mono 16 kHz audio of any length; text frames are JSON
events (`start`, optional and first; `end`). Server -> client: text frames only (`final`, `interim`, `activity`,
`error`, `end`), then a normal close.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from enum import Enum

from mtasr.spec import DIARIZATION, ORCHESTRATOR, SAMPLE_RATE, TIMINGS

NATIVE_PATH = "/v1/stream"
REALTIME_PATH = "/v1/realtime"  # the OpenAI-Realtime-compatible transcription mode (gateway.realtime)
PAGE_PATH = "/"
STATIC_PREFIX = "/static/"
SUBPROTOCOL = "mtasr.v1"  # offered by browsers (with a key token when the gateway has a key)
REALTIME_SUBPROTOCOL = "realtime"  # what OpenAI's browser clients offer
# Browsers cannot set headers on a WebSocket: a key may ride as a subprotocol token instead (never echoed back).
KEY_SUBPROTOCOL_PREFIXES = ("mtasr-key.", "openai-insecure-api-key.")
KEY_HEADERS = ("mtasr-api-key", "authorization")  # `authorization: Bearer <key>` as OpenAI clients send it
TASKS = {"transcribe": ORCHESTRATOR, "diarize": DIARIZATION}  # task -> the Triton model that serves it
BYTES_PER_SAMPLE = 2  # PCM16
MAX_SESSION_LABEL = 128
MAX_TEXT_FRAME = 4096  # bytes of a JSON client event


class ErrorCode(str, Enum):
    """`error` events' `code`; the value's doc is the table's text."""

    BAD_MESSAGE = "bad_message"
    BAD_AUDIO = "bad_audio"
    FRAME_TOO_LARGE = "frame_too_large"
    LATE_START = "late_start"
    AFTER_END = "after_end"
    SERVER_FULL = "server_full"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    IDLE_TIMEOUT = "idle_timeout"
    TOO_MANY_CONNECTIONS = "too_many_connections"


ERROR_DOCS: dict[ErrorCode, str] = {
    ErrorCode.BAD_MESSAGE: "a text frame that is not a known event (bad JSON, unknown type or field, bad value); "
                           "ignored, the session goes on",
    ErrorCode.BAD_AUDIO: "a binary frame that is not whole PCM16 samples (odd byte count); dropped, the session "
                         "goes on",
    ErrorCode.FRAME_TOO_LARGE: "a binary frame over the frame limit (`--max-frame-bytes`); dropped, the session "
                               "goes on (frames over twice the limit close the connection with 1009)",
    ErrorCode.LATE_START: "a `start` after audio or after another `start`; ignored",
    ErrorCode.AFTER_END: "a frame after `end`; ignored",
    ErrorCode.SERVER_FULL: "Triton refused the session (its session cap): close 1013, try again later",
    ErrorCode.UPSTREAM_ERROR: "Triton refused a request (the message says why): close 1011",
    ErrorCode.UPSTREAM_UNAVAILABLE: "Triton cannot be reached or went away mid-session: close 1011",
    ErrorCode.IDLE_TIMEOUT: "no frame for `--idle-timeout-s`: the sequence is ended, the `end` event follows, "
                            "close 1008",
    ErrorCode.TOO_MANY_CONNECTIONS: "over the gateway's connection limits: close 1013",
}


class Close(int, Enum):
    """WebSocket close codes the gateway uses (RFC 6455 section 7.4.1)."""

    NORMAL = 1000
    POLICY = 1008  # idle timeout
    TOO_BIG = 1009  # a frame over twice the frame limit (the WebSocket library's own limit)
    UPSTREAM = 1011  # Triton went away or refused a request
    TRY_AGAIN = 1013  # server full, too many connections


class ProtocolError(ValueError):
    """A client frame the protocol refuses; `code` is its ErrorCode."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _doc(text: str, default=MISSING):
    return field(default=default, metadata={"doc": text})


@dataclass(frozen=True)
class Start:
    """`{"type": "start", ...}`: optional, before any audio; every field is optional."""

    task: str = _doc("`transcribe` (words per speaker, the `multitalker` model) or `diarize` (speaker turns, the "
                     "`diarization` model)", "transcribe")
    timing: str | None = _doc("`audio` (default: word times in the session's audio, final + interim events) or "
                              "`nemo` (NeMo's arithmetic: no final events, interim carries the whole transcript)",
                              None)
    max_speakers: int | None = _doc("cap on the session's speaker instances (an int >= 1; absent or 0: none, "
                                    "NeMo's behaviour); sent to Triton as the START parameter `mtasr_max_speakers`",
                                    None)
    session_id: str = _doc(f"label written as the segments' `session_id` (at most {MAX_SESSION_LABEL} characters)",
                           "stream")

    @property
    def model(self) -> str:
        return TASKS[self.task]


@dataclass(frozen=True)
class End:
    """`{"type": "end"}`: no more audio; the `end` event with the whole transcript follows, then a normal close."""


CLIENT_EVENTS: dict[str, type] = {"start": Start, "end": End}


def parse_client_text(text: str) -> Start | End:
    """A client text frame as its event (ProtocolError BAD_MESSAGE for anything else)."""
    if len(text) > MAX_TEXT_FRAME:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"text frame over {MAX_TEXT_FRAME} bytes")
    try:
        msg = json.loads(text)
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "text frames must be JSON events") from None
    if not isinstance(msg, dict) or msg.get("type") not in CLIENT_EVENTS:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"unknown event; send one of {sorted(CLIENT_EVENTS)} "
                                                   "(audio goes in binary frames)")
    kind = CLIENT_EVENTS[msg.pop("type")]
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(msg) - known)
    if unknown:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"unknown field(s) {unknown}; known: {sorted(known)}")
    if kind is End:
        return End()
    return _start(**msg)


def _start(task: object = "transcribe", timing: object = None, max_speakers: object = None,
           session_id: object = "stream") -> Start:
    if task not in TASKS:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"task must be one of {sorted(TASKS)}, got {task!r}")
    if timing is not None and timing not in TIMINGS:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"timing must be one of {list(TIMINGS)}, got {timing!r}")
    if max_speakers is not None and (isinstance(max_speakers, bool) or not isinstance(max_speakers, int)
                                     or not 0 <= max_speakers <= 64):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"max_speakers must be an int in [0, 64], got {max_speakers!r}")
    if not isinstance(session_id, str) or not 0 < len(session_id) <= MAX_SESSION_LABEL:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"session_id must be a string of 1..{MAX_SESSION_LABEL} chars")
    return Start(str(task), timing, max_speakers or None, session_id)  # type: ignore[arg-type]


def pcm16_samples(frame: bytes, max_bytes: int) -> int:
    """Samples in a binary audio frame (ProtocolError for a frame the session must drop)."""
    if len(frame) > max_bytes:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"binary frame of {len(frame)} bytes is over the limit of "
                                                       f"{max_bytes} ({max_bytes / BYTES_PER_SAMPLE / SAMPLE_RATE:g}"
                                                       " s of audio); dropped")
    if len(frame) % BYTES_PER_SAMPLE:
        raise ProtocolError(ErrorCode.BAD_AUDIO, f"binary frame of {len(frame)} bytes is not whole PCM16 samples; "
                                                 "dropped")
    return len(frame) // BYTES_PER_SAMPLE


# --- server -> client ---------------------------------------------------------------------------------------------

SERVER_EVENTS: dict[str, tuple[str, str]] = {  # type -> (fields, when)
    "final": ("`segment`: a SegLST entry (`session_id`, `speaker`, `start_time`, `end_time`, `words`) with "
              "`word_times`", "an utterance (a speaker turn for `diarize`) became final; sent once, never changes"),
    "interim": ("`segments`: each speaker's current utterance (timing `nemo`: the whole transcript so far)",
                "it changed; the next `interim` replaces it"),
    "activity": ("`frames`: speaker probabilities, one row of the diarizer's speakers per 80 ms frame",
                 "frames were decided"),
    "error": ("`code` (below), `message`", "a frame was refused, or the session cannot go on"),
    "end": ("`transcript`: the whole SegLST; `usage`: `{\"seconds\": <audio processed>}`",
            "after `end` (or idle timeout): then a normal close"),
}


def final_event(segment: dict) -> dict:
    return {"type": "final", "segment": segment}


def interim_event(segments: list[dict]) -> dict:
    return {"type": "interim", "segments": segments}


def activity_event(frames: list[list[float]]) -> dict:
    return {"type": "activity", "frames": frames}


def error_event(code: ErrorCode, message: str) -> dict:
    return {"type": "error", "code": code.value, "message": message}


def end_event(transcript: list[dict], seconds: float) -> dict:
    return {"type": "end", "transcript": transcript, "usage": {"seconds": round(seconds, 3)}}


DOCS_BEGIN = "<!-- protocol-tables:begin (generated by `python -m gateway.protocol`) -->"
DOCS_END = "<!-- protocol-tables:end -->"


def protocol_markdown() -> str:
    """The protocol's tables for docs/gateway.md."""
    rows = ["| client event | field | default | meaning |", "|---|---|---|---|"]
    for name, kind in CLIENT_EVENTS.items():
        fs = fields(kind)
        if not fs:
            rows.append(f"| `{name}` | | | {kind.__doc__.split(': ', 1)[-1]} |")
        for f in fs:
            default = "" if f.default is MISSING else json.dumps(f.default)
            rows.append(f"| `{name}` | `{f.name}` | `{default}` | {f.metadata['doc']} |")
    rows += ["", "| server event | fields | sent when |", "|---|---|---|"]
    rows += [f"| `{name}` | {what} | {when} |" for name, (what, when) in SERVER_EVENTS.items()]
    rows += ["", "| error code | meaning |", "|---|---|"]
    rows += [f"| `{code.value}` | {ERROR_DOCS[code]} |" for code in ErrorCode]
    rows += ["", "| close code | when |", "|---|---|"]
    close_docs = {Close.NORMAL: "after the `end` event", Close.POLICY: "idle timeout",
                  Close.TOO_BIG: "a frame over twice the frame limit", Close.UPSTREAM: "Triton went away or refused",
                  Close.TRY_AGAIN: "server full, too many connections"}
    rows += [f"| {c.value} | {close_docs[c]} |" for c in Close]
    return "\n".join(rows)


if __name__ == "__main__":
    print(protocol_markdown())

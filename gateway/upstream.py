"""One Triton sequence over `tritonclient.grpc.aio`, owned by one WebSocket connection.

Only the documented protocol is used (`mtasr.spec` records, `client.stream` helpers): a fresh random sequence id
and session key per sequence, the key as the `mtasr-session-key` header of its gRPC stream, START parameters
`mtasr_timing` / `mtasr_max_speakers`, audio as `audio_int16` pieces of at most `MAX_CHUNK_SECONDS`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from client.stream import Connection, infer_inputs, new_sequence_id, new_session_key
from mtasr.spec import (
    MAX_CHUNK_SECONDS,
    MAX_SPEAKERS_PARAMETER,
    SAMPLE_RATE,
    SESSION_KEY_HEADER,
    TIMING_PARAMETER,
    OrchestratorInputs,
    OrchestratorOutputs,
)

# the orchestrator's admission refusals: "server full (N sessions) ...", "server at capacity (...)"
FULL_MARKS = ("server full", "server at capacity")
CLOSE_WAIT_S = 5.0  # for the server to close a completed stream before the gateway cancels it


class UpstreamError(RuntimeError):
    """Triton refused a request (`refused`: it answered with an error) or went away (`refused` False)."""

    def __init__(self, message: str, refused: bool) -> None:
        super().__init__(" ".join(message.split()))
        self.refused = refused

    @property
    def full(self) -> bool:
        return self.refused and any(mark in str(self).lower() for mark in FULL_MARKS)


@dataclass
class Reply:
    """One Triton reply, decoded: final segments, interim tails, the END transcript, activity rows."""

    segments: list[dict]
    interim: list[dict]
    transcript: list[dict]
    activity: np.ndarray
    seconds: float  # audio of the request this reply answers


class PieceBuffer:
    """Audio of any frame size in, Triton pieces out: full `piece` samples as they fill; the last one (never
    empty once audio came) waits for more audio or the END."""

    def __init__(self, piece: int) -> None:
        if not 0 < piece <= MAX_CHUNK_SECONDS * SAMPLE_RATE:
            raise ValueError(f"piece of {piece} samples is out of (0, {MAX_CHUNK_SECONDS:g} s]")
        self.piece = piece
        self._parts: list[np.ndarray] = []
        self._size = 0

    def push(self, samples: np.ndarray) -> list[np.ndarray]:
        self._parts.append(samples)
        self._size += samples.size
        if self._size <= self.piece:
            return []
        buf = np.concatenate(self._parts)
        n = (buf.size - 1) // self.piece * self.piece  # strictly less than all: the remainder is never empty
        self._parts, self._size = [buf[n:]], buf.size - n
        return [buf[i: i + self.piece] for i in range(0, n, self.piece)]

    def rest(self) -> np.ndarray:
        buf = np.concatenate(self._parts) if self._parts else np.zeros(0, np.int16)
        self._parts, self._size = [], 0
        return buf

    def clear(self) -> None:
        self._parts, self._size = [], 0

    @property
    def pending(self) -> int:
        return self._size


@dataclass
class SequenceOptions:
    model: str
    timing: str | None = None
    max_speakers: int | None = None
    session_id: str = "stream"

    def start_parameters(self) -> dict | None:
        params = {**({TIMING_PARAMETER: self.timing} if self.timing else {}),
                  **({MAX_SPEAKERS_PARAMETER: int(self.max_speakers)} if self.max_speakers else {})}
        return params or None


@dataclass
class TritonSequence:
    """A sequence on its own gRPC stream: `send` audio, `finish` (END), iterate `replies()`; `close` always.

    The request queue is bounded (`max_pending` pieces): a client sending faster than Triton answers waits in
    `send`, and so stops reading its socket (backpressure), instead of the gateway buffering without limit."""

    conn: Connection
    options: SequenceOptions
    piece: int
    max_pending: int = 16
    sequence_id: int = field(default_factory=new_sequence_id)
    session_key: str = field(default_factory=new_session_key)

    def __post_init__(self) -> None:
        self._buffer = PieceBuffer(self.piece)
        self._queue: asyncio.Queue = asyncio.Queue(self.max_pending)
        self._client = None
        self._replies = None
        self._sent = 0  # requests queued
        self._answered = 0
        self._ended = False
        self._seconds: dict[str, float] = {}
        self._dead = False
        self.seconds_answered = 0.0

    @property
    def started(self) -> bool:
        return self._sent > 0

    @property
    def ended(self) -> bool:
        return self._ended

    async def _requests(self) -> AsyncIterator[dict]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    def open(self) -> TritonSequence:
        """Make the channel and the (lazily started) gRPC stream; call before iterating `replies()`."""
        if self._client is None:
            self._client = self.conn.aio_client()
            headers = {**self.conn.headers(), SESSION_KEY_HEADER: self.session_key}
            self._replies = self._client.stream_infer(self._requests(), headers=headers)
        return self

    async def _put(self, samples: np.ndarray, end: bool) -> None:
        if self._dead:
            raise UpstreamError("the sequence has failed", refused=False)
        self.open()
        rid = str(self._sent)
        self._seconds[rid] = samples.size / SAMPLE_RATE
        request = {"model_name": self.options.model, "request_id": rid, "sequence_id": self.sequence_id,
                   "sequence_start": self._sent == 0, "sequence_end": end,
                   "inputs": infer_inputs(OrchestratorInputs(audio_int16=samples[None]))}
        if self._sent == 0 and (params := self.options.start_parameters()):
            request["parameters"] = params
        self._sent += 1
        await self._queue.put(request)

    async def send(self, samples: np.ndarray) -> None:
        """Queue audio (int16 samples); full pieces go to Triton."""
        for piece in self._buffer.push(samples):
            await self._put(piece, end=False)

    async def finish(self) -> bool:
        """Send END with the audio still held; False when the sequence never started (nothing to end)."""
        if self._ended:
            return self.started
        self._ended = True
        rest = self._buffer.rest()
        if not self.started and rest.size == 0:
            return False
        await self._put(rest, end=True)
        await self._queue.put(None)  # the request stream is complete
        return True

    def abort(self) -> None:
        """The sequence failed: nothing more is queued, a sender waiting on the full queue is let go, and the
        request stream is completed so that the server closes the gRPC stream itself."""
        self._dead = True
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    def discard_pending(self) -> None:
        """Drop audio not yet sent (OpenAI's input_audio_buffer.clear)."""
        self._buffer.clear()

    async def replies(self) -> AsyncIterator[Reply]:
        """Every reply in order until the END's; UpstreamError when Triton refuses or goes away. The stream is
        left to end by itself after the last reply (cancelling it then can crash Triton 2.51)."""
        if self._replies is None:
            return
        try:
            async for result, error in self._replies:
                if error is not None:
                    text = str(error.message() if hasattr(error, "message") else error)
                    # the sequence id is the gateway's secret: never in what the client is told
                    raise UpstreamError(text.replace(str(self.sequence_id), "<this session>"), refused=True)
                out = OrchestratorOutputs.from_lookup(result.as_numpy)
                segs, interim, transcript = (json.loads(x.reshape(-1)[0])
                                             for x in (out.segments, out.interim, out.transcript))
                seconds = self._seconds.pop(result.get_response().id, 0.0)
                self.seconds_answered += seconds
                self._answered += 1
                yield Reply(segs, interim, transcript, out.speaker_activity[0], seconds)
                if self._ended and self._answered == self._sent:
                    break
        except UpstreamError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken channel / dead server is one error
            raise UpstreamError(_grpc_message(exc), refused=False) from None

    async def close(self) -> None:
        """Release the channel. A stream whose requests are complete (END sent, or aborted) is left to the server
        to close (bounded wait); only a stream still open for requests is cancelled (the gateway is stopping)."""
        if self._client is None:
            return
        if self._replies is not None and not (self._ended and self._answered == self._sent):
            if self._ended or self._dead:
                try:
                    await asyncio.wait_for(self._drain(), CLOSE_WAIT_S)
                except (asyncio.TimeoutError, TimeoutError):
                    self._replies.cancel()
            else:
                self._replies.cancel()
        try:
            await self._client.close()
        except Exception:  # noqa: BLE001 - closing a broken channel must not hide the real error
            pass
        self._client = None

    async def _drain(self) -> None:
        try:
            async for _ in self._replies:
                pass
        except Exception:  # noqa: BLE001 - the refusals of the aborted requests, or a dead server
            pass


def _grpc_message(exc: BaseException) -> str:
    details = getattr(exc, "details", None)
    text = details() if callable(details) else str(exc)
    return f"Triton is unreachable or went away: {' '.join(str(text).split())[:300]}"

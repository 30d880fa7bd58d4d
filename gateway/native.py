"""The native protocol (gateway.protocol) for one connection: client frames -> one Triton sequence -> events.

The connection owns its sequence: a fresh random id and key, ended (END sent) when the client sends `end`, goes
idle, or vanishes; a vanished client's sequence is ended at once, not left to the server's idle timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging

import numpy as np

from client.stream import Connection
from gateway.limits import Closed, Pacer, SessionLimits, Transport
from gateway.protocol import (
    Close,
    End,
    ErrorCode,
    ProtocolError,
    Start,
    activity_event,
    end_event,
    error_event,
    final_event,
    interim_event,
    parse_client_text,
    pcm16_samples,
)
from gateway.upstream import Reply, SequenceOptions, TritonSequence, UpstreamError

log = logging.getLogger("gateway")
ACTIVITY_DECIMALS = 3


def relabel(segments: list[dict], session_id: str) -> list[dict]:
    """The server names sessions after their sequence id, which stays the gateway's secret: the client's label."""
    return [{**s, "session_id": session_id} for s in segments]


async def finish_and_wait(seq: TritonSequence, writer: asyncio.Task | None, timeout: float) -> UpstreamError | None:
    """END the sequence and wait (bounded) until its writer has handled the END reply; the failure, if any."""
    try:
        await asyncio.wait_for(seq.finish(), timeout)
        if writer is not None:
            await asyncio.wait_for(asyncio.shield(writer), timeout)
    except (asyncio.TimeoutError, TimeoutError):
        return UpstreamError(f"no reply from Triton within {timeout:g} s", refused=False)
    except UpstreamError as exc:
        return exc
    return None


def failure_event(exc: UpstreamError) -> tuple[dict, Close]:
    """The error event and close code for a sequence Triton refused or lost."""
    if exc.full:
        return error_event(ErrorCode.SERVER_FULL, str(exc)), Close.TRY_AGAIN
    code = ErrorCode.UPSTREAM_ERROR if exc.refused else ErrorCode.UPSTREAM_UNAVAILABLE
    return error_event(code, str(exc)), Close.UPSTREAM


class NativeSession:
    def __init__(self, transport: Transport, conn: Connection, limits: SessionLimits) -> None:
        self.t = transport
        self.conn = conn
        self.limits = limits
        self.start = Start()
        self.got_start = False
        self.seq: TritonSequence | None = None
        self.writer: asyncio.Task | None = None
        self.reader: asyncio.Task | None = None
        self.failure: UpstreamError | None = None
        self.gone = False
        self.transcript: list[dict] = []
        self.last_interim: list[dict] = []
        self.pacer = Pacer(limits.realtime_factor, limits.burst_s)

    async def send(self, event: dict) -> None:
        if self.gone:
            return
        try:
            await self.t.send(json.dumps(event))
        except Closed:
            self.gone = True

    async def run(self) -> None:
        self.reader = asyncio.create_task(self._read())
        try:
            outcome = await self.reader
        except asyncio.CancelledError:
            if self.failure is None:  # the gateway itself is stopping
                await self._abandon()
                raise
            outcome = "failed"
        except UpstreamError:  # the writer saw it first and recorded it
            outcome = "failed"
        if outcome == "gone":
            await self._release()
            return
        if self.failure is None and self.seq is not None:
            failed = await finish_and_wait(self.seq, self.writer, self.limits.drain_timeout_s)
            self.failure = self.failure or failed
        if self.failure is not None:
            event, code = failure_event(self.failure)
            await self.send(event)
            await self._abandon()
            await self.t.close(code, event["code"])
            return
        seconds = self.seq.seconds_answered if self.seq else 0.0
        if self.seq is not None:
            await self.seq.close()
        await self.send(end_event(self.transcript, seconds))
        await self.t.close(Close.POLICY if outcome == "idle" else Close.NORMAL, outcome)

    async def _read(self) -> str:
        """Client frames until `end` ("end"), the idle timeout ("idle") or the client leaving ("gone")."""
        while True:
            try:
                frame = await asyncio.wait_for(self.t.recv(), self.limits.idle_timeout_s)
            except (asyncio.TimeoutError, TimeoutError):
                await self.send(error_event(ErrorCode.IDLE_TIMEOUT, f"no frame for {self.limits.idle_timeout_s:g} "
                                                                    "s: ending the session"))
                return "idle"
            except Closed:
                self.gone = True
                return "gone"
            try:
                if isinstance(frame, str):
                    event = parse_client_text(frame)
                    if isinstance(event, End):
                        return "end"
                    self._take_start(event)
                else:
                    await self._take_audio(frame)
            except ProtocolError as exc:
                await self.send(error_event(exc.code, str(exc)))

    def _take_start(self, start: Start) -> None:
        if self.got_start or self.seq is not None:
            raise ProtocolError(ErrorCode.LATE_START, "start must come once, before any audio; ignored")
        self.start, self.got_start = start, True

    async def _take_audio(self, frame: bytes) -> None:
        n = pcm16_samples(frame, self.limits.max_frame_bytes)
        if n == 0:
            return
        wait = self.pacer.delay(n)
        if wait > 0:
            await asyncio.sleep(wait)
        if self.seq is None:
            options = SequenceOptions(self.start.model, self.start.timing or "audio", self.start.max_speakers,
                                      self.start.session_id)
            self.seq = TritonSequence(self.conn, options, self.limits.piece, self.limits.max_pending).open()
            self.writer = asyncio.create_task(self._write())
        await self.seq.send(np.frombuffer(frame, dtype="<i2").astype(np.int16))

    async def _write(self) -> None:
        try:
            async for reply in self.seq.replies():
                await self._emit(reply)
        except UpstreamError as exc:
            self.failure = exc
            self.seq.abort()
            log.warning("session %s: %s", self.start.session_id, exc)
            if self.reader is not None and not self.reader.done():
                self.reader.cancel()

    async def _emit(self, reply: Reply) -> None:
        label = self.start.session_id
        if self.seq.options.timing == "nemo":
            self.transcript = relabel(reply.transcript, label)
            if self.transcript != self.last_interim:
                self.last_interim = self.transcript
                await self.send(interim_event(self.transcript))
        else:
            for seg in relabel(reply.segments, label):
                await self.send(final_event(seg))
            interim = relabel(reply.interim, label)
            if interim != self.last_interim:
                self.last_interim = interim
                await self.send(interim_event(interim))
            if reply.transcript:
                self.transcript = relabel(reply.transcript, label)
        if reply.activity.size:
            await self.send(activity_event(np.round(reply.activity.astype(np.float64), ACTIVITY_DECIMALS).tolist()))

    async def _wait_writer(self) -> None:
        if self.writer is not None:
            try:
                await self.writer
            except asyncio.CancelledError:
                pass

    async def _release(self) -> None:
        """The client vanished: END now and wait for its reply (bounded), so the server frees the state at once."""
        if self.seq is None:
            return
        try:
            if self.failure is None and (failed := await finish_and_wait(self.seq, self.writer,
                                                                         self.limits.drain_timeout_s)):
                log.warning("session %s (client gone): %s", self.start.session_id, failed)
        finally:
            await self._abandon()

    async def _abandon(self) -> None:
        if self.writer is not None and not self.writer.done():
            self.writer.cancel()
            await self._wait_writer()
        if self.seq is not None:
            await self.seq.close()


async def serve_native(transport: Transport, conn: Connection, limits: SessionLimits) -> None:
    await NativeSession(transport, conn, limits).run()

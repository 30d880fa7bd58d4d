"""OpenAI-Realtime-compatible transcription mode (`/v1/realtime`), so an existing Realtime transcription client
works unchanged: the events and fields it sends and reads are OpenAI's (see docs/gateway.md for the references
they were checked against).

Client events: `session.update` (GA) or `transcription_session.update` (beta; chosen by `?intent=transcription`,
which also names the server's session events `transcription_session.*`), `input_audio_buffer.append` (base64 PCM16
mono at 24 kHz, resampled here to 16 kHz), `input_audio_buffer.commit` (ends the current Triton sequence: every
utterance becomes final; more audio starts a new one, its times continuing), `input_audio_buffer.clear` (drops
audio not yet sent). Server events: `session.created` / `.updated`, and per utterance (an item):
`input_audio_buffer.committed` when it starts, `conversation.item.input_audio_transcription.delta` as its words
grow, `...segment` (text, speaker, start, end) and `...completed` (transcript, usage) when it is final; `error`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
from urllib.parse import parse_qs

import numpy as np

from client.stream import Connection
from gateway.limits import Closed, Pacer, SessionLimits, Transport
from gateway.native import failure_event, finish_and_wait, log
from gateway.protocol import Close
from gateway.resample import Resampler, to_int16
from gateway.upstream import Reply, SequenceOptions, TritonSequence, UpstreamError
from mtasr.spec import ORCHESTRATOR

INPUT_RATE = 24000  # OpenAI Realtime's PCM16 rate
TRANSCRIPTION = "conversation.item.input_audio_transcription"
DELTA, SEGMENT, COMPLETED = f"{TRANSCRIPTION}.delta", f"{TRANSCRIPTION}.segment", f"{TRANSCRIPTION}.completed"
COMMITTED = "input_audio_buffer.committed"
MODEL_NAME = "mtasr-multitalker"  # what the session reports as its transcription model


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


class RealtimeSession:
    def __init__(self, transport: Transport, conn: Connection, limits: SessionLimits, query: str = "") -> None:
        self.t = transport
        self.conn = conn
        self.limits = limits
        self.beta = parse_qs(query).get("intent") == ["transcription"]
        self.prefix = "transcription_session" if self.beta else "session"
        self.session = self._default_session()
        self.seq: TritonSequence | None = None
        self.writer: asyncio.Task | None = None
        self.reader: asyncio.Task | None = None
        self.failure: UpstreamError | None = None
        self.gone = False
        self.offset = 0.0  # audio seconds of the sequences already committed
        self.items: dict[str, dict] = {}  # speaker -> its open item: {"id", "sent"}
        self.previous_item: str | None = None
        self.resampler = Resampler(INPUT_RATE, 16000)
        self.pacer = Pacer(limits.realtime_factor, limits.burst_s)

    def _default_session(self) -> dict:
        common = {"id": _id("sess"), "object": "realtime.transcription_session"}
        if self.beta:
            return {**common, "input_audio_format": "pcm16",
                    "input_audio_transcription": {"model": MODEL_NAME, "language": None, "prompt": ""},
                    "turn_detection": None, "input_audio_noise_reduction": None, "include": []}
        return {**common, "type": "transcription",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": INPUT_RATE},
                                    "transcription": {"model": MODEL_NAME, "language": None, "prompt": ""},
                                    "turn_detection": None, "noise_reduction": None}},
                "include": []}

    async def send(self, event: dict) -> None:
        if self.gone:
            return
        try:
            await self.t.send(json.dumps({"event_id": _id("event"), **event}))
        except Closed:
            self.gone = True

    async def error(self, code: str, message: str, client_event: str | None = None,
                    kind: str = "invalid_request_error") -> None:
        await self.send({"type": "error", "error": {"type": kind, "code": code, "message": message, "param": None,
                                                    "event_id": client_event}})

    async def run(self) -> None:
        await self.send({"type": f"{self.prefix}.created", "session": self.session})
        self.reader = asyncio.create_task(self._read())
        try:
            outcome = await self.reader
        except asyncio.CancelledError:
            if self.failure is None:
                await self._abandon()
                raise
            outcome = "failed"
        except UpstreamError:
            outcome = "failed"
        if self.failure is None and self.seq is not None:
            self.failure = await finish_and_wait(self.seq, self.writer, self.limits.drain_timeout_s)
        if self.failure is not None:
            event, code = failure_event(self.failure)
            await self.error(event["code"], event["message"], kind="server_error")
            await self._abandon()
            await self.t.close(code, event["code"])
            return
        await self._abandon()
        if outcome == "idle":
            await self.t.close(Close.POLICY, "idle")

    async def _read(self) -> str:
        while True:
            try:
                frame = await asyncio.wait_for(self.t.recv(), self.limits.idle_timeout_s)
            except (asyncio.TimeoutError, TimeoutError):
                await self.error("idle_timeout", f"no event for {self.limits.idle_timeout_s:g} s: ending the "
                                                 "session")
                return "idle"
            except Closed:
                self.gone = True
                return "gone"
            if not isinstance(frame, str) or len(frame) > 2 * self.limits.max_frame_bytes:
                await self.error("invalid_event", "send JSON text events (audio as base64 in "
                                                  "input_audio_buffer.append)")
                continue
            try:
                event = json.loads(frame)
                kind = event["type"]
            except (ValueError, KeyError, TypeError):
                await self.error("invalid_event", "events are JSON objects with a 'type'")
                continue
            handler = {f"{p}.update": self._update for p in ("session", "transcription_session")}.get(kind) or {
                "input_audio_buffer.append": self._append, "input_audio_buffer.commit": self._commit,
                "input_audio_buffer.clear": self._clear}.get(kind)
            if handler is None:
                await self.error("unsupported_event", f"{kind!r} is not supported by this transcription server",
                                 event.get("event_id"))
                continue
            await handler(event)

    async def _update(self, event: dict) -> None:
        given = event.get("session")
        if not isinstance(given, dict):
            await self.error("invalid_value", "'session' must be an object", event.get("event_id"))
            return
        fmt = given.get("input_audio_format", "pcm16") if self.beta or "input_audio_format" in given else None
        audio_fmt = (((given.get("audio") or {}).get("input") or {}).get("format") or {})
        if (fmt not in (None, "pcm16") or audio_fmt.get("type", "audio/pcm") != "audio/pcm"
                or audio_fmt.get("rate", INPUT_RATE) != INPUT_RATE):
            await self.error("unsupported_audio_format", f"only PCM16 mono at {INPUT_RATE} Hz is accepted",
                             event.get("event_id"))
            return
        self.session = _merge(self.session, {k: v for k, v in given.items() if k not in ("id", "object")})
        await self.send({"type": f"{self.prefix}.updated", "session": self.session})

    async def _append(self, event: dict) -> None:
        try:
            raw = base64.b64decode(event.get("audio", ""), validate=True)
        except (binascii.Error, ValueError, TypeError):
            await self.error("invalid_value", "'audio' must be base64 PCM16", event.get("event_id"))
            return
        if len(raw) % 2 or len(raw) > self.limits.max_frame_bytes:
            await self.error("invalid_value", f"'audio' must be whole PCM16 samples, at most "
                                              f"{self.limits.max_frame_bytes} bytes", event.get("event_id"))
            return
        if not raw:
            return
        pcm = to_int16(self.resampler(np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0))
        wait = self.pacer.delay(pcm.size)
        if wait > 0:
            await asyncio.sleep(wait)
        if self.seq is None:
            self.seq = TritonSequence(self.conn, SequenceOptions(ORCHESTRATOR, "audio"), self.limits.piece,
                                      self.limits.max_pending).open()
            self.writer = asyncio.create_task(self._write(self.seq))
        if pcm.size:
            await self.seq.send(pcm)

    async def _commit(self, event: dict) -> None:
        if self.seq is None:
            await self.error("input_audio_buffer_commit_empty", "no audio to commit", event.get("event_id"))
            return
        seq, self.seq = self.seq, None
        failed = await finish_and_wait(seq, self.writer, self.limits.drain_timeout_s)
        await seq.close()
        if failed is not None:
            self.failure = failed
            raise failed
        self.offset += seq.seconds_answered
        self.items.clear()

    async def _clear(self, event: dict) -> None:
        if self.seq is not None:
            self.seq.discard_pending()
        await self.send({"type": "input_audio_buffer.cleared"})

    async def _write(self, seq: TritonSequence) -> None:
        try:
            async for reply in seq.replies():
                await self._emit(reply)
        except UpstreamError as exc:
            self.failure = exc
            seq.abort()
            log.warning("realtime session: %s", exc)
            if self.reader is not None and not self.reader.done():
                self.reader.cancel()

    async def _open(self, speaker: str) -> dict:
        item = self.items.get(speaker)
        if item is None:
            item = self.items[speaker] = {"id": _id("item"), "sent": ""}
            await self.send({"type": COMMITTED, "previous_item_id": self.previous_item, "item_id": item["id"]})
            self.previous_item = item["id"]
        return item

    async def _delta(self, item: dict, words: str) -> None:
        if words.startswith(item["sent"]) and len(words) > len(item["sent"]):
            await self.send({"type": DELTA, "item_id": item["id"], "content_index": 0,
                             "delta": words[len(item["sent"]):]})
            item["sent"] = words

    async def _emit(self, reply: Reply) -> None:
        for seg in reply.segments:
            item = await self._open(seg["speaker"])
            await self._delta(item, seg["words"])
            start, end = seg["start_time"] + self.offset, seg["end_time"] + self.offset
            await self.send({"type": SEGMENT, "item_id": item["id"], "content_index": 0, "text": seg["words"],
                             "id": _id("seg"), "speaker": seg["speaker"], "start": round(start, 3),
                             "end": round(end, 3)})
            await self.send({"type": COMPLETED, "item_id": item["id"], "content_index": 0,
                             "transcript": seg["words"],
                             "usage": {"type": "duration", "seconds": round(end - start, 3)}})
            del self.items[seg["speaker"]]
        for seg in reply.interim:
            if seg.get("words"):
                await self._delta(await self._open(seg["speaker"]), seg["words"])

    async def _abandon(self) -> None:
        """End whatever sequence is open (a vanished client's at once), then release it."""
        if self.seq is not None and self.failure is None and not self.seq.ended:
            await finish_and_wait(self.seq, self.writer, self.limits.drain_timeout_s)
        if self.writer is not None and not self.writer.done():
            self.writer.cancel()
            try:
                await self.writer
            except asyncio.CancelledError:
                pass
        if self.seq is not None:
            await self.seq.close()


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


async def serve_realtime(transport: Transport, conn: Connection, limits: SessionLimits, query: str = "") -> None:
    await RealtimeSession(transport, conn, limits, query).run()

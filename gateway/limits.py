"""What one connection may take, and the transport the session handlers talk through."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from mtasr.spec import SAMPLE_RATE


@dataclass(frozen=True)
class SessionLimits:
    """Per-connection limits and the sequence's piece size (all gateway flags; defaults are `make serve`'s)."""

    piece_ms: float = 160.0  # audio per Triton request (the client's frames are regrouped)
    max_frame_bytes: int = 256 * 1024  # one binary frame (8.2 s of PCM16 at 16 kHz); larger frames are dropped
    realtime_factor: float = 2.0  # audio may arrive at most this many times faster than real time ...
    burst_s: float = 4.0  # ... after a first burst of this much audio
    idle_timeout_s: float = 4.0  # below the server's idle timeout (5 s): the sequence is ended before it expires
    drain_timeout_s: float = 30.0  # a vanished client's sequence: wait this long for the END reply
    max_pending: int = 16  # pieces queued towards Triton before the client's socket stops being read

    @property
    def piece(self) -> int:
        return max(1, int(round(self.piece_ms * SAMPLE_RATE / 1000)))


class Pacer:
    """Holds a connection to `factor` x real time after `burst_s` of audio: `delay(n)` is how long to wait before
    taking the next `n` samples (the socket is not read meanwhile, so a fast sender is slowed, not refused)."""

    def __init__(self, factor: float, burst_s: float, clock=time.monotonic) -> None:
        self.factor, self.burst, self.clock = factor, burst_s * SAMPLE_RATE, clock
        self.t0: float | None = None
        self.samples = 0

    def delay(self, n: int) -> float:
        now = self.clock()
        if self.t0 is None:
            self.t0 = now
        self.samples += n
        due = self.t0 + max(0.0, self.samples - self.burst) / (self.factor * SAMPLE_RATE)
        return max(0.0, due - now)


class Closed(Exception):
    """The client's side of the connection is gone."""


class Transport(Protocol):
    """One WebSocket connection as the session handlers see it (the `websockets` server adapts to it)."""

    async def recv(self) -> str | bytes: ...  # Closed when the client is gone

    async def send(self, text: str) -> None: ...  # Closed when the client is gone

    async def close(self, code: int, reason: str) -> None: ...

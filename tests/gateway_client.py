"""Test helpers for the WebSocket gateway: a native-protocol client, PCM16 conversion, the served stack."""

from __future__ import annotations

import asyncio
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import websockets

from client.server import SERVE_VENV, TritonServer
from gateway.process import GatewayProcess
from model_repository.build import build

DATA = Path(__file__).resolve().parent / "data"


def pcm16(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype("<i2")


def as_float(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) / 32768.0


@dataclass
class WsResult:
    events: list[dict] = field(default_factory=list)
    close_code: int | None = None
    subprotocol: str | None = None

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    @property
    def end(self) -> dict:
        ends = self.of("end")
        assert len(ends) == 1, self.events[-5:]
        return ends[0]

    @property
    def transcript(self) -> list[dict]:
        return self.end["transcript"]


async def native_session(url: str, pcm: np.ndarray, start: dict | None = None, frame: int = 1600,
                         realtime: float | None = None, inject: dict[int, str | bytes] | None = None,
                         send_end: bool = True, **connect) -> WsResult:
    """One native session: optional start event, `pcm` in `frame`-sample binary frames (at `realtime` x real time
    when given), frames from `inject` sent before frame i, then end; every event until the server closes."""
    out = WsResult()
    async with websockets.connect(url, max_size=None, **connect) as ws:
        out.subprotocol = ws.subprotocol

        async def receive():
            try:
                async for message in ws:
                    out.events.append(json.loads(message))
            except websockets.ConnectionClosed:  # a close other than 1000: its code is the result
                pass

        receiver = asyncio.create_task(receive())
        if start is not None:
            await ws.send(json.dumps({"type": "start", **start}))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            for k, i in enumerate(range(0, len(pcm), frame)):
                if inject and k in inject:
                    await ws.send(inject[k])
                if realtime:
                    await asyncio.sleep(max(0.0, t0 + i / 16000 / realtime - loop.time()))
                await ws.send(pcm[i: i + frame].tobytes())
            if send_end:
                await ws.send(json.dumps({"type": "end"}))
        except websockets.ConnectionClosed:  # the server closed first (an error): what it sent is the result
            pass
        await asyncio.wait_for(receiver, 300)
    out.close_code = ws.close_code
    return out


def run_native(url: str, pcm: np.ndarray, **kw) -> WsResult:
    return asyncio.run(native_session(url, pcm, **kw))


def serve_python() -> str:
    """The gateway runs from .venv-serve as `make serve` runs it (the tests' interpreter when there is none)."""
    import sys

    py = SERVE_VENV / "bin" / "python"
    return str(py) if py.exists() else sys.executable


@contextmanager
def served_stack(graphs: Path, work: Path, gateway_args: tuple[str, ...] = (), max_sessions: int = 32, **server):
    """A tritonserver on `graphs` ([70,13], kernel mode) and a gateway in front of it."""
    # admission by count only: these tests are about the gateway, not the server's capacity on a busy machine
    repo = build(graphs, "cpu", work / "repo", preset="70_13", speaker_mode="kernel", admission_headroom=0.0,
                 max_sessions=max_sessions)
    with TritonServer(repo, log_path=work / "server.log", **server) as triton, \
            GatewayProcess(triton.grpc_url, args=gateway_args, python=serve_python(),
                           log_path=work / "gateway.log") as gw:
        yield triton, gw

"""CPU per session-second through the gateway, per WebSocket framework: the measurement that chose `websockets`.

    python -m gateway.bench --graphs artifacts/bench_tiny [--sessions 32] [--seconds 10] [--frameworks a,b]

Starts a tritonserver on the graphs ([70,13], kernel mode), then for each framework a gateway process in front of it
(`websockets`: `python -m gateway`; `starlette`: the same session handler as a Starlette app on uvicorn, which
needs the `gateway-bench` extra), and drives `--sessions` real-time sessions through it with the load generator
(`client.loadgen.run_ws_sessions`). Prints one JSON object per framework and a last line
`gateway-bench: <framework>=<gateway CPU ms per session-second> ... tritonserver=<...> sessions=N realtime=...`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from client.stream import Connection
from gateway.limits import Closed, SessionLimits

FRAMEWORKS = ("websockets", "starlette")


class _StarletteTransport:
    def __init__(self, ws) -> None:
        self.ws = ws

    async def recv(self) -> str | bytes:
        from starlette.websockets import WebSocketDisconnect

        try:
            msg = await self.ws.receive()
        except WebSocketDisconnect:
            raise Closed from None
        if msg["type"] == "websocket.disconnect":
            raise Closed
        return msg["bytes"] if msg.get("bytes") is not None else msg.get("text", "")

    async def send(self, text: str) -> None:
        try:
            await self.ws.send_text(text)
        except Exception:  # noqa: BLE001 - a closed socket
            raise Closed from None

    async def close(self, code: int, reason: str) -> None:
        try:
            await self.ws.close(int(code), reason)
        except Exception:  # noqa: BLE001
            pass


def starlette_app(triton: str, limits: SessionLimits):
    """The native protocol as a Starlette app (for the comparison only: no keys, origins or page)."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    from gateway.native import serve_native

    conn = Connection(triton)

    async def endpoint(ws):
        await ws.accept()
        await serve_native(_StarletteTransport(ws), conn, limits)

    return Starlette(routes=[WebSocketRoute("/v1/stream", endpoint)])


def serve_starlette(triton: str, port: int) -> None:
    import uvicorn

    app = starlette_app(triton, SessionLimits(realtime_factor=1000.0))

    async def health(scope, receive, send):  # /healthz for GatewayProcess.ready, the rest to Starlette
        if scope["type"] == "http" and scope["path"] == "/healthz":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"ok\n"})
            return
        await app(scope, receive, send)

    uvicorn.run(health, host="127.0.0.1", port=port, log_level="warning", ws_max_size=512 * 1024,
                ws_per_message_deflate=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gateway.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--graphs", type=Path, help="exported graphs (python -m export --random-init tiny ...)")
    ap.add_argument("--sessions", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    ap.add_argument("--instances", type=int, default=1, help="multitalker model instances (Triton instance group)")
    ap.add_argument("--serve-starlette", nargs=2, metavar=("TRITON", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_starlette:
        serve_starlette(args.serve_starlette[0], int(args.serve_starlette[1]))
        return 0
    if args.graphs is None:
        ap.error("--graphs is required")
    from client.loadgen import make_audios, run_ws_sessions
    from client.server import TritonServer
    from client.stream import stream_audio
    from gateway.process import GatewayProcess
    from model_repository.build import build

    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    repo = build(args.graphs, "cpu", work / "repo", preset="70_13", speaker_mode="kernel",
                 max_sessions=max(32, args.sessions), admission_headroom=0.0,  # count only: measure the gateway
                 instances=args.instances)
    audios = make_audios(args.seconds, 160.0)
    figures: dict[str, float] = {}
    ok = True
    for fw in args.frameworks.split(","):
        if fw not in FRAMEWORKS:
            ap.error(f"unknown framework {fw!r}; known: {FRAMEWORKS}")
        with TritonServer(repo, log_path=work / f"server-{fw}.log") as triton:  # a fresh server per framework
            stream_audio(triton.grpc_url, audios[0][:48000])  # the server's first calls allocate
            gw = GatewayProcess(triton.grpc_url, log_path=work / f"{fw}.log",
                                args=("--max-connections-per-client", str(args.sessions + 4),
                                      "--realtime-factor", "1000"))
            if fw == "starlette":
                gw.command = lambda gw=gw: [sys.executable, "-m", "gateway.bench", "--serve-starlette",
                                            gw.triton_url, str(gw.port)]
            with gw:
                result = run_ws_sessions(gw.url("/v1/stream"), args.sessions, audios,
                                         cpu_pids={"gateway": gw.pid, "tritonserver": triton.pid})
        result["framework"] = fw
        print(json.dumps(result))
        figures[fw] = result["cpu_ms_per_session_second"]["gateway"]
        figures[f"tritonserver_with_{fw}"] = result["cpu_ms_per_session_second"]["tritonserver"]
        figures[f"p99_ms_{fw}"] = round(result["p99_ms"], 1)
        ok &= result["realtime"]
    print("gateway-bench: " + " ".join(f"{k}={v}" for k, v in figures.items()) + f" sessions={args.sessions} "
          f"seconds={args.seconds:g} realtime={'yes' if ok else 'no'} (CPU ms per session-second)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

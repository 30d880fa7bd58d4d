"""`python -m gateway`: the WebSocket gateway in the foreground (see gateway.server)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from client.stream import Connection
from gateway.limits import SessionLimits
from gateway.server import LOOPBACK, GatewaySettings, run

MIN_KEY_CHARS = 16


def read_key(path: Path | None, env: str = "MTASR_API_KEY") -> str | None:
    """The API key from a file (first line) or the environment; None when neither is set."""
    if path is not None:
        key = path.read_text().strip()
    else:
        key = os.environ.get(env, "").strip()
    if not key:
        return None
    if len(key) < MIN_KEY_CHARS or any(c.isspace() or c in ',;"' for c in key):
        raise SystemExit(f"python -m gateway: error: the API key must be at least {MIN_KEY_CHARS} characters with "
                         "no spaces, commas, semicolons or quotes (it may travel as a WebSocket subprotocol token)")
    return key


def parser() -> argparse.ArgumentParser:
    d = SessionLimits()
    ap = argparse.ArgumentParser(prog="python -m gateway", description=__doc__.split(":", 1)[1].strip())
    ap.add_argument("--triton", default="127.0.0.1:8001", help="Triton gRPC address (default %(default)s)")
    ap.add_argument("--triton-tls-ca", type=Path, help="root certificate for Triton's gRPC TLS")
    ap.add_argument("--address", default=LOOPBACK, help="address to bind (default %(default)s: this machine only)")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--api-key-file", type=Path,
                    help="file holding the key clients must present (default: env MTASR_API_KEY; none: open); the "
                         "gateway also sends it to Triton, as for gRPC clients")
    ap.add_argument("--allow-origin", action="append", default=[],
                    help="a browser origin allowed besides the gateway's own (repeat; '*' allows any)")
    ap.add_argument("--tls-cert", type=Path, help="PEM certificate: serve wss:// and https:// (with --tls-key)")
    ap.add_argument("--tls-key", type=Path)
    ap.add_argument("--max-connections", type=int, default=GatewaySettings.max_connections)
    ap.add_argument("--max-connections-per-client", type=int, default=GatewaySettings.max_connections_per_client)
    ap.add_argument("--client-ip-header", help="take the client's address from this header (only behind a trusted "
                                               "proxy that sets it, e.g. X-Real-IP)")
    ap.add_argument("--max-frame-bytes", type=int, default=d.max_frame_bytes)
    ap.add_argument("--realtime-factor", type=float, default=d.realtime_factor,
                    help="audio may arrive at most this many times faster than real time (after --burst-s)")
    ap.add_argument("--burst-s", type=float, default=d.burst_s)
    ap.add_argument("--idle-timeout-s", type=float, default=d.idle_timeout_s,
                    help="end a session after this long without a frame (keep it below the server's idle timeout)")
    ap.add_argument("--piece-ms", type=float, default=d.piece_ms, help="audio per Triton request")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        ap.error("--tls-cert and --tls-key go together")
    if args.idle_timeout_s <= 0 or args.realtime_factor <= 0 or args.max_frame_bytes < 2:
        ap.error("--idle-timeout-s, --realtime-factor and --max-frame-bytes must be positive")
    logging.basicConfig(level=logging.INFO, format="gateway: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # not a line per connection and health check
    key = read_key(args.api_key_file)
    settings = GatewaySettings(
        triton=Connection(args.triton, api_key=key, tls_ca=args.triton_tls_ca), address=args.address,
        port=args.port, api_key=key, allowed_origins=tuple(args.allow_origin), max_connections=args.max_connections,
        max_connections_per_client=args.max_connections_per_client, client_ip_header=args.client_ip_header,
        tls=(args.tls_cert, args.tls_key) if args.tls_cert else None,
        limits=SessionLimits(piece_ms=args.piece_ms, max_frame_bytes=args.max_frame_bytes,
                             realtime_factor=args.realtime_factor, burst_s=args.burst_s,
                             idle_timeout_s=args.idle_timeout_s))
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        asyncio.run(run(settings))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"python -m gateway: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

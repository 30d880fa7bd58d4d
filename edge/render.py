"""Fill the edge template (`deploy/edge/mtasr-edge.conf.template`) the way nginx's envsubst does.

    python -m edge.render --upstream 10.0.0.5:8001 --upstream 10.0.0.6:8001 --cert c.pem --key k.pem > edge.conf

The same template is rendered here for the local cluster test and by nginx's image itself (its
/etc/nginx/templates step) in docker compose and Kubernetes, from the environment variables `EdgeSettings`
names.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "edge" / "mtasr-edge.conf.template"
_PLACEHOLDER = re.compile(r"\$\{(MTASR_EDGE_[A-Z_]+)\}")


@dataclass(frozen=True)
class EdgeSettings:
    """The template's variables; field `x` is the environment variable `MTASR_EDGE_X`."""

    upstreams: str  # nginx `server ...;` lines, one per Triton replica
    listen: str = "8443"
    tls_cert: str = "/etc/nginx/tls/tls.crt"
    tls_key: str = "/etc/nginx/tls/tls.key"
    api_key: str = ""  # empty: inference open
    max_conn: int = 32  # concurrent streams/calls per client address
    req_rate: str = "20r/s"  # new streams/calls per client address
    req_burst: int = 64
    max_stream_body: str = "512m"  # a whole streaming session (nginx sums a stream's messages)
    gateways: str = "server 127.0.0.1:8080;"  # nginx `server ...;` lines, one per WebSocket gateway

    def env(self) -> dict[str, str]:
        return {f"MTASR_EDGE_{f.name.upper()}": str(getattr(self, f.name)) for f in fields(self)}


def upstream_lines(addresses: list[str], max_fails: int = 1, fail_timeout_s: int = 5) -> str:
    """`server` lines: a replica that fails once is skipped for `fail_timeout_s`, then tried again."""
    return " ".join(f"server {a} max_fails={max_fails} fail_timeout={fail_timeout_s}s;" for a in addresses)


def render(settings: EdgeSettings, template: Path = TEMPLATE) -> str:
    """The template with every ${MTASR_EDGE_*} replaced (KeyError names one the settings lack)."""
    env = settings.env()
    missing = sorted(template_variables(template) - set(env))
    if missing:
        raise KeyError(f"the edge template uses variables EdgeSettings lacks: {missing}")
    return _PLACEHOLDER.sub(lambda m: env[m.group(1)], template.read_text())


def template_variables(template: Path = TEMPLATE) -> set[str]:
    """The `${MTASR_EDGE_*}` names the template uses."""
    return set(_PLACEHOLDER.findall(template.read_text()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge.render", description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", action="append", required=True, help="host:port of a replica's gRPC endpoint")
    ap.add_argument("--listen", default=EdgeSettings.listen)
    ap.add_argument("--cert", default=EdgeSettings.tls_cert)
    ap.add_argument("--key", default=EdgeSettings.tls_key)
    ap.add_argument("--api-key", default="")
    ap.add_argument("--gateway", action="append", default=[], help="host:port of a WebSocket gateway (repeat)")
    args = ap.parse_args(argv)
    settings = EdgeSettings(upstream_lines(args.upstream), args.listen, args.cert, args.key, args.api_key,
                            **({"gateways": upstream_lines(args.gateway)} if args.gateway else {}))
    sys.stdout.write(render(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())

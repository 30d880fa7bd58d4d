"""What the fault cases share: tiny graphs, tritonservers built and started on demand (free ports, own PIDs,
stopped by PID), the committed samples, solo outputs to compare against, metrics and process probes."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.memory import tree_rss
from client.server import ROOT, TritonServer
from client.stream import stream_audio
from model_repository.build import build
from mtasr.audio import read_audio

DATA = ROOT / "tests" / "data"
SAMPLES = ("two_speakers_overlap", "three_speakers")


class CaseFailure(AssertionError):
    """A case whose behaviour is wrong; the message says what was seen."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CaseFailure(message)


@dataclass
class Harness:
    """Servers and shared inputs for one run of the suite; `close()` stops every server it started."""

    graphs: Path
    work: Path
    full: bool = False  # the whole suite's sizes (`make reliability`), else the fast core's (`make test`)
    figures: dict = field(default_factory=dict)  # what the summary line reports
    sequence_ids: list = field(default_factory=list)  # every id the cases' clients drew (collision count)
    _servers: dict = field(default_factory=dict)
    _stack: ExitStack = field(default_factory=ExitStack)
    _solo: dict = field(default_factory=dict)

    def server(self, name: str = "default", *, max_sessions: int = 32, idle_timeout_s: float = 5.0,
               admission_headroom: float | None = 0.0, graphs: Path | None = None, preset: str | None = None,
               **server_kwargs) -> TritonServer:
        """A running server on a cpu repository built from the graphs (default: the tiny ones) with these limits
        (started once per name). Admission by capacity is off unless `admission_headroom` is given (None: the
        product's default): the other cases test behaviour that must not depend on how busy the machine is."""
        if name not in self._servers:
            repo = build(graphs or self.graphs, "cpu", self.work / f"repo_{name}", preset=preset,
                         max_sessions=max_sessions, idle_timeout_s=idle_timeout_s,
                         admission_headroom=admission_headroom)
            server = TritonServer(repo, log_path=self.work / f"server_{name}.log", **server_kwargs)
            self._servers[name] = self._stack.enter_context(server)
        return self._servers[name]

    def stop_server(self, name: str) -> None:
        server = self._servers.pop(name, None)
        if server is not None:
            server.stop()

    def audio(self, name: str) -> np.ndarray:
        return read_audio(DATA / f"{name}.flac")

    def solo(self, name: str, chunk_ms: float = 160.0) -> list[dict]:
        """The committed sample `name` streamed alone on the default server (cached)."""
        if name not in self._solo:
            result = stream_audio(self.server().grpc_url, self.audio(name), session_id=name, chunk_ms=chunk_ms)
            check(bool(result.seglst), f"{name}: the solo run produced no transcript to compare with")
            self._solo[name] = result.seglst
        return self._solo[name]

    def close(self) -> None:
        self._stack.close()
        self._servers.clear()


def wait_until(predicate, timeout: float, period: float = 0.05) -> float | None:
    """Seconds until `predicate()` held, or None after `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return time.monotonic() - t0
        time.sleep(period)
    return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def rss_mb(pid: int) -> float:
    """Summed VmRSS of `pid` and its descendants, in MB."""
    return tree_rss(pid) / 2**20


def listening(port: int) -> list[str]:
    """Local addresses with a TCP socket listening on `port` (IPv4 and IPv6)."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:
                # /proc writes each 32-bit word of the address in host (little-endian) order
                raw = b"".join(bytes.fromhex(addr[i : i + 8])[::-1] for i in range(0, len(addr), 8))
                ip = ipaddress.ip_address(raw)
                out.append(str(getattr(ip, "ipv4_mapped", None) or ip))
    return out


def cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m <args>` from the repository root (this interpreter), output captured."""
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def spawn(*args: str, **kwargs) -> subprocess.Popen:
    """`python -m <args>` in the background, in its own process group (killed by PID, never by name)."""
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kwargs)


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)

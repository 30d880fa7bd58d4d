"""Run the gateway as a subprocess beside a tritonserver (the launcher, `make serve`, the tests, the bench).

    with GatewayProcess("127.0.0.1:8001") as gw:     # a free port unless given; waits until it answers
        gw.url("/v1/stream")                          # ws://127.0.0.1:PORT/v1/stream

It dies with the process that started it (PR_SET_PDEATHSIG) and is stopped by its own PID only.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    os.setsid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayProcess:
    def __init__(self, triton_url: str, port: int = 0, address: str = "127.0.0.1", args: tuple[str, ...] = (),
                 python: str | Path = sys.executable, log_path: Path | str | None = None,
                 env: dict[str, str] | None = None, tls: bool = False, timeout: float = 30.0) -> None:
        self.triton_url = triton_url
        self.port = port or _free_port()
        self.address = address
        self.args = tuple(args)
        self.python = str(python)
        self.log_path = Path(log_path) if log_path else None
        self.env = env
        self.tls = tls
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1" if self.address in ("0.0.0.0", "::", "") else self.address

    def url(self, path: str = "/", scheme: str | None = None) -> str:
        scheme = scheme or ("wss" if self.tls else "ws")
        return f"{scheme}://{self.host}:{self.port}{path}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        return [self.python, "-m", "gateway", "--triton", self.triton_url, "--address", self.address, "--port",
                str(self.port), *self.args]

    def start(self) -> GatewayProcess:
        env = {**os.environ, **(self.env or {}), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent)
        finally:
            if self.log_path:
                log.close()
        deadline = time.monotonic() + self.timeout
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"gateway not answering after {self.timeout:.0f} s: {self.log_tail()}")
            time.sleep(0.1)
        return self

    def ready(self) -> bool:
        import ssl

        ctx = ssl._create_unverified_context() if self.tls else None  # noqa: S323 - own local test server
        try:
            with urllib.request.urlopen(self.url("/healthz", "https" if self.tls else "http"), timeout=2,
                                        context=ctx) as r:  # noqa: S310
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path and self.log_path.exists() else ""

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

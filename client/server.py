"""Start and stop a local tritonserver (from `.triton/`, Python stubs running in `.venv-serve`).

    with TritonServer("artifacts/repo") as server:      # free ports, waits until ready, stops by PID
        grpc_client = tritonclient.grpc.InferenceServerClient(server.grpc_url)

    python -m client.server --repo artifacts/repo [--http-port 8000 --grpc-port 8001 --metrics-port 8002]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRITON_DIR = ROOT / ".triton"  # docker/install_triton_local.sh
SERVE_VENV = ROOT / ".venv-serve"


def free_ports(n: int) -> list[int]:
    """`n` distinct ports the OS reports free (bound to port 0 together, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def serve_env(venv: Path = SERVE_VENV, triton_dir: Path = TRITON_DIR) -> dict[str, str]:
    """Environment for tritonserver whose Python stubs import numpy / onnxruntime / mtasr from `venv`."""
    probe = "import json, sys, sysconfig; print(json.dumps([sysconfig.get_paths()['purelib'], " \
            "sysconfig.get_config_var('LIBDIR') or '']))"
    purelib, libdir = json.loads(subprocess.check_output([str(venv / "bin" / "python"), "-c", probe], text=True))
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), purelib])
    # The stub must load the libpython of the venv's interpreter, not another 3.x build on the system.
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [str(triton_dir / "lib"), libdir,
                                                         env.get("LD_LIBRARY_PATH", "")] if p)
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONHOME", None)
    return env


class TritonServer:
    """A tritonserver subprocess on `repo`: `with` starts it and waits for readiness, exit stops it by PID."""

    def __init__(self, repo: Path | str, http_port: int = 0, grpc_port: int = 0, metrics_port: int = 0,
                 models: list[str] | None = None, log_path: Path | str | None = None, timeout: float = 180.0,
                 triton_dir: Path = TRITON_DIR, venv: Path = SERVE_VENV, extra_args: tuple[str, ...] = ()) -> None:
        self.repo = Path(repo).resolve()
        wanted = [http_port, grpc_port, metrics_port]
        picked = iter(free_ports(wanted.count(0)))
        self.http_port, self.grpc_port, self.metrics_port = (p or next(picked) for p in wanted)
        self.models = models
        self.log_path = Path(log_path) if log_path else self.repo.with_name(self.repo.name + ".tritonserver.log")
        self.timeout = timeout
        self.triton_dir = Path(triton_dir)
        self.venv = Path(venv)
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        cmd = [str(self.triton_dir / "bin" / "tritonserver"), f"--model-repository={self.repo}",
               f"--backend-directory={self.triton_dir / 'backends'}", f"--http-port={self.http_port}",
               f"--grpc-port={self.grpc_port}", f"--metrics-port={self.metrics_port}", "--log-verbose=0"]
        if self.models is not None:
            cmd += ["--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models)]
        return cmd + list(self.extra_args)

    def start(self) -> TritonServer:
        binary = self.triton_dir / "bin" / "tritonserver"
        if not binary.is_file():
            raise FileNotFoundError(f"{binary} is missing: run `make serve-setup`")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                         env=serve_env(self.venv, self.triton_dir), start_new_session=True)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"tritonserver not ready after {self.timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM (Triton unloads models and exits), SIGKILL after `grace` seconds; only our own PID."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m client.server", description="Run tritonserver in the foreground.")
    ap.add_argument("--repo", type=Path, required=True, help="model repository (model_repository.build)")
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--metrics-port", type=int, default=8002)
    ap.add_argument("--models", nargs="*", help="load only these models (explicit model control)")
    ap.add_argument("--log", type=Path, help="server log file (default: <repo>.tritonserver.log)")
    args = ap.parse_args(argv)
    server = TritonServer(args.repo, args.http_port, args.grpc_port, args.metrics_port, args.models, args.log)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill PID` stops the server like Ctrl-C
    with server:
        print(f"tritonserver ready (pid {server.pid}): http {server.http_url}  grpc {server.grpc_url}  "
              f"log {server.log_path}; Ctrl-C stops it", flush=True)
        try:
            server.proc.wait()
        except KeyboardInterrupt:
            pass
    print(f"tritonserver stopped (exit {server.proc.returncode})")
    return 0 if server.proc.returncode in (0, -signal.SIGTERM) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Start and stop a local tritonserver (from `.triton/`, Python stubs running in `.venv-serve`).

    with TritonServer("artifacts/repo") as server:      # free ports, waits until ready, stops by PID
        grpc_client = tritonclient.grpc.InferenceServerClient(server.grpc_url)

    python -m client.server --repo artifacts/repo [--address 127.0.0.1] [--http-port 8000 --grpc-port 8001
        --metrics-port 8002] [--api-key-file F] [--admin-key-file F] [--tls-cert C --tls-key K] [--gateway-port 8080]

Safe by default: every endpoint binds to loopback unless an address is given; the admin protocols (shared
memory, model repository, logging, trace, statistics, model config) need the admin key (random unless given);
inference needs the API key when one is given; the per-session key header is forwarded to the orchestrator.
tritonserver dies with its launcher (PR_SET_PDEATHSIG), so a killed launcher never leaves it orphaned.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from mtasr.pipeline.metrics import MODEL_LABEL
from mtasr.spec import ADMIN_KEY_HEADER, API_KEY_HEADER, ORCHESTRATOR, SESSION_KEY_HEADER, grpc_restricted_header

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
# Triton protocols an operator uses, never a client (names as Triton's restricted-protocol flags spell them).
ADMIN_PROTOCOLS = ("shared-memory", "model-repository", "logging", "trace", "statistics", "model-config")
PR_SET_PDEATHSIG = 1
MMAP_THRESHOLD = 64 * 1024
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
    # Request buffers of 64 KB and more get their own mappings, unmapped when freed: with the unpooled gRPC
    # requests below, three refused 64 MB requests left tritonserver at +6 MB instead of +100 MB (glibc's heap
    # kept the pieces). The Python stubs reset their threshold (`mtasr.pipeline.runner.array_friendly_malloc`).
    env["GLIBC_TUNABLES"] = ":".join(t for t in [env.get("GLIBC_TUNABLES", ""),
                                                 f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD}"] if t)
    return env


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the launcher dies (even by SIGKILL); own session for Ctrl-C."""
    os.setsid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class TritonServer:
    """A tritonserver subprocess on `repo`: `with` starts it and waits for readiness, exit stops it by PID.

    Binds gRPC and metrics to `address`, HTTP to `http_address` (both loopback by default; TLS covers gRPC only,
    so HTTP stays local unless asked). `admin_key` (random unless given) guards the admin protocols;
    `api_key`, when given, guards inference; `tls` = (cert, key) PEM files turns on TLS for gRPC. The server is
    tied to the thread that starts it: it gets SIGTERM when that thread's process dies.
    """

    def __init__(self, repo: Path | str, http_port: int = 0, grpc_port: int = 0, metrics_port: int = 0,
                 models: list[str] | None = None, log_path: Path | str | None = None, timeout: float = 180.0,
                 triton_dir: Path = TRITON_DIR, venv: Path = SERVE_VENV, extra_args: tuple[str, ...] = (),
                 address: str = LOOPBACK, admin_key: str | None = None, api_key: str | None = None,
                 tls: tuple[Path, Path] | None = None, http_address: str = LOOPBACK) -> None:
        self.repo = Path(repo).resolve()
        self.address = address
        self.http_address = http_address
        self.admin_key = admin_key or secrets.token_urlsafe(24)
        self.api_key = api_key
        self.tls = tls
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

    @staticmethod
    def _host(address: str) -> str:
        return LOOPBACK if address in ("0.0.0.0", "::", "") else address

    @property
    def http_url(self) -> str:
        return f"{self._host(self.http_address)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._host(self.address)}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._host(self.address)}:{self.metrics_port}/metrics"

    def metric(self, name: str, labels: dict[str, str] | None = None, model: str | None = ORCHESTRATOR) -> float:
        """One sample from the metrics port: the first series of `name` whose labels include `labels` and, unless
        `model` is None, the streaming model's label, e.g. `metric("mtasr_requests_refused_total",
        {"reason": "full"})`. KeyError when it is not there."""
        text = urllib.request.urlopen(self.metrics_url, timeout=5).read().decode()  # noqa: S310 - own server
        want = {**(labels or {}), **({MODEL_LABEL: model} if model else {})}
        for series, value in re.findall(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, re.M):
            have = dict(re.findall(r'(\w+)="([^"]*)"', series))
            if want.items() <= have.items():
                return float(value)
        raise KeyError(f"metric {name} {want} is not on {self.metrics_url}")

    def admin_headers(self) -> dict[str, str]:
        """gRPC headers that pass the admin-protocol restriction (statistics, model config, ...)."""
        return {grpc_restricted_header(ADMIN_KEY_HEADER): self.admin_key}

    def access_args(self) -> list[str]:
        """Binding, protocol restrictions, header forwarding and TLS flags."""
        admin = ",".join(ADMIN_PROTOCOLS)
        args = [f"--grpc-address={self.address}", f"--http-address={self.http_address}",
                f"--metrics-address={self.address}",
                f"--grpc-restricted-protocol={admin}:{ADMIN_KEY_HEADER}={self.admin_key}",
                f"--http-restricted-api={admin}:{ADMIN_KEY_HEADER}={self.admin_key}",
                f"--grpc-header-forward-pattern=^{SESSION_KEY_HEADER}$",
                f"--http-header-forward-pattern=^{SESSION_KEY_HEADER}$",
                # Pooled gRPC request objects keep the capacity of the largest message they ever held (a refused
                # 200 MB request left 270 MB resident per pooled object); unpooled, it is freed with the request.
                "--grpc-infer-allocation-pool-size=0"]
        if self.api_key:
            args += [f"--grpc-restricted-protocol=inference:{API_KEY_HEADER}={self.api_key}",
                     f"--http-restricted-api=inference:{API_KEY_HEADER}={self.api_key}"]
        if self.tls:
            cert, key = self.tls
            args += ["--grpc-use-ssl=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}"]
        return args

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        cmd = [str(self.triton_dir / "bin" / "tritonserver"), f"--model-repository={self.repo}",
               f"--backend-directory={self.triton_dir / 'backends'}", f"--http-port={self.http_port}",
               f"--grpc-port={self.grpc_port}", f"--metrics-port={self.metrics_port}", "--log-verbose=0",
               *self.access_args()]
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
                                         env=serve_env(self.venv, self.triton_dir), preexec_fn=_die_with_parent)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:  # noqa: S310
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
        """SIGTERM (Triton unloads models and exits), SIGKILL after `grace` seconds; only our own PID. Then the
        rest of its process group (its Python backend stubs) is killed: a tritonserver that died abruptly
        (SIGKILL, crash) leaves stubs behind that would hold their memory."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group _die_with_parent made: this server's own
        except (ProcessLookupError, PermissionError):
            pass

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _read_key(path: Path | None, env: str) -> str | None:
    """A key from a file (first line) or the environment; None when neither is set."""
    if path is not None:
        key = path.read_text().strip()
        if len(key) < 16:
            raise SystemExit(f"python -m client.server: error: the key in {path} is shorter than 16 characters")
        return key
    return os.environ.get(env) or None


def _with_gateway(server: TritonServer, address: str, port: int) -> None:
    """Run the WebSocket gateway beside `server` until either exits (the other is then stopped by its PID)."""
    from gateway.process import GatewayProcess

    args: list[str] = []
    if server.tls:
        cert, key = server.tls
        args += ["--tls-cert", str(cert), "--tls-key", str(key), "--triton-tls-ca", str(cert)]
    env = {"MTASR_API_KEY": server.api_key} if server.api_key else {}
    log = server.log_path.with_name(server.log_path.name.replace("tritonserver", "gateway"))
    with GatewayProcess(server.grpc_url, port, address, tuple(args), log_path=log, env=env,
                        tls=bool(server.tls)) as gw:
        print(f"gateway ready (pid {gw.pid}): page {gw.url('/', 'https' if server.tls else 'http')}  native "
              f"{gw.url('/v1/stream')}  OpenAI-compatible {gw.url('/v1/realtime')}; "
              f"{'the API key is required' if server.api_key else 'no API key'}; log {log}", flush=True)
        while server.proc.poll() is None and gw.proc.poll() is None:
            time.sleep(0.5)
        if gw.proc.returncode is not None:
            print(f"gateway exited ({gw.proc.returncode}): {gw.log_tail(400)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m client.server", description="Run tritonserver in the foreground.")
    ap.add_argument("--repo", type=Path, required=True, help="model repository (model_repository.build)")
    ap.add_argument("--address", default=LOOPBACK,
                    help="address gRPC and metrics bind to (default %(default)s: this machine only)")
    ap.add_argument("--http-address", default=LOOPBACK,
                    help="address the HTTP endpoint binds to (default %(default)s; it has no TLS here)")
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--metrics-port", type=int, default=8002)
    ap.add_argument("--models", nargs="*", help="load only these models (explicit model control)")
    ap.add_argument("--log", type=Path, help="server log file (default: <repo>.tritonserver.log)")
    ap.add_argument("--admin-key-file", type=Path,
                    help="file holding the admin key (default: env MTASR_ADMIN_KEY, else a random key written to "
                         "<repo>.admin-key, mode 0600)")
    ap.add_argument("--api-key-file", type=Path, help="file holding an inference key clients must send "
                                                      "(default: env MTASR_API_KEY; none: inference is open)")
    ap.add_argument("--admin-key-out", type=Path,
                    help="where a random admin key is written (default: <repo>.admin-key)")
    ap.add_argument("--triton-dir", type=Path, default=TRITON_DIR,
                    help="Triton install with bin/tritonserver and backends/ (default: %(default)s; in NVIDIA's "
                         "container /opt/tritonserver)")
    ap.add_argument("--serve-venv", type=Path, default=SERVE_VENV,
                    help="Python environment of the orchestrator's stub (default: %(default)s)")
    ap.add_argument("--tls-cert", type=Path, help="PEM certificate: serve gRPC over TLS (with --tls-key)")
    ap.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    ap.add_argument("--gateway-port", type=int,
                    help="also run the WebSocket gateway (python -m gateway: the web page, /v1/stream, /v1/realtime) "
                         "on this port of --address, with the same API key and TLS files")
    args = ap.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        ap.error("--tls-cert and --tls-key go together")
    admin_key = _read_key(args.admin_key_file, "MTASR_ADMIN_KEY")
    api_key = _read_key(args.api_key_file, "MTASR_API_KEY")
    tls = (args.tls_cert.resolve(), args.tls_key.resolve()) if args.tls_cert else None
    server = TritonServer(args.repo, args.http_port, args.grpc_port, args.metrics_port, args.models, args.log,
                          address=args.address, http_address=args.http_address, admin_key=admin_key,
                          api_key=api_key, tls=tls, triton_dir=args.triton_dir, venv=args.serve_venv)
    key_note = "from --admin-key-file/MTASR_ADMIN_KEY"
    if admin_key is None:
        key_file = args.admin_key_out or server.repo.with_name(server.repo.name + ".admin-key")
        key_file.touch(mode=0o600)
        key_file.chmod(0o600)
        key_file.write_text(server.admin_key + "\n")
        key_note = f"in {key_file}"
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill PID` stops the server like Ctrl-C
    try:
        with server:
            print(f"tritonserver ready (pid {server.pid}) on {args.address}: http {server.http_url}  grpc "
                  f"{server.grpc_url}{' (TLS)' if server.tls else ''}  metrics {server.metrics_url}; admin key "
                  f"{key_note}; inference {'needs the API key' if server.api_key else 'open'}; log "
                  f"{server.log_path}; Ctrl-C stops it", flush=True)
            if args.gateway_port is None:
                server.proc.wait()
            else:
                _with_gateway(server, args.address, args.gateway_port)
    except KeyboardInterrupt:
        pass
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        print(f"python -m client.server: error: {' '.join(str(exc).split()[:60])}", file=sys.stderr)
        return 1
    print(f"tritonserver stopped (exit {server.proc.returncode})")
    return 0 if server.proc.returncode in (0, -signal.SIGTERM) else 1


if __name__ == "__main__":
    sys.exit(main())

"""A local cluster for real: nginx (the edge template) in front of two tritonservers on loopback ports.

    python -m edge.cluster [--sessions 16] [--graphs DIR] [--work DIR]      # make cluster-test

1. `--sessions` sessions at once through the edge (TLS, session affinity): each equal to its solo run; the split
   over the replicas from their `mtasr_sessions_started_total`.
2. Real-time sessions, then replica A is killed (SIGKILL) mid-run: its sessions end with a clear error (time
   from the kill: `failover_ms`), replica B's finish equal to their solo runs, new sessions land on B.
3. Replica A restarted on its ports: new sessions spread over both again.
Last line: `cluster: replicas=2 sessions=N split=a/b equal=N/N failover_ms=... survivors_equal=yes|no`; the
exit status is non-zero when anything above did not hold. Every process is ours: own ports, own PIDs, stopped
by PID.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.server import ROOT, TritonServer, _die_with_parent, free_ports
from client.stream import Connection, StreamError, stream_audio
from edge.render import EdgeSettings, render, upstream_lines
from model_repository.build import build
from mtasr.audio import synth_conversation

STARTED = "mtasr_sessions_started_total"
ACTIVE = "mtasr_active_sessions"


class Edge:
    """nginx on the rendered template, in its own prefix folder; `with` starts it, exit stops it by PID."""

    def __init__(self, settings: EdgeSettings, work: Path, port: int) -> None:
        self.settings, self.work, self.port = settings, Path(work), port
        self.proc: subprocess.Popen | None = None

    def config(self) -> Path:
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "edge.conf").write_text(render(self.settings))
        kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        temp = " ".join(f"{k}_temp_path {self.work / k};" for k in kinds)
        main = (f"pid {self.work / 'nginx.pid'};\nerror_log {self.work / 'error.log'} warn;\nworker_processes 1;\n"
                f"events {{ worker_connections 1024; }}\n"
                f"http {{\n  access_log off;\n  {temp}\n  include {self.work / 'edge.conf'};\n}}\n")
        path = self.work / "nginx.conf"
        path.write_text(main)
        return path

    def start(self) -> Edge:
        conf = self.config()
        check = subprocess.run(["nginx", "-t", "-q", "-p", str(self.work), "-c", str(conf)], capture_output=True,
                               text=True)
        if check.returncode:
            raise RuntimeError(f"nginx rejected the edge config: {check.stderr.strip()}")
        self.proc = subprocess.Popen(["nginx", "-p", str(self.work), "-c", str(conf), "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=open(self.work / "stderr.log", "wb"),
                                     preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"nginx exited: {(self.work / 'error.log').read_text()[-2000:]}") from None
                time.sleep(0.1)
        raise TimeoutError("nginx did not listen within 20 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, then exit
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its workers, if the master died abruptly
            except (ProcessLookupError, PermissionError):
                pass

    def __enter__(self) -> Edge:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def tls_pair(work: Path) -> tuple[Path, Path]:
    cert, key = work / "tls.crt", work / "tls.key"
    if not cert.is_file():
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                        str(cert), "-days", "1", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


@dataclass
class Outcome:
    index: int
    seglst: list | None = None
    error: str | None = None
    at: float = 0.0  # monotonic time the session ended


def session_thread(conn: Connection, audio: np.ndarray, outcome: Outcome, realtime: bool) -> threading.Thread:
    """A started thread streaming `audio` as one session into `outcome` (output or error, and when it ended)."""

    def one() -> None:
        try:
            outcome.seglst = stream_audio(conn, audio, session_id=f"s{outcome.index}", realtime=realtime).seglst
        except StreamError as exc:
            outcome.error = str(exc)
        outcome.at = time.monotonic()

    thread = threading.Thread(target=one, daemon=True)
    thread.start()
    return thread


def run_sessions(conn: Connection, audios: list[np.ndarray], realtime: bool) -> list[Outcome]:
    """Every audio as its own session, all at once."""
    out = [Outcome(i) for i in range(len(audios))]
    for t in [session_thread(conn, a, o, realtime) for a, o in zip(audios, out, strict=True)]:
        t.join(600)
    return out


class Cluster:
    """Two replicas of one repository and the edge in front of them."""

    def __init__(self, graphs: Path, work: Path) -> None:
        self.work = Path(work)
        self.repo = build(graphs, "cpu", self.work / "repo", admission_headroom=0.0)  # failover, not admission
        self.ports = [free_ports(3) for _ in range(2)]
        self.edge_port = free_ports(1)[0]
        self.cert, self.key = tls_pair(self.work)
        self.stack = ExitStack()
        self.replicas: list[TritonServer | None] = [None, None]

    def start_replica(self, i: int) -> TritonServer:
        http, grpc, metrics = self.ports[i]
        server = TritonServer(self.repo, http, grpc, metrics, log_path=self.work / f"replica{i}.log")
        self.replicas[i] = self.stack.enter_context(server)
        return server

    def __enter__(self) -> Cluster:
        for i in range(2):
            self.start_replica(i)
        upstreams = upstream_lines([f"127.0.0.1:{p[1]}" for p in self.ports])
        settings = EdgeSettings(upstreams, listen=f"127.0.0.1:{self.edge_port}", tls_cert=str(self.cert),
                                tls_key=str(self.key))
        self.stack.enter_context(Edge(settings, self.work / "edge", self.edge_port))
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()

    @property
    def conn(self) -> Connection:
        return Connection(f"localhost:{self.edge_port}", tls_ca=self.cert)

    def split(self, name: str = STARTED) -> list[int]:
        return [int(r.metric(name)) if r is not None and r.proc.poll() is None else 0 for r in self.replicas]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge.cluster", description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--graphs", type=Path, default=ROOT / "artifacts" / "cluster_graphs")
    ap.add_argument("--work", type=Path, default=ROOT / "artifacts" / "cluster")
    args = ap.parse_args(argv)
    if not (args.graphs / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "export", "--random-init", "tiny", "--out", str(args.graphs),
                        "--presets", "70,13"], cwd=ROOT, check=True, capture_output=True)
    result = run(args.graphs, args.work, args.sessions)
    for key, value in result.items():
        if key != "line":
            print(f"{key}: {value}")
    print(result["line"], flush=True)
    return 0 if result["ok"] else 1


def run(graphs: Path, work: Path, n: int) -> dict:
    """The three phases; figures, problems and the summary line."""
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    audios = [synth_conversation(6.0 + i % 3, n_speakers=2 + i % 2, seed=200 + i) for i in range(n)]
    problems: list[str] = []
    with Cluster(graphs, work) as cluster:
        conn = cluster.conn
        solo = [stream_audio(conn, a, session_id=f"s{i}").seglst for i, a in enumerate(audios)]
        before = cluster.split()
        together = run_sessions(conn, audios, realtime=False)
        after = cluster.split()
        split = [a - b for a, b in zip(after, before, strict=True)]
        equal = sum(o.seglst == solo[o.index] for o in together)
        if equal != n:
            problems.append(f"{n - equal} sessions differ from their solo run: {[o.error for o in together][:2]}")
        if min(split) == 0:
            problems.append(f"sessions did not spread over both replicas: {split}")

        # Phase 2: replica 0 dies under real-time load. Sessions are added until both replicas hold some (the
        # hash decides where a session goes).
        results: list[Outcome] = []
        threads = []
        for i, a in enumerate(audios):
            results.append(Outcome(i))
            threads.append(session_thread(conn, a, results[-1], realtime=True))
            time.sleep(0.3)
            if i >= 3 and min(cluster.split(ACTIVE)) > 0:
                break
        time.sleep(2.0)
        killed_at = time.monotonic()
        cluster.replicas[0].proc.send_signal(signal.SIGKILL)
        for t in threads:
            t.join(600)
        cluster.replicas[0].stop()  # reap it and its stubs
        failed = [o for o in results if o.error]
        survived = [o for o in results if not o.error]
        failover_ms = max((o.at - killed_at) * 1000 for o in failed) if failed else float("nan")
        survivors_equal = bool(survived) and all(o.seglst == solo[o.index] for o in survived)
        if not failed or not survived:
            problems.append(f"expected sessions on both replicas: {len(failed)} failed, {len(survived)} survived")
        if failed and failover_ms > 1000:
            problems.append(f"sessions of the dead replica ended {failover_ms:.0f} ms after the kill (> 1 s)")
        if not all("\n" not in o.error for o in failed):
            problems.append("an error message spans several lines")
        if not survivors_equal:
            problems.append("a session on the surviving replica differs from its solo run")
        fresh = run_sessions(conn, audios[:4], realtime=False)  # new sessions while replica 0 is down
        if not all(o.seglst == solo[o.index] for o in fresh):
            problems.append(f"new sessions failed with one replica down: {[o.error for o in fresh if o.error][:2]}")

        # Phase 3: replica 0 back on its ports; after nginx's fail_timeout new sessions spread again
        cluster.start_replica(0)
        time.sleep(6.0)
        before = cluster.split()
        again = run_sessions(conn, audios, realtime=False)
        respread = [a - b for a, b in zip(cluster.split(), before, strict=True)]
        if min(respread) == 0 or any(o.seglst != solo[o.index] for o in again):
            problems.append(f"after the restart: split {respread}, errors {[o.error for o in again if o.error][:2]}")
    line = (f"cluster: replicas=2 sessions={n} split={split[0]}/{split[1]} equal={equal}/{n} "
            f"failover_ms={failover_ms:.0f} survivors_equal={'yes' if survivors_equal else 'no'}")
    return {"ok": not problems, "problems": problems, "after_restart_split": respread,
            "failover_sessions": f"{len(failed)} ended, {len(survived)} finished", "line": line}


if __name__ == "__main__":
    sys.exit(main())

"""Shared fixtures, and the rule that splits the suite into tiers.

The tiers (new tests follow this rule):
- unit (`make test-unit`, under a minute): no tritonserver, nginx or gateway process, no NeMo export. Plain
  functions, NeMo modules in process (features, losses, the speaker cache), ONNX graphs built inside the test.
- `export`: the test needs an exported model. Any test that uses `tiny_parity` or `tiny_graphs` (directly or
  through another fixture) is marked `export` here automatically; a test that exports or builds NeMo models by
  itself (`run_cli("export", ...)`, `export.builders`, `export.parity`) carries `@pytest.mark.export`.
- `server`: the test starts a tritonserver, nginx or the gateway. Tests that use a fixture in SERVER_FIXTURES
  (`default_server`, and the modules' `server`, `served...`, `harness`, `stack`) are marked automatically; others
  carry `@pytest.mark.server` (on the test, or `pytestmark` for a module). Under
  `make test-unit` a tritonserver started by a test without the mark fails, naming this rule.
`make test` (what CI runs) runs every tier; `make test-unit` runs `pytest -m "not export and not server"`.

Sharing, so that a run exports each model kind once and starts one server per configuration:
- `tiny_parity`: the run's tiny export and parity check (`export.parity --size tiny --fp16 --int8`); `tiny_graphs`
  is its graphs folder (every preset, fp16 and int8 twins; the 8-speaker graphs beside it in `speakers8/`).
  Never export tiny random-init graphs again in a test: use `tiny_graphs`.
- `default_server`: one tritonserver on `tiny_graphs` in the default configuration (cpu, [70,13], kernel mode,
  default limits) for the whole run. A test that needs other options builds and starts its own, module-scoped,
  and must leave the shared one as it found it (sessions ended, no limits changed).
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

ROOT = Path(__file__).resolve().parents[1]
PARITY_LINE = re.compile(
    r"^parity: diarizer=(?P<diarizer>\S+) encoder=(?P<encoder>\S+) decoder_joint=(?P<decoder_joint>\S+) "
    r"features=(?P<features>\S+) cache_update=(?P<cache_update>\S+) tokens=(?P<same>\d+)/(?P<total>\d+) "
    r"speakers8=(?P<speakers8_same>\d+)/(?P<speakers8_total>\d+) diarize=(?P<diarize_same>\d+)/(?P<diarize_total>\d+)"
    r"(?: int8_tokens=(?P<int8_same>\d+)/(?P<int8_total>\d+))?$"  # with --int8: the int8 pipeline vs fp32
)

EXPORT_FIXTURES = {"tiny_parity"}  # every fixture built on the tiny export depends on this one
SERVER_FIXTURES = {"default_server", "server", "served", "served_combo", "served8", "harness", "stack",
                   "browser_stack"}
TIERS = {"export": "needs an exported NeMo model (tiny_parity / tiny_graphs, or exports by itself)",
         "server": "starts a tritonserver, nginx or the gateway"}
_current: dict = {}  # the test being set up / run (the tier guard reads its marks)
_cpu: list[tuple[float, str]] = []  # (CPU seconds, test) for --cpu-durations


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cpu-durations", type=int, default=0, metavar="N",
                     help="list the N tests that took the most CPU seconds (this process and the subprocesses "
                          "it reaped during the test, fixtures included): a measure that holds on a busy machine")


def pytest_configure(config: pytest.Config) -> None:
    for name, doc in TIERS.items():
        config.addinivalue_line("markers", f"{name}: {doc} (tests/conftest.py; `make test-unit` leaves it out)")
    if "not server" in (config.option.markexpr or ""):
        _guard_server_starts()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test by the shared fixtures it uses (see the rule above)."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & EXPORT_FIXTURES:
            item.add_marker(pytest.mark.export)
        if names & SERVER_FIXTURES:
            item.add_marker(pytest.mark.server)


@pytest.hookimpl(tryfirst=True)  # before the fixtures of the test are set up
def pytest_runtest_setup(item: pytest.Item) -> None:
    _current["item"] = item


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    start = _cpu_seconds()
    yield
    _cpu.append((_cpu_seconds() - start, item.nodeid))


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    n = config.getoption("cpu_durations")
    if n and _cpu:
        terminalreporter.write_sep("=", f"{n} largest CPU seconds (setup + call + teardown, reaped subprocesses)")
        for seconds, nodeid in sorted(_cpu, reverse=True)[:n]:
            terminalreporter.write_line(f"{seconds:8.1f}s  {nodeid}")
        terminalreporter.write_line(f"{sum(s for s, _ in _cpu):8.1f}s  in all ({len(_cpu)} tests)")


def _guard_server_starts() -> None:
    """In the unit tier, a tritonserver started by a test not marked `server` is an error, not a slow pass."""
    from client.server import TritonServer

    start = TritonServer.start

    def guarded(self):
        item = _current.get("item")
        if item is not None and item.get_closest_marker("server") is None:
            raise RuntimeError(f"{item.nodeid} starts a tritonserver but is not marked `server`: add "
                               "@pytest.mark.server (the tier rule at the top of tests/conftest.py)")
        return start(self)

    TritonServer.start = guarded


def run_cli(*args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    """Run `python -m <args>` from the repository root, capturing output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def tiny_parity(tmp_path_factory) -> dict:
    """`python -m export.parity --size tiny --fp16 --int8` once per session: its exit code, last line and work
    folder (graphs/ holds the fp16 and int8 copies)."""
    work = tmp_path_factory.mktemp("parity_tiny")
    proc = run_cli("export.parity", "--size", "tiny", "--fp16", "--int8", "--work", str(work))
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return {"proc": proc, "last": lines[-1] if lines else "", "work": work}


@pytest.fixture(scope="session")
def tiny_graphs(tiny_parity) -> Path:
    """The tiny parity run's graphs folder: the run's one tiny random-init export."""
    graphs = tiny_parity["work"] / "graphs"
    assert (graphs / "manifest.json").is_file(), tiny_parity["proc"].stderr[-3000:]
    return graphs


@pytest.fixture(scope="session")
def default_server(tiny_graphs, tmp_path_factory):
    """One tritonserver on `tiny_graphs` in the default configuration for the whole run (stopped at its end)."""
    from client.server import TritonServer
    from model_repository.build import build

    # [70,13] named: the tiny export's own default preset is the first it exported (70_0). Admission by count only:
    # what the tests compare must not depend on how busy the machine is (admission by capacity: reliability cases)
    repo = build(tiny_graphs, "cpu", tmp_path_factory.mktemp("default_repo") / "repo", preset="70_13",
                 admission_headroom=0.0)
    with TritonServer(repo, log_path=repo.with_name("server.log")) as server:
        yield server


def parse_pbtxt(text: str) -> mc.ModelConfig:
    """A `config.pbtxt` parsed back into Triton's ModelConfig."""
    return text_format.Parse(text, mc.ModelConfig())


TIME_TOL = 0.08  # seconds: one encoder frame


def assert_same_seglst(got: list[dict], want: list[dict]) -> None:
    """Same speakers and words in the same order; start/end times within one 80 ms frame."""
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want, strict=True):
        assert (g["speaker"], g["words"], g["session_id"]) == (w["speaker"], w["words"], w["session_id"])
        assert abs(g["start_time"] - w["start_time"]) <= TIME_TOL and abs(g["end_time"] - w["end_time"]) <= TIME_TOL

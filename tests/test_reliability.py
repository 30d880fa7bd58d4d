"""The fast core of the fault suite (`make reliability` runs all of it, at full sizes): real tritonservers on the
tiny parity graphs, real gRPC clients, real faults. Each case asserts its behaviour; see reliability/cases.py."""

from __future__ import annotations

import pytest

from reliability.cases import CASES
from reliability.harness import Harness


@pytest.fixture(scope="module")
def harness(tiny_parity, tmp_path_factory):
    h = Harness(tiny_parity["work"] / "graphs", tmp_path_factory.mktemp("reliability"), full=False)
    yield h
    h.close()


@pytest.mark.parametrize("case", [c for c in CASES if c.fast], ids=lambda c: c.name)
def test_fault_case(harness, case):
    figures = case.run(harness)
    print(f"{case.name}: {figures}")

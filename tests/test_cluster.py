"""The edge for real (`make cluster-test` at CI size): nginx on the deploy/edge template in front of two local
tritonservers — sessions spread and equal their solo runs, a killed replica's sessions end at once with one
line, the survivor's finish equal, new sessions land on it, a restarted replica takes sessions again."""

from __future__ import annotations

import os
import re
import shutil

import pytest

from edge.cluster import run
from edge.render import EdgeSettings, render, template_variables, upstream_lines


def test_template_variables_are_the_settings():
    names = {f"MTASR_EDGE_{k.upper()}" for k in EdgeSettings.__dataclass_fields__}
    assert template_variables() == names
    text = render(EdgeSettings(upstream_lines(["a:8001", "b:8001"]), api_key="k" * 20))
    assert "${" not in text and "server a:8001 max_fails=1 fail_timeout=5s;" in text
    assert "hash $http_mtasr_session_key consistent;" in text and '"kkkkkkkkkkkkkkkkkkkk" 1;' in text


@pytest.mark.skipif(shutil.which("nginx") is None and not os.environ.get("CI"), reason="no nginx: run `make nginx`")
def test_cluster(tiny_parity, tmp_path):
    result = run(tiny_parity["work"] / "graphs", tmp_path / "cluster", 12)
    print(result)
    assert result["ok"], result["problems"]
    m = re.fullmatch(r"cluster: replicas=2 sessions=12 split=(\d+)/(\d+) equal=12/12 failover_ms=(\d+) "
                     r"survivors_equal=yes", result["line"])
    assert m and int(m[1]) + int(m[2]) == 12 and int(m[3]) <= 1000, result["line"]

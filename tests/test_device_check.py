"""`python -m bench.device_check` (the GPU machine's check of the CuPy-backed pools, speaker cache, features,
decoder and engine) runs on the CPU with numpy standing in for the device, and prints its line."""

from __future__ import annotations

import re

from tests.conftest import run_cli

LINE = re.compile(r"^device-check: xp=numpy device=cpu pools=ok speaker_cache=exact features_max_abs=0\.0 "
                  r"decoder_tokens=(\d+)/(\d+) decoder_rows_alone=(\d+)/(\d+) "
                  r"host_ms_per_session_step=[\d.]+ failed=0$")


def test_device_check_dry_run_on_the_cpu():
    proc = run_cli("bench.device_check", "--xp", "numpy", "--sessions", "2", "--rows", "2", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    match = LINE.match(proc.stdout.strip().splitlines()[-1])
    assert match and int(match[1]) == int(match[2]) > 0, proc.stdout[-2000:]
    assert int(match[3]) == int(match[4]) == 2  # each row alone decodes as in the batch

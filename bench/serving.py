"""A throwaway served repository for a measurement: build it from a graphs folder, start tritonserver, stop it."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mtasr.manifest import FP32


@contextmanager
def served(graphs: Path, preset: str | None = None, speaker_mode: str = "kernel", precision: str = FP32,
           **limits) -> Iterator:
    """A running `TritonServer` on a cpu repository built from `graphs` (at `precision`) in a temporary folder;
    `limits` are `build`'s `max_sessions` / `idle_timeout_s` / `admission_headroom` (default 0: admission by count,
    a benchmark measures the pipeline, not the admission's estimate of this machine)."""
    from client.server import TritonServer
    from model_repository.build import build

    limits.setdefault("admission_headroom", 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        repo = build(graphs, "cpu", Path(tmp) / "repo", preset=preset, speaker_mode=speaker_mode,
                     precision=precision, **limits)
        with TritonServer(repo, log_path=Path(tmp) / "server.log") as server:
            yield server

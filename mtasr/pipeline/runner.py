"""Graph runners: how the pipeline calls a graph. In process with onnxruntime, or BLS inside Triton."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class GraphRunner(Protocol):
    def __call__(self, graph: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """Run `graph` on `feeds`, returning `outputs` in that order."""
        ...


class OrtRunner:
    """Runs the exported graphs of a folder with onnxruntime (sessions created on first use)."""

    def __init__(self, folder: str | Path, providers: list[str] | None = None, threads: int = 0) -> None:
        self.folder = Path(folder)
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads = threads
        self._sessions: dict = {}

    def session(self, graph: str):
        import onnxruntime as ort

        if graph not in self._sessions:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            if self.threads:
                opts.intra_op_num_threads = self.threads
            path = self.folder / graph / "model.onnx"
            self._sessions[graph] = ort.InferenceSession(str(path), opts, providers=self.providers)
        return self._sessions[graph]

    def __call__(self, graph: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        return self.session(graph).run(outputs, feeds)

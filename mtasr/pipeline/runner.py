"""Graph runners: how the pipeline calls a graph. In process with onnxruntime, or BLS inside Triton."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from mtasr.profile import GRAPHS, stage
from mtasr.spec import TensorRecord


def single_threaded_blas() -> None:
    """Limit numpy's BLAS to one thread in this process.

    The pipeline's numpy work (mel filterbank, speaker-cache scores) is small matrices; with a multi-threaded
    OpenBLAS its threads spin against ONNX Runtime's pool on the same cores: a 128x257x16 float64 matmul took
    7.9 ms with the default threads vs 0.1 ms with one (2-core machine, ONNX Runtime busy).
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc `malloc_trim`), so RSS falls when sessions end.

    A session's state is a few hundred numpy arrays; once freed, glibc keeps their pages for reuse and the
    process RSS stays at its high-water mark. No-op where glibc is absent.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


def array_friendly_malloc(threshold: int = 32 * 2**20) -> None:
    """Serve allocations below `threshold` from the heap (glibc `mallopt(M_MMAP_THRESHOLD)`).

    The launcher starts tritonserver with a 64 KB mmap threshold so that large request buffers are returned to the
    OS; the Python stubs inherit it, and there every state array of a step would become a fresh mapping. 32 MB
    is where glibc's own dynamic threshold tops out. No-op where glibc is absent.
    """
    import ctypes
    import ctypes.util

    m_mmap_threshold = -3
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).mallopt(m_mmap_threshold, threshold)
    except (OSError, AttributeError, TypeError):
        pass


def ort_session(model: str | Path | bytes, threads: int = 0, providers: list[str] | None = None,
                optimize: bool = True, profile_prefix: str | None = None):
    """The one way ONNX Runtime sessions are made here: warnings off (run errors reach the caller anyway), CPU
    unless `providers`, `threads` intra-op threads (0: ONNX Runtime's choice) that do not spin when idle, graph
    optimisation off when `optimize` is False, a profile written under `profile_prefix` when given."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    # Idle intra-op threads sleep instead of spinning: on a small shared CPU the spinning threads took the cores
    # Triton's gRPC/batcher threads and the other graphs need (tiny models, 16 real-time sessions: the server's
    # CPU per request 7.5 -> 4.3 ms, p50 134 -> 6 ms).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=providers or ["CPUExecutionProvider"])


class GraphRunner(Protocol):
    def __call__(self, graph: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """Run `graph` on `feeds`, returning `outputs` in that order."""
        ...


class OrtRunner:
    """Runs graphs with onnxruntime from `folder/<graph>/<subdir>/model.onnx` (sessions created on first use).

    An exported graphs folder has no `subdir`; a model repository has the version folder (`subdir="1"`).
    """

    def __init__(self, folder: str | Path, providers: list[str] | None = None, threads: int = 0,
                 subdir: str = "") -> None:
        self.folder = Path(folder)
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads = threads
        self.subdir = subdir
        self._sessions: dict = {}

    def session(self, graph: str):
        if graph not in self._sessions:
            path = self.folder / graph / self.subdir / "model.onnx"
            self._sessions[graph] = ort_session(path, self.threads, self.providers)
        return self._sessions[graph]

    def __call__(self, graph: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        return self.session(graph).run(outputs, feeds)


class RoutedRunner:
    """Sends the graphs named in `routes` to their runner and every other graph to `default`."""

    def __init__(self, default: GraphRunner, routes: dict[str, GraphRunner] | None = None) -> None:
        self.default = default
        self.routes = dict(routes or {})

    def __call__(self, graph: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        return self.routes.get(graph, self.default)(graph, feeds, outputs)


R = TypeVar("R", bound=TensorRecord)


def run_graph(runner: GraphRunner, graph: str, inputs: TensorRecord, outputs: type[R]) -> R:
    """Run `graph` with a typed inputs record and return its typed outputs record."""
    with stage(GRAPHS):
        return outputs.from_arrays(runner(graph, inputs.feeds(), outputs.names()))


def retried(group: list, call, owner, failed: dict[str, str]):
    """(items, result) of `call(items)` for the whole group, or, when that raises, for each item alone; an item whose
    call fails alone is recorded in `failed` under `owner(item)`. `call` must not change state when it raises."""
    if not group:
        return
    try:
        yield group, call(group)
        return
    except Exception as exc:  # noqa: BLE001 - retried below, one by one
        if len(group) == 1:
            failed.setdefault(owner(group[0]), f"{type(exc).__name__}: {exc}")
            return
    for item in group:
        if owner(item) in failed:
            continue
        try:
            result = call([item])
        except Exception as exc:  # noqa: BLE001 - this item's failure is its own
            failed.setdefault(owner(item), f"{type(exc).__name__}: {exc}")
            continue
        yield [item], result

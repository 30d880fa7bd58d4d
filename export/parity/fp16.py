"""fp16 copies of the graphs against their fp32 twins (ONNX Runtime CPU), each in its own process."""

from __future__ import annotations

from pathlib import Path

from export.parity.figures import maxabs, random_feed, session
from mtasr.manifest import Manifest


def _fp16_worker(graphs: str, name: str, kind: str, manifest: Manifest, out) -> None:
    feed = random_feed(kind, manifest, name)
    ref = session(Path(graphs) / name / "model.onnx").run(None, feed)
    got = session(Path(graphs) / f"{name}_fp16" / "model.onnx").run(None, feed)
    out.put(max(maxabs(a, b) for a, b in zip(got, ref, strict=True)))


def fp16_deviation(graphs: Path, manifest: Manifest) -> dict[str, float | str]:
    """Max abs of each fp16 graph vs its fp32 twin (ONNX Runtime CPU), each in its own process: a crashing
    session is reported, not fatal."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out: dict[str, float | str] = {}
    for name, kind in manifest.graphs.items():
        if name.endswith("_fp16") or f"{name}_fp16" not in manifest.graphs:
            continue
        queue = ctx.Queue()
        proc = ctx.Process(target=_fp16_worker, args=(str(graphs), name, kind, manifest, queue))
        proc.start()
        proc.join()
        out[name] = queue.get() if proc.exitcode == 0 else f"unmeasured: ONNX Runtime exit code {proc.exitcode}"
    return out

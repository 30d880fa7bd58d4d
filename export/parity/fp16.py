"""fp16 copies of the graphs against their fp32 twins (ONNX Runtime CPU), each in its own process."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.parity.figures import maxabs, session
from mtasr.examples import example_feed
from mtasr.manifest import Manifest
from mtasr.spec import graph_specs


def _random_feed(kind: str, manifest: Manifest, name: str) -> dict[str, np.ndarray]:
    """Inputs of the shapes the pipeline sends: batch 2, the preset's chunk, half-full caches."""
    dims = manifest.dims
    preset = next((p for p in manifest.presets.values() if p.graph == name.removesuffix("_fp16")),
                  manifest.preset())
    frames = preset.streaming_cfg.step_frames
    sizes = {"batch": 2, "chunk_frames": frames, "spkcache_frames": dims.spkcache_len,
             "fifo_frames": dims.fifo_len, "enc_frames": preset.streaming_cfg.valid_out_len}
    ints = {"chunk_lengths": frames, "length": frames, "spkcache_lengths": dims.spkcache_len // 2,
            "fifo_lengths": dims.fifo_len // 2, "cache_last_channel_len": dims.enc_last_channel // 2, "targets": 1}
    feed = example_feed(graph_specs(dims)[kind], sizes, ints)
    for mel in {"chunk", "audio_signal"} & set(feed):
        feed[mel] = feed[mel] * 3 - 8  # log-mel-like
    return feed


def _fp16_worker(graphs: str, name: str, kind: str, manifest: Manifest, out) -> None:
    feed = _random_feed(kind, manifest, name)
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

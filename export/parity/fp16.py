"""fp16 copies of the graphs against their fp32 twins (ONNX Runtime CPU).

Two kinds of figures: the max abs of each fp16 graph's outputs on random inputs (`fp16_deviation`, each graph in
its own process, as `make parity` reports it), and what the served pipeline does with trained weights on real
audio (`pipeline_agreement`): the in-process pipeline (`mtasr.pipeline.Engine`, kernel mode, timing audio) run
once with the fp32 graphs and once with the fp16 diarizer and encoder (`Fp16Runner`), every state chained as
served; tokens compared (token, frame) pair by pair, words and diarizer decisions alike.

ONNX Runtime's CPU kernels compute most fp16 nodes in fp32 between fp16 tensors (it inserts the casts), so this
measures fp16 storage of every weight and intermediate tensor (rounding, overflow to inf), not fp16 accumulation
inside a kernel; `export.fp16_ranges` measures how close each tensor comes to fp16's range for that part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.parity.figures import maxabs, random_feed, session
from export.parity.int8 import token_agreement
from mtasr.manifest import Manifest
from mtasr.pipeline import Engine, OrtRunner, PipelineConfig
from mtasr.pipeline.engine import Stream
from mtasr.pipeline.runner import GraphRunner

FP16_SUFFIX = "_fp16"
PIECE = 2560  # samples per pushed audio piece (160 ms)


def _fp16_worker(graphs: str, name: str, kind: str, manifest: Manifest, out) -> None:
    feed = random_feed(kind, manifest, name)
    ref = session(Path(graphs) / name / "model.onnx").run(None, feed)
    got = session(Path(graphs) / f"{name}{FP16_SUFFIX}" / "model.onnx").run(None, feed)
    out.put(max(maxabs(a, b) for a, b in zip(got, ref, strict=True)))


def fp16_deviation(graphs: Path, manifest: Manifest) -> dict[str, float | str]:
    """Max abs of each fp16 graph vs its fp32 twin (ONNX Runtime CPU), each in its own process: a crashing
    session is reported, not fatal."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out: dict[str, float | str] = {}
    for name, kind in manifest.graphs.items():
        if name.endswith(FP16_SUFFIX) or f"{name}{FP16_SUFFIX}" not in manifest.graphs:
            continue
        queue = ctx.Queue()
        proc = ctx.Process(target=_fp16_worker, args=(str(graphs), name, kind, manifest, queue))
        proc.start()
        proc.join()
        out[name] = queue.get() if proc.exitcode == 0 else f"unmeasured: ONNX Runtime exit code {proc.exitcode}"
    return out


class Fp16Runner(OrtRunner):
    """Runs each graph's fp16 copy (`<graph>_fp16/`) where the folder has one, else the graph itself: the gpu
    target's choice (`model_repository.build.graph_folders`), on ONNX Runtime CPU."""

    def session(self, graph: str):
        fp16 = graph + FP16_SUFFIX
        return super().session(fp16 if (self.folder / fp16 / "model.onnx").is_file() else graph)


def stream(graphs: Path, runner: GraphRunner, audio: np.ndarray, session_id: str,
           preset: str | None = None) -> tuple[Stream, np.ndarray]:
    """The in-process pipeline on `audio` (16 kHz) in 160 ms pieces, kernel mode, timing audio: the finished
    session and the diarizer activity of every step."""
    cfg = PipelineConfig.from_folder(graphs, preset=preset, masked_asr=False)
    engine = Engine.from_folder(graphs, runner, cfg)
    sess = engine.new_stream(session_id, timing="audio", keep_hypotheses=True)
    activity = []
    for pos in range(0, audio.size, PIECE):
        engine.push_audio(sess, audio[pos : pos + PIECE], last=pos + PIECE >= audio.size)
        while sess.pending:
            activity += [out.activity for out in engine.step([sess])]
    engine.finish(sess)
    n_spk = cfg.dims.n_spk
    return sess, np.concatenate(activity) if activity else np.zeros((0, n_spk), np.float32)


def hypotheses(sess: Stream) -> dict[int, list[tuple[int, int]]]:
    """Speaker -> its (token, frame) pairs."""
    return {spk: list(zip(st.tokens, st.frame_indices, strict=True))
            for spk, st in sess.speakers.items() if st.started}


@dataclass
class Agreement:
    """fp16 vs fp32 pipeline on the same audio: (token, frame) pairs shared, words, diarizer decisions."""

    same: int = 0
    total: int = 0
    sessions: int = 0
    same_words: int = 0  # sessions whose SegLST words are identical
    decisions: int = 0  # diarizer frame x speaker decisions (> 0.5) compared
    decisions_differ: int = 0
    activity_max_abs: float = 0.0
    per_session: dict = field(default_factory=dict)

    def add(self, name: str, fp32: tuple[Stream, np.ndarray], fp16: tuple[Stream, np.ndarray]) -> None:
        (s32, a32), (s16, a16) = fp32, fp16
        h32, h16 = hypotheses(s32), hypotheses(s16)
        same = total = 0
        for spk in sorted(set(h32) | set(h16)):
            s, t = token_agreement(h16.get(spk, []), h32.get(spk, []))
            same, total = same + s, total + t
        words = [(g["speaker"], g["words"]) for g in s32.segments.seglst()] == \
                [(g["speaker"], g["words"]) for g in s16.segments.seglst()]
        rows = min(len(a32), len(a16))
        differ = int(((a32[:rows] > 0.5) != (a16[:rows] > 0.5)).sum()) + abs(len(a32) - len(a16)) * a32.shape[1]
        err = maxabs(a16[:rows], a32[:rows]) if rows else 0.0
        self.same, self.total, self.sessions = self.same + same, self.total + total, self.sessions + 1
        self.same_words += int(words)
        self.decisions += max(len(a32), len(a16)) * a32.shape[1]
        self.decisions_differ += differ
        self.activity_max_abs = max(self.activity_max_abs, err)
        self.per_session[name] = {"tokens": f"{same}/{total}", "same_words": words, "decisions_differ": differ,
                                  "activity_max_abs": err}


def pipeline_agreement(graphs: Path, audios: dict[str, np.ndarray], preset: str | None = None) -> Agreement:
    """fp32 vs fp16 graphs through the in-process pipeline on each named audio (16 kHz)."""
    out = Agreement()
    fp32, fp16 = OrtRunner(graphs), Fp16Runner(graphs)
    for name, audio in audios.items():
        out.add(name, stream(graphs, fp32, audio, name, preset), stream(graphs, fp16, audio, name, preset))
    return out

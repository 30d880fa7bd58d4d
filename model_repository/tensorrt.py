"""TensorRT plans for the `tensorrt` target: optimisation profiles from the spec and the geometry, the trtexec
commands that build them inside NVIDIA's Triton container, and a check of every plan against ONNX Runtime at the
profile's min, opt and max shapes.

    python -m model_repository.build --graphs artifacts/model --target tensorrt --out artifacts/repo_trt --copy
    python -m model_repository.tensorrt script --repo artifacts/repo_trt > build_plans.sh   # (build writes it too)
    # in the container (bench/gpu_check.sh does both):
    bash /models/build_plans.sh && python3 -m model_repository.tensorrt check --repo /models

Precision lives in the graph: each plan is built strongly typed from the exported fp16 graph (`export --fp16`: fp16
weights and activations, float32 inputs/outputs, LayerNormalization and any node `export.fp16_ranges` found near
fp16's range kept in fp32), so the plan computes in the types the CPU checks measured (`make gpu-static`).
TensorRT 11 removed weak typing (`--fp16`, `--layerPrecisions`, precision constraints); on TensorRT 10 the script
passes `--stronglyTyped`. Builds use a timing cache (`TIMING_CACHE`, kept beside the plans, so a rebuild or the
other graph reuses the timed tactics) and builder optimisation level `OPT_LEVEL`. Not run on the machines this
project is built on (no GPU, no TensorRT): see docs/deploy.md for what has and has not run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_repository.triton_config import PLAN_FILE, graph_max_batch
from mtasr.examples import example_feed
from mtasr.manifest import Manifest
from mtasr.pipeline.config import PipelineConfig
from mtasr.spec import ORCHESTRATOR, DecoderJointInputs, DiarizerInputs, EncoderInputs, GraphSpec, graph_specs

# tensor names by attribute
DI, EI, DJ = DiarizerInputs.tensor_names(), EncoderInputs.tensor_names(), DecoderJointInputs.tensor_names()

TRTEXEC = "/usr/src/tensorrt/bin/trtexec"  # where NVIDIA's Triton container has it
SCRIPT = "build_plans.sh"
TIMING_CACHE = "timing.cache"
# TensorRT's default level (0-5): level 5 searched 1.5 h for one mid-size engine on an L4 in a published report,
# level 3 is what NVIDIA's own trtexec examples and Triton's ORT-TRT integration use.
OPT_LEVEL = 3
LEVELS = ("min", "opt", "max")


@dataclass(frozen=True)
class Rows:
    """Rows (batch) of one graph call: the most common size at scale (`opt`, where TensorRT times its tactics) and
    the most one call may carry (`max`)."""

    opt: int
    max: int


# Rows per call at scale, from bench.capacity's engine batches of 256-1024 sessions with two active speakers each:
# the encoder runs every active speaker of every session of the batch in one call (512-2048 rows), the diarizer one
# row per session (256-1024). The profile's max also covers the repository's graph max batch (the Triton config
# may not allow more rows than the plan).
ENCODER_ROWS = Rows(opt=1024, max=2048)
DIARIZER_ROWS = Rows(opt=512, max=1024)
ROWS = {"encoder": ENCODER_ROWS, "diarizer": DIARIZER_ROWS, "decoder_joint": ENCODER_ROWS}  # one row per speaker


def axis_ranges(manifest: Manifest, preset: str, kind: str) -> dict[str, tuple[int, int, int]]:
    """(min, opt, max) of every dynamic axis of graph `kind` for `preset`, from the pipeline's geometry: one row up
    to `ROWS[kind]` (and at least the repository's graph max batch); a step's mel frames from the shortest last
    chunk (pre-encode cache + the pre-encoder's minimum) to a full step; speaker cache and FIFO from empty to full;
    the encoder's target frames of a short or full step."""
    g, d = PipelineConfig.from_manifest(manifest, preset=preset).geometry, manifest.dims
    rows = ROWS[kind]
    top = max(rows.max, graph_max_batch(d))
    return {"batch": (1, min(rows.opt, top), top),
            "chunk_frames": (g.pre_encode_cache + g.min_frames, g.step_frames, g.step_frames),
            "spkcache_frames": (0, d.spkcache_len, d.spkcache_len),
            "fifo_frames": (0, d.fifo_len, d.fifo_len),
            "enc_frames": (1, g.valid_out_len, g.valid_out_len)}


def profile_shapes(spec: GraphSpec, ranges: dict[str, tuple[int, int, int]]) -> dict[str, list[tuple[int, ...]]]:
    """Input name -> [min, opt, max] shapes."""
    return {t.name: [tuple(d if isinstance(d, int) else ranges[d][k] for d in t.dims) for k in range(3)]
            for t in spec.inputs}


def trtexec_command(onnx: Path | str, plan: Path | str, spec: GraphSpec, ranges: dict, trtexec: str = TRTEXEC,
                    timing_cache: str = TIMING_CACHE, opt_level: int = OPT_LEVEL) -> list[str]:
    """trtexec's arguments for one plan: the profile, the timing cache, the optimisation level (the script adds
    `--stronglyTyped` where the TensorRT version takes it)."""
    shapes = profile_shapes(spec, ranges)

    def flag(k: int) -> str:
        return ",".join(f"{name}:{'x'.join(map(str, s[k]))}" for name, s in shapes.items())

    return [trtexec, f"--onnx={onnx}", f"--saveEngine={plan}", f"--minShapes={flag(0)}", f"--optShapes={flag(1)}",
            f"--maxShapes={flag(2)}", f"--timingCacheFile={timing_cache}", f"--builderOptimizationLevel={opt_level}",
            "--skipInference"]


def _plan_models(repo: Path) -> list[str]:
    return sorted(p.parent.name for p in repo.glob("*/config.pbtxt") if (p.parent / "1" / "model.onnx").exists())


def build_script(repo: Path) -> str:
    """Bash that builds every TensorRT graph model's plan of `repo` (paths relative to the script's folder); a plan
    newer than its graph is kept, so the plans are built once."""
    manifest = Manifest.load(repo / ORCHESTRATOR / "1")
    specs = graph_specs(manifest.dims)
    lines = ["#!/usr/bin/env bash",
             "# Generated by model_repository.tensorrt: build the TensorRT plans of this repository inside NVIDIA's "
             "Triton container.",
             "set -euo pipefail", 'cd "$(dirname "$0")"',
             f'TRTEXEC="${{TRTEXEC:-{TRTEXEC}}}"', f'TIMING_CACHE="${{TIMING_CACHE:-$PWD/{TIMING_CACHE}}}"',
             '[ -x "$TRTEXEC" ] || { echo "no trtexec at $TRTEXEC (set TRTEXEC)" >&2; exit 2; }',
             "# TensorRT 10 types strongly on request; TensorRT 11 always does (it has no precision flags)",
             "TYPING=()",
             'if "$TRTEXEC" --help 2>&1 | grep -q -- --stronglyTyped; then TYPING=(--stronglyTyped); fi']
    for model in _plan_models(repo):
        kind = model  # repository model names are the graph kinds
        ranges = axis_ranges(manifest, manifest.served_preset, kind)
        onnx, plan = f"{model}/1/model.onnx", f"{model}/1/{PLAN_FILE}"
        cmd = trtexec_command(onnx, f"{plan}.partial", specs[kind], ranges, trtexec="$TRTEXEC",
                              timing_cache="$TIMING_CACHE")
        args = " ".join(f'"{a}"' if "$" in a else shlex.quote(a) for a in cmd[1:])  # "$VAR" expands
        lines += [f'if [ "{plan}" -nt "{onnx}" ]; then echo "{model}: plan up to date"; else',
                  f'  echo "building {model}"; start=$SECONDS',
                  f'  "$TRTEXEC" {args} "${{TYPING[@]}}"',
                  f'  mv "{plan}.partial" "{plan}"; echo "{model}: built in $((SECONDS - start)) s"',
                  "fi"]
    return "\n".join(lines) + "\n"


def check_feeds(spec: GraphSpec, ranges: dict[str, tuple[int, int, int]], level: int, manifest: Manifest,
                rng: np.random.Generator, max_rows: int | None = None) -> dict[str, np.ndarray]:
    """Inputs at the profile's `level` (0 min, 1 opt, 2 max): every axis at that size, lengths filling it (an empty
    cache and FIFO, a fresh stream, at min)."""
    sizes = {axis: r[level] for axis, r in ranges.items()}
    if max_rows:
        sizes["batch"] = min(sizes["batch"], max_rows)
    d = manifest.dims
    ints = {DI.chunk_lengths: sizes["chunk_frames"], EI.length: sizes["chunk_frames"],
            DI.spkcache_lengths: sizes["spkcache_frames"], DI.fifo_lengths: sizes["fifo_frames"],
            EI.cache_last_channel_len: 0 if level == 0 else d.enc_last_channel, DJ.targets: 1}
    feed = example_feed(spec, sizes, ints, rng)
    for mel in {DI.chunk, EI.audio_signal} & set(feed):
        feed[mel] = feed[mel] * 3 - 8  # log-mel-like
    return feed


def check(repo: Path, graphs: Path | None = None, seed: int = 0, max_rows: int | None = None) -> dict[str, dict]:
    """Max abs of each plan's outputs against ONNX Runtime (CPU) on the plan's own graph (the fp16 graph: what
    TensorRT's kernels change) and, with `graphs` (the exported folder), on the fp32 graph (what fp16 changes in
    all), at the profile's min, opt and max shapes (`max_rows` caps the rows of the max check, for full-size
    graphs on a small host). Needs the container's TensorRT Python package and polygraphy."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    manifest = Manifest.load(repo / ORCHESTRATOR / "1")
    specs = graph_specs(manifest.dims)
    marker = json.loads((repo / ".mtasr-repository").read_text()) if (repo / ".mtasr-repository").exists() else {}
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {}
    for model in _plan_models(repo):
        plan = repo / model / "1" / PLAN_FILE
        ranges = axis_ranges(manifest, manifest.served_preset, model)
        refs = {"vs_graph": plan.with_name("model.onnx")}
        folder = marker.get("models", {}).get(model, "")
        if graphs is not None and folder.endswith("_fp16"):
            refs["vs_fp32"] = Path(graphs) / folder.removesuffix("_fp16") / "model.onnx"
        out[model] = {}
        with TrtRunner(EngineFromBytes(plan.read_bytes())) as trt:
            for level, name in enumerate(LEVELS):
                feed = check_feeds(specs[model], ranges, level, manifest, rng, max_rows if level == 2 else None)
                got = trt.infer(feed)
                row = {"rows": int(next(iter(feed.values())).shape[0])}
                for ref_name, onnx in refs.items():
                    with OnnxrtRunner(SessionFromOnnx(str(onnx))) as ort:
                        want = ort.infer(feed)
                    row[ref_name] = max(float(np.max(np.abs(np.asarray(got[k], np.float64) - want[k]), initial=0.0))
                                        for k in want)
                    row[f"{ref_name}_finite"] = all(bool(np.isfinite(np.asarray(got[k])).all()) for k in want)
                out[model][name] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model_repository.tensorrt", description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=("script", "check"))
    ap.add_argument("--repo", type=Path, required=True, help="a repository built with --target tensorrt")
    ap.add_argument("--graphs", type=Path, help="check: the exported folder, to compare with the fp32 graphs too")
    ap.add_argument("--max-rows", type=int, help="check: rows of the max-shape check (default: the profile's max)")
    ap.add_argument("--out", type=Path, help="check: write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.action == "script":
        sys.stdout.write(build_script(args.repo))
        return 0
    result = check(args.repo, args.graphs, max_rows=args.max_rows)
    ok = True
    for model, levels in result.items():
        for level, row in levels.items():
            figures = " ".join(f"{k}={v:.3e}" for k, v in row.items() if k.startswith("vs_") and isinstance(v, float))
            finite = all(v for k, v in row.items() if k.endswith("_finite"))
            ok &= finite
            print(f"tensorrt: {model} {level} rows={row['rows']} {figures} finite={'yes' if finite else 'NO'}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

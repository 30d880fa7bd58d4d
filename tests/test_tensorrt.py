"""The tensorrt target, offline: configs for Triton's TensorRT backend, optimisation profiles that cover every
shape the orchestrator sends, the generated plan-building script (run here against a stand-in trtexec), and the
check's min/opt/max inputs run through the graphs on ONNX Runtime (the plans themselves need the container)."""

from __future__ import annotations

import os
import re
import subprocess

import numpy as np
import pytest
from conftest import parse_pbtxt

from model_repository.build import build
from model_repository.tensorrt import (
    DIARIZER_ROWS,
    ENCODER_ROWS,
    OPT_LEVEL,
    SCRIPT,
    axis_ranges,
    check_feeds,
    profile_shapes,
    trtexec_command,
)
from model_repository.triton_config import PLAN_FILE, graph_max_batch
from mtasr.manifest import Manifest
from mtasr.pipeline import PipelineConfig
from mtasr.pipeline.runner import ort_session
from mtasr.spec import graph_specs

FAKE_TRTEXEC = """#!/usr/bin/env bash
# stands in for trtexec: lists --stronglyTyped in --help when STRONG=1, records its arguments, writes the engine
if [ "$1" = "--help" ]; then
    [ "${STRONG:-0}" = 1 ] && echo "  --stronglyTyped  Create a strongly typed network"
    exit 0
fi
echo "$@" >> "$CALLS"
for a in "$@"; do case $a in --saveEngine=*) echo plan > "${a#--saveEngine=}";; esac; done
"""


@pytest.fixture(scope="module")
def trt_repo(tiny_graphs, tmp_path_factory):
    return tiny_graphs, build(tiny_graphs, "tensorrt", tmp_path_factory.mktemp("trt") / "repo", preset="70_13",
                              copy=True)


def test_repository_and_plan_script(trt_repo):
    graphs, repo = trt_repo
    manifest = Manifest.load(graphs)
    for model in ("diarizer", "encoder"):
        cfg = parse_pbtxt((repo / model / "config.pbtxt").read_text())
        assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == PLAN_FILE
        # the plan is built from the fp16 graph, the one the CPU checks measured (byte for byte)
        folder = manifest.graph_names("70_13")[model] + "_fp16"
        assert (repo / model / "1" / "model.onnx").read_bytes() == (graphs / folder / "model.onnx").read_bytes()
    assert not (repo / "decoder_joint").exists()  # in the orchestrator's process, as on gpu
    script = (repo / SCRIPT).read_text()
    assert script.count("--saveEngine=") == 2 and "--fp16" not in script  # precision is in the graph
    assert "--saveEngine=encoder/1/model.plan.partial" in script
    assert f"--builderOptimizationLevel={OPT_LEVEL}" in script and '"--timingCacheFile=$TIMING_CACHE"' in script


@pytest.mark.parametrize("strong", [True, False], ids=["tensorrt10", "tensorrt11"])
def test_plan_script_builds_once_with_the_timing_cache(trt_repo, tmp_path, strong):
    """The generated script against a stand-in trtexec: both plans built (strongly typed where trtexec lists the
    flag), through the shared timing cache; a second run keeps plans newer than their graphs."""
    _, repo = trt_repo
    for plan in repo.glob(f"*/1/{PLAN_FILE}"):
        plan.unlink()
    fake = tmp_path / "trtexec"
    fake.write_text(FAKE_TRTEXEC)
    fake.chmod(0o755)
    calls = tmp_path / "calls"
    env = {**os.environ, "TRTEXEC": str(fake), "CALLS": str(calls), "STRONG": "1" if strong else "0",
           "TIMING_CACHE": str(tmp_path / "timing.cache")}
    first = subprocess.run(["bash", str(repo / SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    lines = calls.read_text().splitlines()
    assert len(lines) == 2 and all(f"--timingCacheFile={tmp_path / 'timing.cache'}" in x for x in lines)
    assert all(("--stronglyTyped" in x) is strong for x in lines)
    assert {p.parent.parent.name for p in repo.glob(f"*/1/{PLAN_FILE}")} == {"diarizer", "encoder"}
    assert not list(repo.glob("*/1/*.partial"))
    second = subprocess.run(["bash", str(repo / SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and second.stdout.count("plan up to date") == 2
    assert len(calls.read_text().splitlines()) == 2
    missing = subprocess.run(["bash", str(repo / SCRIPT)], env={**env, "TRTEXEC": str(tmp_path / "none")},
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no trtexec" in missing.stderr


def test_profiles_cover_what_the_orchestrator_sends(trt_repo):
    graphs, repo = trt_repo
    manifest = Manifest.load(graphs)
    geometry = PipelineConfig.from_manifest(manifest, preset="70_13").geometry
    dims = manifest.dims
    specs = graph_specs(dims)
    enc = profile_shapes(specs["encoder"], axis_ranges(manifest, "70_13", "encoder"))
    lo, opt, hi = enc["audio_signal"]
    top = max(ENCODER_ROWS.max, graph_max_batch(dims))
    assert opt == (ENCODER_ROWS.opt, 128, geometry.step_frames) and hi == (top, 128, geometry.step_frames)
    # the shortest last chunk: the pre-encode cache and the pre-encoder's minimum of new frames
    assert lo == (1, 128, geometry.pre_encode_cache + geometry.min_frames) and lo[2] > geometry.min_frames
    assert enc["spk_targets"][1] == (ENCODER_ROWS.opt, geometry.valid_out_len)
    diar = profile_shapes(specs["diarizer"], axis_ranges(manifest, "70_13", "diarizer"))
    assert diar["chunk"][1][0] == DIARIZER_ROWS.opt and diar["chunk"][2][0] == max(DIARIZER_ROWS.max,
                                                                                  graph_max_batch(dims))
    assert diar["spkcache"][0][1] == 0 and diar["spkcache"][2][1] == dims.spkcache_len  # empty .. full cache
    assert diar["fifo"][0][1] == 0 and diar["fifo"][2][1] == dims.fifo_len
    for model in ("diarizer", "encoder"):  # Triton refuses a config allowing more rows than the plan's profile
        cfg = parse_pbtxt((repo / model / "config.pbtxt").read_text())
        assert axis_ranges(manifest, "70_13", model)["batch"][2] >= cfg.max_batch_size
    cmd = trtexec_command("e.onnx", "e.plan", specs["encoder"], axis_ranges(manifest, "70_13", "encoder"))
    shapes = dict(re.findall(r"--(min|opt|max)Shapes=(\S+)", " ".join(cmd)))
    assert shapes["opt"].startswith(f"audio_signal:{ENCODER_ROWS.opt}x128x{geometry.step_frames},length:")


@pytest.mark.parametrize("model", ["diarizer", "encoder"])
def test_check_shapes_run_through_the_graph(trt_repo, model):
    """The check's inputs at the profile's min, opt and max shapes (rows capped) are valid inputs of the graph the
    plan is built from: ONNX Runtime runs them and every output is finite."""
    graphs, repo = trt_repo
    manifest = Manifest.load(graphs)
    spec = graph_specs(manifest.dims)[model]
    ranges = axis_ranges(manifest, "70_13", model)
    sess = ort_session(repo / model / "1" / "model.onnx")
    rng = np.random.default_rng(0)
    for level in range(3):
        feed = check_feeds(spec, ranges, level, manifest, rng, max_rows=4)
        assert feed[spec.input_names[0]].shape[0] == min(ranges["batch"][level], 4)
        outs = sess.run(None, feed)
        assert all(np.isfinite(o).all() for o in outs if o.dtype.kind == "f")

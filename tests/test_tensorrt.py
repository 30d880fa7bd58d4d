"""The tensorrt target, offline: configs for Triton's TensorRT backend, optimisation profiles that cover every
shape the orchestrator sends, and the generated plan-building script (the plans themselves need the container)."""

from __future__ import annotations

import re

from conftest import parse_pbtxt

from model_repository.build import build
from model_repository.tensorrt import SCRIPT, axis_ranges, profile_shapes, trtexec_command
from model_repository.triton_config import PLAN_FILE, graph_max_batch
from mtasr.manifest import Manifest
from mtasr.pipeline import PipelineConfig
from mtasr.spec import graph_specs


def test_repository_and_plan_script(tiny_parity, tmp_path):
    graphs = tiny_parity["work"] / "graphs"
    repo = build(graphs, "tensorrt", tmp_path / "repo", preset="70_13")
    for model in ("diarizer", "encoder"):
        cfg = parse_pbtxt((repo / model / "config.pbtxt").read_text())
        assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == PLAN_FILE
        assert (repo / model / "1" / "model.onnx").exists()  # fp32 graph the plan is built from
    assert not (repo / "decoder_joint").exists()  # in the orchestrator's process, as on gpu
    script = (repo / SCRIPT).read_text()
    assert script.count("--saveEngine=") == 2 and "--fp16" in script
    assert "--saveEngine=encoder/1/model.plan" in script


def test_profiles_cover_what_the_orchestrator_sends(tiny_parity):
    graphs = tiny_parity["work"] / "graphs"
    manifest = Manifest.load(graphs)
    ranges = axis_ranges(manifest, "70_13")
    cfg = PipelineConfig.from_manifest(manifest, preset="70_13")
    dims = manifest.dims
    specs = graph_specs(dims)
    enc = profile_shapes(specs["encoder"], ranges)
    lo, opt, hi = enc["audio_signal"]
    assert opt == (8, 128, cfg.geometry.step_frames) and hi[0] == graph_max_batch(dims)  # a full step, every row
    assert lo[2] == cfg.geometry.min_frames  # the shortest last chunk still runs
    assert enc["spk_targets"][1] == (8, cfg.geometry.valid_out_len)
    diar = profile_shapes(specs["diarizer"], ranges)
    assert diar["spkcache"][0][1] == 0 and diar["spkcache"][2][1] == dims.spkcache_len  # empty .. full cache
    assert diar["fifo"][2][1] == dims.fifo_len
    cmd = trtexec_command("e.onnx", "e.plan", specs["encoder"], ranges)
    shapes = dict(re.findall(r"--(min|opt|max)Shapes=(\S+)", " ".join(cmd)))
    assert shapes["opt"].startswith(f"audio_signal:8x128x{cfg.geometry.step_frames},length:8,")

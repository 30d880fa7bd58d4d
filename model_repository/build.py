"""Build a Triton model repository from an exported graphs folder, or regenerate the committed reference configs.

    python -m model_repository.build --graphs DIR --target cpu|gpu|tensorrt --out DIR [--preset 70_13]
                                     [--speaker-mode kernel|masked] [--precision fp32|int8] [--copy]
    python -m model_repository.build --write-committed

Models: `diarizer`, `encoder` (the chosen latency preset's graph), `decoder_joint` (fp16 graphs on gpu when
exported; on tensorrt the same graphs plus `build_plans.sh`, which builds their plans in the container; on cpu
`--precision int8` serves the diarizer's and encoder's `_int8` twins, `export --int8`) and
`multitalker` (config; `1/` holds `manifest.json`, the feature files and model.py, copied from
`model_repository/multitalker/model.py` when that exists). Graph files are symlinked into `<model>/1/`
(`--copy` copies them); on cpu each graph model gets `onnx_model.py` as its `1/model.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
from pathlib import Path

from model_repository.triton_config import GRAPH_MODELS, IN_PROCESS_DEFAULT, TARGETS, repository_configs, to_pbtxt
from mtasr.files import atomic_folder
from mtasr.manifest import MANIFEST_FILE, PRECISIONS, Manifest, Serving
from mtasr.pipeline.params import (
    DEFAULT_DIARIZATION_PRESET,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_SESSIONS,
    DIARIZATION_PRESETS,
    SPEAKER_MODES,
)
from mtasr.spec import DIARIZATION, ORCHESTRATOR, PUBLIC_CHECKPOINT_DIMS, TIMINGS, parse_preset, preset_name

log = logging.getLogger("model_repository.build")
HERE = Path(__file__).resolve().parent
ONNX_MODEL_PY = HERE / "onnx_model.py"
ORCHESTRATOR_PY = HERE / ORCHESTRATOR / "model.py"
COMMITTED_DIR = HERE / "configs"
COMMITTED_PRESET = "70_13"
MARKER = ".mtasr-repository"


class BuildError(Exception):
    """Bad graphs folder, preset or output folder."""


def graph_folders(manifest: Manifest, target: str, preset: str, precision: str = PRECISIONS[0]) -> dict[str, str]:
    """Repository model name -> exported graph folder (the `_fp16` copy on gpu when there is one; the int8 twins of
    the diarizer and encoder with precision `int8`, cpu only)."""
    # The int8 graphs are ONNX Runtime's CPU integer kernels (dynamic quantisation); gpu serves fp16 and TensorRT
    # builds its plans from the same fp16 graphs.
    if precision != PRECISIONS[0] and target != "cpu":
        raise BuildError(f"precision {precision} is served on target cpu only, not {target}")
    try:
        chosen = manifest.graph_names(preset, precision)
    except ValueError as exc:
        raise BuildError(str(exc)) from None
    # ONNX Runtime on gpu serves the fp16 copy; TensorRT builds its plan from it, strongly typed (tensorrt.py)
    if target in ("gpu", "tensorrt"):
        chosen = {model: folder + "_fp16" if manifest.graphs.get(folder + "_fp16") == model else folder
                  for model, folder in chosen.items()}
    return chosen


def write_configs(configs: dict, out: Path) -> list[Path]:
    paths = []
    for name, cfg in configs.items():
        path = out / name / "config.pbtxt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(to_pbtxt(cfg))
        paths.append(path)
    return paths


def _place(src: Path, dst: Path, copy: bool) -> None:
    if copy:
        shutil.copy2(src, dst)
    else:
        dst.symlink_to(src.resolve())


def build(graphs: Path, target: str, out: Path, preset: str | None = None, speaker_mode: str = "kernel",
          copy: bool = False, in_process: tuple[str, ...] | None = None, max_sessions: int = DEFAULT_MAX_SESSIONS,
          idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S, timing: str = TIMINGS[0],
          diarization_preset: str = DEFAULT_DIARIZATION_PRESET, precision: str = PRECISIONS[0],
          admission_headroom: float | None = None, lag_limit_s: float | None = None, instances: int = 1,
          reply_budget_s: float | None = None) -> Path:
    """Write a complete repository into `out` (replaced only when it is one this builder wrote): `multitalker`, its
    graph models, and the `diarization` service (the standalone diarizer graph, run in its own process).
    `admission_headroom` / `lag_limit_s` / `reply_budget_s` (None: defaults) and `instances` go to both streaming
    models."""
    graphs, out = Path(graphs), Path(out)
    if target not in TARGETS:
        raise BuildError(f"unknown target {target!r}; use one of {TARGETS}")
    if not (graphs / MANIFEST_FILE).is_file():
        raise BuildError(f"{graphs} has no {MANIFEST_FILE}: not an exported graphs folder")
    try:
        manifest = Manifest.load(graphs)
        preset = preset_name(parse_preset(preset)) if preset else manifest.default_preset
    except ValueError as exc:
        raise BuildError(str(exc)) from None
    folders = graph_folders(manifest, target, preset, precision)
    for folder in folders.values():
        if not (graphs / folder / "model.onnx").is_file():
            raise BuildError(f"missing graph file {graphs / folder / 'model.onnx'}")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise BuildError(f"{out} is not empty and not a repository built here; refusing to replace it")

    in_process = IN_PROCESS_DEFAULT.get(target, ()) if in_process is None else tuple(in_process)
    if not set(in_process) <= set(GRAPH_MODELS):
        raise BuildError(f"--in-process takes models among {GRAPH_MODELS}, got {','.join(in_process)}")
    if max_sessions < 1 or not 0 < idle_timeout_s <= 3600:
        raise BuildError(f"need --max-sessions >= 1 and 0 < --idle-timeout-s <= 3600 (got {max_sessions}, "
                         f"{idle_timeout_s})")
    if timing not in TIMINGS:
        raise BuildError(f"unknown timing {timing!r}; use one of {TIMINGS}")
    if diarization_preset not in DIARIZATION_PRESETS:
        raise BuildError(f"unknown diarization preset {diarization_preset!r}; use one of "
                         f"{', '.join(DIARIZATION_PRESETS)}")
    standalone_name = manifest.diarizer.standalone_graph
    # with precision int8 the diarization service serves the standalone graph's int8 twin under the fp32 name
    standalone = graphs / (manifest.int8.get(standalone_name, standalone_name) if precision == "int8"
                           else standalone_name)
    if not (standalone / "model.onnx").is_file():
        raise BuildError(f"missing graph file {standalone / 'model.onnx'}")
    try:
        configs = repository_configs(manifest.dims, target, preset, speaker_mode, in_process, max_sessions,
                                     idle_timeout_s, timing, diarization_preset, admission_headroom, lag_limit_s,
                                     instances, reply_budget_s)
    except ValueError as exc:
        raise BuildError(str(exc)) from None
    with atomic_folder(out) as work:
        write_configs(configs, work)
        orchestrator = work / ORCHESTRATOR / "1"
        orchestrator.mkdir(parents=True)
        for model, folder in folders.items():
            version = orchestrator / "graphs" / model if model in in_process else work / model / "1"
            version.mkdir(parents=True)
            for f in sorted((graphs / folder).iterdir()):
                _place(f, version / f.name, copy)
            if target == "cpu" and model not in in_process:
                shutil.copy2(ONNX_MODEL_PY, version / "model.py")
        for name in (manifest.features.asr, manifest.features.diarizer, manifest.features.rnnt_weights):
            shutil.copy2(graphs / name, orchestrator / name)
        # The orchestrator's manifest also records how this repository serves (read by mtasr-reference, tensorrt).
        dataclasses.replace(manifest, serving=Serving(preset, speaker_mode, timing, precision)).save(orchestrator)
        if ORCHESTRATOR_PY.is_file():
            shutil.copy2(ORCHESTRATOR_PY, orchestrator / "model.py")
        else:
            log.warning("%s does not exist yet: %s/1/model.py not written, Triton cannot load %s",
                        ORCHESTRATOR_PY, ORCHESTRATOR, ORCHESTRATOR)
        diarization = work / DIARIZATION / "1"
        (diarization / "graphs" / standalone_name).mkdir(parents=True)
        for f in sorted(standalone.iterdir()):
            _place(f, diarization / "graphs" / standalone_name / f.name, copy)
        shutil.copy2(graphs / manifest.features.diarizer, diarization / manifest.features.diarizer)
        manifest.save(diarization)
        if ORCHESTRATOR_PY.is_file():
            shutil.copy2(ORCHESTRATOR_PY, diarization / "model.py")  # the same glue: `pipeline` picks the service
        if target == "tensorrt":
            from model_repository.tensorrt import SCRIPT, build_script

            (work / SCRIPT).write_text(build_script(work))
        (work / MARKER).write_text(json.dumps({"graphs": str(graphs.resolve()), "target": target, "preset": preset,
                                               "speaker_mode": speaker_mode, "precision": precision,
                                               "models": folders,
                                               "in_process": list(in_process)}, indent=2))
    return out


def committed_configs() -> dict[str, str]:
    """`<target>/<model>/config.pbtxt` -> text for the public checkpoints' dims (the committed references)."""
    texts = {}
    for target in TARGETS:
        configs = repository_configs(PUBLIC_CHECKPOINT_DIMS, target, COMMITTED_PRESET, "kernel")
        for name, cfg in configs.items():
            texts[f"{target}/{name}/config.pbtxt"] = to_pbtxt(cfg)
    return texts


def write_committed(root: Path = COMMITTED_DIR) -> list[Path]:
    paths = []
    for rel, text in committed_configs().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model_repository.build", description=__doc__.split("\n")[0])
    ap.add_argument("--graphs", type=Path, help="exported graphs folder (with manifest.json)")
    ap.add_argument("--target", choices=TARGETS, default="cpu")
    ap.add_argument("--out", type=Path, help="repository folder to write")
    ap.add_argument("--preset", help="latency preset, e.g. 70_13 (default: the manifest's default_preset)")
    ap.add_argument("--speaker-mode", choices=SPEAKER_MODES, default="kernel")
    ap.add_argument("--precision", choices=PRECISIONS, default=PRECISIONS[0],
                    help="cpu: serve the int8 twins of the diarizer and encoder (export --int8) or fp32 (default)")
    ap.add_argument("--copy", action="store_true", help="copy graph files instead of symlinking them")
    ap.add_argument("--max-sessions", type=int, default=DEFAULT_MAX_SESSIONS,
                    help="upper bound on live sessions per orchestrator (below it, admission by measured "
                         "capacity; default: %(default)s)")
    ap.add_argument("--timing", choices=TIMINGS, default=TIMINGS[0],
                    help="sessions' default timestamps: audio time (default) or NeMo's arithmetic (parity)")
    ap.add_argument("--diarization-preset", choices=tuple(DIARIZATION_PRESETS), default=DEFAULT_DIARIZATION_PRESET,
                    help="latency setting of the diarization service (default: %(default)s, the tutorial's 1.04 s)")
    ap.add_argument("--idle-timeout-s", type=float, default=DEFAULT_IDLE_TIMEOUT_S,
                    help="a session with no request for this long is dropped and freed (default: %(default)s)")
    ap.add_argument("--admission-headroom", type=float,
                    help="admit a START while the predicted step over all sessions takes at most this fraction of "
                         "the audio it covers (default 0.7; 0: admit by --max-sessions only)")
    ap.add_argument("--lag-limit-s", type=float,
                    help="end a session further behind real time than this (default 10)")
    ap.add_argument("--reply-budget-s", type=float,
                    help="... and while replies completing a step are predicted within this (default 0.16; 0: off)")
    ap.add_argument("--instances", type=int, default=1, help="orchestrator processes per streaming model")
    ap.add_argument("--in-process", metavar="MODELS",
                    help="graph models the orchestrator runs itself with ONNX Runtime instead of through BLS "
                         "(comma list, '' for none; default: " +
                         "; ".join(f"{t}: {','.join(m) or 'none'}" for t, m in IN_PROCESS_DEFAULT.items()) + ")")
    ap.add_argument("--write-committed", action="store_true",
                    help=f"regenerate {COMMITTED_DIR.relative_to(HERE.parent)}/ for the public checkpoints' dims")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(levelname)s: %(message)s")
    if args.write_committed:
        for path in write_committed():
            print(path.relative_to(HERE.parent))
        return 0
    if args.graphs is None or args.out is None:
        ap.error("--graphs and --out are required (or --write-committed)")
    try:
        in_process = None if args.in_process is None else tuple(m for m in args.in_process.split(",") if m)
        out = build(args.graphs, args.target, args.out, args.preset, args.speaker_mode, args.copy, in_process,
                    args.max_sessions, args.idle_timeout_s, args.timing, args.diarization_preset, args.precision,
                    args.admission_headroom, args.lag_limit_s, args.instances, args.reply_budget_s)
    except BuildError as exc:
        print(f"{ap.prog}: error: {exc}", file=sys.stderr)
        return 2
    models = sorted(p.parent.name for p in out.glob("*/config.pbtxt"))
    print(f"repository: {out} ({args.target}, {args.precision}; models: {', '.join(models)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

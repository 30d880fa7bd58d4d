"""`mtasr-export`: .nemo checkpoints (or pretrained names, or random init) -> stateless ONNX graphs.

    mtasr-export --nemo diar.nemo asr.nemo --out model_dir [--presets all] [--fp16] [--int8]
    mtasr-export --pretrained --out model_dir              # public checkpoints (needs hub access)
    mtasr-export --random-init tiny --out model_dir        # real architectures, random weights, offline
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from export.loading import (
    ASR_CLASS,
    ASR_PRETRAINED,
    DIARIZER_CLASS,
    DIARIZER_PRETRAINED,
    ModelSourceError,
    nemo_target,
)
from mtasr.spec import ATT_CONTEXT_SIZES, DEFAULT_ATT_CONTEXT, parse_preset


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mtasr-export", description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--nemo", nargs="+", metavar="PATH",
                     help="the two .nemo files (diarizer and multitalker ASR, any order: told apart by class)")
    src.add_argument("--pretrained", nargs="*", metavar="NAME",
                     help=f"pretrained names (default: {DIARIZER_PRETRAINED} {ASR_PRETRAINED})")
    src.add_argument("--random-init", choices=("tiny", "full"),
                     help="build both models offline with random weights; .nemo files saved under OUT.nemo/")
    ap.add_argument("--out", type=Path, required=True, help="output folder (replaced only on success)")
    ap.add_argument("--presets", nargs="+", default=[",".join(map(str, DEFAULT_ATT_CONTEXT))],
                    help="latency presets as LEFT,RIGHT (e.g. 70,13 70,0) or 'all'; the first is the default")
    ap.add_argument("--fp16", action="store_true", help="also write fp16 copies (<graph>_fp16/) for GPU serving")
    ap.add_argument("--int8", action="store_true",
                    help="also write int8 copies of the diarizer and encoder graphs (<graph>_int8/) for CPU serving")
    return ap


def _presets(values: list[str]) -> list[tuple[int, int]]:
    if values == ["all"]:
        return list(ATT_CONTEXT_SIZES)
    return [parse_preset(v) for v in values]


def _sources(args) -> dict[str, dict[str, str]]:
    """{'diarizer': {'nemo'|'pretrained': value}, 'asr': {...}} from the arguments."""
    if args.nemo:
        found: dict[str, dict[str, str]] = {}
        for path in args.nemo:
            target = nemo_target(Path(path)).rsplit(".", 1)[-1]
            kind = {DIARIZER_CLASS: "diarizer", ASR_CLASS: "asr"}.get(target)
            if kind is None:
                raise ModelSourceError(f"{path} holds a {target or 'model of unknown class'}, "
                                       f"neither a {DIARIZER_CLASS} nor a {ASR_CLASS}")
            if kind in found:
                raise ModelSourceError(f"two {kind} checkpoints given: {found[kind]['nemo']} and {path}")
            found[kind] = {"nemo": str(path)}
        missing = {"diarizer", "asr"} - set(found)
        if missing:
            raise ModelSourceError(f"missing the {' and '.join(sorted(missing))} .nemo file")
        return found
    names = args.pretrained or [DIARIZER_PRETRAINED, ASR_PRETRAINED]
    if len(names) != 2:
        raise ModelSourceError("--pretrained takes the diarizer name then the ASR name")
    return {"diarizer": {"pretrained": names[0]}, "asr": {"pretrained": names[1]}}


def run(args) -> Path:
    from export.exporter import export_all
    from export.loading import load_asr, load_diarizer

    presets = _presets(args.presets)
    if args.random_init:
        from export import builders

        nemo_dir = args.out.with_name(args.out.name + ".nemo")
        nemo_dir.mkdir(parents=True, exist_ok=True)
        diar = builders.build_diarizer(args.random_init)
        asr = builders.build_asr(args.random_init, nemo_dir)
        builders.make_decisive(diar, asr)
        diar.save_to(str(nemo_dir / "diarizer.nemo"))
        asr.save_to(str(nemo_dir / "asr.nemo"))
        del diar, asr
        sources = {"diarizer": {"nemo": str(nemo_dir / "diarizer.nemo")}, "asr": {"nemo": str(nemo_dir / "asr.nemo")}}
    else:
        sources = _sources(args)
    diar = load_diarizer(**sources["diarizer"])
    asr = load_asr(**sources["asr"])
    flat = {k: next(iter(v.values())) for k, v in sources.items()}
    result = export_all(diar, asr, args.out, presets=presets, fp16=args.fp16, sources=flat, int8=args.int8)
    for name, secs in result.seconds.items():
        print(f"exported {name} in {secs:.1f} s")
    return result.out_dir


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.getLogger("nemo_logger").setLevel(logging.ERROR)
    try:
        out = run(args)
    except (ModelSourceError, ValueError, FileNotFoundError) as exc:
        print(f"mtasr-export: error: {exc}", file=sys.stderr)
        return 2
    print(f"mtasr-export: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

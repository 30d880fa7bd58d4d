"""The diarization service (the tutorial's Step 1) against NeMo's own streaming diarization: the served engine
streams the audio in 160 ms pieces; activity within the stage tolerance, turns equal (`diarize=<same>/<turns>`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.diarization_reference import DiarizationReference
from export.parity.figures import Figures, maxabs
from mtasr.diarization import DiarizationConfig, DiarizationEngine
from mtasr.features import FeatureParams
from mtasr.manifest import Manifest
from mtasr.pipeline import OrtRunner

PIECE = 2560  # samples per pushed piece (160 ms)


def stream(engine: DiarizationEngine, audio: np.ndarray, session_id: str) -> tuple[np.ndarray, list[dict]]:
    """One session through the engine: its activity and turns."""
    s = engine.new_stream(session_id, keep_activity=True)
    for pos in range(0, len(audio), PIECE):
        engine.push_audio(s, audio[pos : pos + PIECE], last=pos + PIECE >= len(audio))
        while s.pending:
            engine.step([s])
    engine.finish(s)
    out = s.total_preds(), s.segments.seglst()
    engine.close(s)
    return out


def check(fig: Figures, diar_nemo: Path, graphs: Path, audio: np.ndarray, presets: tuple[str, ...]) -> None:
    """Every preset in `presets`: activity max abs into the diarizer stage, turn agreement into `diarize`."""
    manifest = Manifest.load(graphs)
    features = FeatureParams.load(graphs / manifest.features.diarizer)
    for preset in presets:
        want = DiarizationReference(str(diar_nemo), preset).diarize(audio, "parity")
        engine = DiarizationEngine(DiarizationConfig.from_manifest(manifest, preset), features, OrtRunner(graphs))
        activity, turns = stream(engine, audio, "parity")
        check_name = f"diarization_service_{preset}"
        if activity.shape != want.activity.shape:
            fig.failures.append(f"{check_name}: activity {activity.shape} vs NeMo {want.activity.shape}")
            continue
        fig.bump("diarizer", maxabs(activity, want.activity), check_name)
        same = sum(1 for a, b in zip(turns, want.turns, strict=False) if a == b)
        fig.diarize_same += same
        fig.diarize_total += max(len(turns), len(want.turns))
        fig.details[f"{check_name}_turns"] = f"{same}/{len(want.turns)}"

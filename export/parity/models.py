"""Random-init models with the public architectures, saved and restored through the real `.nemo` loading code."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export import builders
from export.loading import load_asr, load_diarizer
from export.parity.figures import maxabs, to_np


def prepare_models(size: str, work: Path, seed: int = 0) -> tuple[Path, Path, float]:
    """Build random-init (decisive) models, save `.nemo`, restore them through the real loading code.

    Returns the two paths and the max abs parameter difference of the save/restore round trip.
    """
    nemo_dir = work / "nemo"
    nemo_dir.mkdir(parents=True, exist_ok=True)
    diar_path, asr_path = nemo_dir / "diarizer.nemo", nemo_dir / "asr.nemo"
    diar = builders.build_diarizer(size, seed)
    asr = builders.build_asr(size, nemo_dir, seed)
    builders.make_decisive(diar, asr)
    diar.save_to(str(diar_path))
    asr.save_to(str(asr_path))
    worst = 0.0
    for built, loaded in ((diar, load_diarizer(str(diar_path))), (asr, load_asr(str(asr_path)))):
        ref = built.state_dict()
        got = loaded.state_dict()
        if set(ref) != set(got):
            raise AssertionError(f"round trip changed parameter names: {set(ref) ^ set(got)}")
        worst = max(worst, max(maxabs(to_np(ref[k]).astype(np.float64), to_np(got[k])) for k in ref))
    del diar, asr
    return diar_path, asr_path, worst


def quiet_nemo() -> None:
    """NeMo logs every model construction at INFO/WARNING; keep the parity output readable."""
    import logging

    from nemo.utils import logging as nemo_logging

    nemo_logging.setLevel(logging.ERROR)

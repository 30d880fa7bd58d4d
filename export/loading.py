"""Model sources: a local `.nemo`, a pretrained name (hub), or random init with the real architectures."""

from __future__ import annotations

import tarfile
from pathlib import Path

import yaml

DIARIZER_PRETRAINED = "nvidia/diar_streaming_sortformer_4spk-v2"
ASR_PRETRAINED = "nvidia/multitalker-parakeet-streaming-0.6b-v1"
DIARIZER_CLASS = "SortformerEncLabelModel"
ASR_CLASS = "EncDecMultiTalkerRNNTBPEModel"


class ModelSourceError(RuntimeError):
    """A model source that cannot be used; the message is one line for the user."""


def nemo_target(path: Path) -> str:
    """The `target` class path recorded in a `.nemo` archive's model_config.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ModelSourceError(f"no such .nemo file: {path}")
    try:
        with tarfile.open(path, "r:*") as tar:
            member = next((m for m in tar.getmembers() if m.name.endswith("model_config.yaml")), None)
            if member is None:
                raise ModelSourceError(f"{path} is not a NeMo archive (no model_config.yaml)")
            cfg = yaml.safe_load(tar.extractfile(member).read())
    except (tarfile.TarError, OSError, yaml.YAMLError) as exc:
        raise ModelSourceError(f"{path} is not a readable .nemo archive: {exc}") from None
    return str((cfg or {}).get("target", ""))


def _check_class(path: Path, expected: str) -> None:
    target = nemo_target(path)
    if not target.endswith("." + expected):
        found = target.rsplit(".", 1)[-1] or "model of unknown class"
        raise ModelSourceError(f"{path} holds a {found}, not a {expected}")


def load_diarizer(nemo: str | None = None, pretrained: str | None = None):
    """The Streaming Sortformer from a `.nemo` path or a pretrained name, eval mode, CPU."""
    from nemo.collections.asr.models import SortformerEncLabelModel

    if nemo:
        _check_class(Path(nemo), DIARIZER_CLASS)
        model = SortformerEncLabelModel.restore_from(restore_path=str(nemo), map_location="cpu", strict=False)
    else:
        try:
            model = SortformerEncLabelModel.from_pretrained(pretrained or DIARIZER_PRETRAINED, map_location="cpu")
        except Exception as exc:  # hub errors come in many types
            raise ModelSourceError(f"cannot fetch pretrained {pretrained}: {type(exc).__name__}: {exc}") from None
    return model.eval()


def load_asr(nemo: str | None = None, pretrained: str | None = None):
    """The multitalker Parakeet from a `.nemo` path or a pretrained name, eval mode, CPU."""
    from nemo.collections.asr.models import ASRModel

    if nemo:
        _check_class(Path(nemo), ASR_CLASS)
        model = ASRModel.restore_from(restore_path=str(nemo), map_location="cpu")
    else:
        try:
            model = ASRModel.from_pretrained(pretrained or ASR_PRETRAINED, map_location="cpu")
        except Exception as exc:
            raise ModelSourceError(f"cannot fetch pretrained {pretrained}: {type(exc).__name__}: {exc}") from None
        if type(model).__name__ != ASR_CLASS:
            raise ModelSourceError(f"{pretrained} is a {type(model).__name__}, not a {ASR_CLASS}")
    return model.eval()

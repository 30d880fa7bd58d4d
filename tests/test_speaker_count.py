"""The speaker count (4 or 8) follows the model's dims wherever it matters, without models or a server."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from bench.memory import state_bytes
from client.cli import COLORS, SPEAKER_COLORS, activity_image
from model_repository.triton_config import ORCHESTRATOR_MAX_BATCH, graph_max_batch, repository_configs
from mtasr.manifest import dims_from_dict
from mtasr.pipeline.config import ChunkGeometry, PipelineConfig
from mtasr.spec import PUBLIC_CHECKPOINT_DIMS, ModelDims
from mtasr.spkcache import SpeakerCacheParams

DIMS8 = replace(PUBLIC_CHECKPOINT_DIMS, n_spk=8)
STEP_FRAMES = 121  # mel frames of a full [70,13] step: 9 cached + 112 new


def _config(dims: ModelDims, **options) -> PipelineConfig:
    geometry = ChunkGeometry(112, 112, 9, 2, 14, 8)
    return PipelineConfig(preset=(70, 13), geometry=geometry, dims=dims, spkcache=SpeakerCacheParams(n_spk=dims.n_spk),
                          vocabulary=(), blank_id=0, max_symbols=10, **options)


def test_max_num_of_spks_defaults_to_the_diarizer_outputs():
    assert _config(DIMS8).max_num_of_spks == 8
    assert _config(PUBLIC_CHECKPOINT_DIMS).max_num_of_spks == 4
    legacy = {k: v for k, v in PUBLIC_CHECKPOINT_DIMS.to_dict().items() if k != "n_spk"}  # older manifests
    assert _config(dims_from_dict(legacy)).max_num_of_spks == 4
    assert _config(DIMS8, max_num_of_spks=3).max_num_of_spks == 3
    for bad in (9, -1):
        with pytest.raises(ValueError, match="max_num_of_spks"):
            _config(DIMS8, max_num_of_spks=bad)


def test_graph_batch_and_state_scale_with_the_count():
    assert graph_max_batch(DIMS8) == 2 * graph_max_batch(PUBLIC_CHECKPOINT_DIMS) == ORCHESTRATOR_MAX_BATCH * 8
    for target in ("cpu", "gpu"):
        configs = repository_configs(DIMS8, target, "70_13", in_process=())
        assert {configs[m].max_batch_size for m in ("diarizer", "encoder", "decoder_joint")} == {256}
        diar = next(o for o in configs["diarizer"].output if o.name == "spkcache_fifo_chunk_preds")
        assert list(diar.dims) == [-1, 8]
    four, eight = state_bytes(PUBLIC_CHECKPOINT_DIMS, STEP_FRAMES), state_bytes(DIMS8, STEP_FRAMES)
    for part in ("encoder_caches", "decoder_state"):
        assert eight[part] == 2 * four[part]


def test_eight_distinct_speaker_colours():
    assert len(set(COLORS)) == len({c for _, c in SPEAKER_COLORS}) == 8
    activity = np.zeros((5, 8), np.float32)
    activity[2] = 1.0
    img = activity_image(activity)
    assert img.shape == (8, 5, 3)
    np.testing.assert_array_equal(img[:, 0], np.ones((8, 3)))  # silence is white
    assert len({tuple(np.round(c, 3)) for c in img[:, 2]}) == 8  # each speaker in its own colour

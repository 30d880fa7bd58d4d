"""Eight speakers end to end on a real tritonserver: the speaker count comes from the checkpoint.

The tiny parity run exports a random-init 8-output Sortformer with the tiny multitalker ASR
(`export.parity.speakers`, into `<work>/speakers8/`); here those graphs are served and `mtasr-client`'s output
must equal NeMo's own `SpeakerTaggedASR` flow (`max_num_of_spks=8`) and the in-process pipeline, with at least
five speakers transcribed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_same_seglst, parse_pbtxt

from client.cli import write_outputs
from client.server import TritonServer
from client.stream import stream_audio
from export.parity.speakers import MIN_ACTIVE, N_SPK, PRESET, run_pipeline, speakers8_audio
from model_repository.build import build
from model_repository.triton_config import ORCHESTRATOR_MAX_BATCH

SESSION = "speakers8"


@pytest.fixture(scope="module")
def served8(tiny_parity, tmp_path_factory):
    """The 8-speaker graphs served in kernel mode at [70,13]; the `.nemo` files they were exported from."""
    work = tiny_parity["work"]
    graphs = work / "speakers8" / "graphs"
    assert json.loads((graphs / "manifest.json").read_text())["dims"]["n_spk"] == N_SPK
    repo = build(graphs, "cpu", tmp_path_factory.mktemp("repo8") / "repo", preset="_".join(map(str, PRESET)),
                 speaker_mode="kernel", in_process=("decoder_joint",), admission_headroom=0.0)  # by count
    with TritonServer(repo, log_path=repo.with_name("server.log")) as server:
        yield {"url": server.grpc_url, "repo": repo, "graphs": graphs,
               "diar": work / "speakers8" / "diarizer.nemo", "asr": work / "nemo" / "asr.nemo"}
    assert server.proc is None or server.proc.poll() is not None, "server still running after stop"


def test_eight_speakers_served_equal_reference(served8, tmp_path):
    from export.reference import Reference

    audio = speakers8_audio()
    ref = Reference(str(served8["diar"]), str(served8["asr"]), PRESET, masked_asr=False)
    for timing in ("nemo", "audio"):
        want = ref.transcribe(audio, SESSION, timing)
        result = stream_audio(served8["url"], audio, session_id=SESSION, chunk_ms=160, timing=timing)
        assert_same_seglst(result.seglst, want)
        # every speaker's diarizer column reached the client, equal to what NeMo's flow saw
        assert result.activity.shape == ref.diar_preds.shape == (ref.diar_preds.shape[0], N_SPK)
        np.testing.assert_allclose(result.activity, ref.diar_preds, rtol=0, atol=1e-4)
    assert result.seglst == want  # timing audio: the same function of the same tokens, exact
    assert result.seglst == run_pipeline(served8["graphs"], audio, SESSION)[0].segments.seglst()  # and in process
    speakers = {s["speaker"] for s in result.seglst}
    assert len(speakers) >= MIN_ACTIVE, speakers
    assert speakers <= {f"speaker_{i}" for i in range(N_SPK)}
    # the client's RTTM and PNG carry every speaker
    written = write_outputs(tmp_path, SESSION, result)
    rttm = {line.split()[7] for line in (tmp_path / f"{SESSION}.rttm").read_text().splitlines()}
    assert len(rttm) >= MIN_ACTIVE and tmp_path / f"{SESSION}.png" in written


def test_graph_batch_covers_every_speaker(served8):
    """Through BLS one encoder call carries every speaker of every sequence of an execute: 8 rows per sequence."""
    cfg = parse_pbtxt((served8["repo"] / "encoder" / "config.pbtxt").read_text())
    assert cfg.max_batch_size == ORCHESTRATOR_MAX_BATCH * N_SPK

"""End to end on a real tritonserver: mtasr-client's SegLST equals NeMo's own `SpeakerTaggedASR` flow
(mtasr-reference) on the committed espeak-ng samples, for both speaker modes and two latency presets; chunk
size and concurrency do not change the output; bad input gets a clear error and the server keeps serving."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_seglst

from client.server import TritonServer
from client.stream import new_session_key, stream_audio
from model_repository.build import build
from mtasr.audio import read_audio, synth_conversation
from mtasr.spec import SESSION_KEY_HEADER

DATA = Path(__file__).resolve().parent / "data"
COMBOS = {  # (preset, speaker mode) -> committed samples compared with the reference
    ("70_13", "kernel"): ["two_speakers_overlap", "three_speakers", "long_three_speakers"],
    ("70_13", "masked"): ["two_speakers_overlap"],
    ("70_0", "kernel"): ["three_speakers"],
    ("70_0", "masked"): ["two_speakers_overlap"],
}
DEFAULT = ("70_13", "kernel")  # what `build` makes by default: `default_server`


def _serve(tiny_parity, tmp_path_factory, preset: str, mode: str):
    repo = build(tiny_parity["work"] / "graphs", "cpu", tmp_path_factory.mktemp("repo") / "repo", preset=preset,
                 speaker_mode=mode, admission_headroom=0.0)  # by count: equality must not depend on the load
    with TritonServer(repo, log_path=repo.with_name("server.log")) as server:
        yield {"url": server.grpc_url, "preset": preset, "mode": mode, "server": server}
    assert server.proc is None or server.proc.poll() is not None, "server still running after stop"


@pytest.fixture(scope="module", params=list(COMBOS), ids=lambda c: f"{c[0]}-{c[1]}")
def served_combo(request, tiny_parity, tmp_path_factory, default_server):
    if request.param == DEFAULT:  # the run's shared server (tests/conftest.py)
        yield {"url": default_server.grpc_url, "preset": DEFAULT[0], "mode": DEFAULT[1], "server": default_server}
    else:
        yield from _serve(tiny_parity, tmp_path_factory, *request.param)


@pytest.fixture(scope="module")
def served(default_server):
    """The default configuration ([70,13], kernel mode) for the behaviour tests: the run's shared server."""
    return {"url": default_server.grpc_url, "preset": DEFAULT[0], "mode": DEFAULT[1], "server": default_server}


def test_served_equals_reference(served_combo, tiny_parity):
    """Both timings: NeMo's own SegLST (timing nemo) and NeMo's hypotheses mapped to audio time (timing audio,
    the default), which must also keep every word inside the audio."""
    from export.reference import Reference

    nemo = tiny_parity["work"] / "nemo"
    served = served_combo
    ctx = tuple(int(x) for x in served["preset"].split("_"))
    ref = Reference(str(nemo / "diarizer.nemo"), str(nemo / "asr.nemo"), ctx, served["mode"] == "masked")
    for name in COMBOS[(served["preset"], served["mode"])]:
        audio = read_audio(DATA / f"{name}.flac")
        for timing in ("nemo", "audio"):
            want = ref.transcribe(audio, name, timing)
            got = stream_audio(served["url"], audio, session_id=name, chunk_ms=160, timing=timing).seglst
            assert want and len({s["speaker"] for s in want}) >= 2, f"{name}: reference output too thin to compare"
            assert_same_seglst(got, want)
            if timing == "audio":
                assert got == want  # the same function of the same tokens: exact
                assert max(w[1] for s in got for w in s["word_times"]) <= len(audio) / 16000 + 0.1


def test_client_chunk_size_does_not_matter(served):
    audio = read_audio(DATA / "two_speakers_overlap.flac")
    outs = [stream_audio(served["url"], audio, sequence_id=200 + i, chunk_ms=ms).seglst
            for i, ms in enumerate((20, 160, 1000))]
    assert outs[0] and outs[0] == outs[1] == outs[2]


def test_concurrent_sessions_equal_alone(served):
    audios = [synth_conversation(5.0 + i % 3, n_speakers=2 + i % 2, seed=40 + i) for i in range(8)]
    alone = [stream_audio(served["url"], a, sequence_id=300 + i).seglst for i, a in enumerate(audios)]
    together: list = [None] * len(audios)

    def run(i: int) -> None:
        together[i] = stream_audio(served["url"], audios[i], sequence_id=400 + i).seglst

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(audios))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert together == alone


# ------------------------------------------------------------------------------------------------ bad input
_KEYS: dict[int, str] = {}  # sequence id -> the session key its client sends


def _infer(url, inputs, sequence_id, start=False, end=False):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    key = _KEYS.setdefault(sequence_id, new_session_key())
    try:
        return client.infer("multitalker", inputs, sequence_id=sequence_id, sequence_start=start, sequence_end=end,
                            headers={SESSION_KEY_HEADER: key})
    finally:
        client.close()


def _tensor(name, array, dtype):
    import tritonclient.grpc as grpcclient

    t = grpcclient.InferInput(name, list(array.shape), dtype)
    t.set_data_from_numpy(array)
    return t


BAD = {
    "wrong_dtype": (lambda: [_tensor("audio", np.zeros((1, 160), np.int32), "INT32")], True, "data-type"),
    "wrong_rank": (lambda: [_tensor("audio", np.zeros((1, 1, 160), np.float32), "FP32")], True, "shape"),
    "empty_chunk": (lambda: [_tensor("audio", np.zeros((1, 0), np.float32), "FP32")], True, "empty audio piece"),
    "nan": (lambda: [_tensor("audio", np.full((1, 160), np.nan, np.float32), "FP32")], True, "NaN or Inf"),
    "inf": (lambda: [_tensor("audio", np.full((1, 160), np.inf, np.float32), "FP32")], True, "NaN or Inf"),
    "oversize": (lambda: [_tensor("audio", np.zeros((1, 40000), np.float32), "FP32")], True, "over 2 s"),
    "no_audio": (lambda: [], True, "exactly one of"),
    "before_start": (lambda: [_tensor("audio", np.zeros((1, 160), np.float32), "FP32")], False, "START"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_clear_error_server_keeps_serving(served, case):
    from tritonclient.utils import InferenceServerException

    make, start, message = BAD[case]
    audio = read_audio(DATA / "three_speakers.flac")
    expected = stream_audio(served["url"], audio, sequence_id=500).seglst
    # a sequence that is mid-stream while the bad request arrives
    good = [_tensor("audio", audio[None, :16000].copy(), "FP32")]
    _infer(served["url"], good, 600, start=True)
    with pytest.raises(InferenceServerException) as err:
        _infer(served["url"], make(), 601, start=start)
    assert message.lower() in err.value.message().lower(), err.value.message()
    assert served["server"].proc.poll() is None, "server died"
    _infer(served["url"], [_tensor("audio", audio[None, 16000:32000].copy(), "FP32")], 600, end=True)
    assert stream_audio(served["url"], audio, sequence_id=502).seglst == expected


def test_request_after_end_and_unknown_corrid(served):
    from tritonclient.utils import InferenceServerException

    piece = [_tensor("audio", np.zeros((1, 1600), np.float32), "FP32")]
    _infer(served["url"], piece, 700, start=True, end=True)
    for corrid in (700, 9999):  # after END; never started
        with pytest.raises(InferenceServerException) as err:
            _infer(served["url"], piece, corrid)
        assert "start" in err.value.message().lower()


def test_more_speakers_than_the_diarizer_has_and_vanishing_client(served, tiny_parity):
    n_spk = json.loads((tiny_parity["work"] / "graphs" / "manifest.json").read_text())["dims"]["n_spk"]  # 4
    crowd = synth_conversation(8.0, n_speakers=6, seed=9)
    result = stream_audio(served["url"], crowd, sequence_id=800)
    assert result.activity.shape[1] == n_spk
    assert {s["speaker"] for s in result.seglst} <= {f"speaker_{i}" for i in range(n_spk)}
    # a client that starts a sequence and disappears: the server keeps serving others
    _infer(served["url"], [_tensor("audio", crowd[None, :8000].copy(), "FP32")], 801, start=True)
    audio = read_audio(DATA / "two_speakers_overlap.flac")
    assert stream_audio(served["url"], audio, sequence_id=802).seglst

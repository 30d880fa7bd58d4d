"""mtasr-client's one-line errors: unreadable file, server down, model not ready."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from conftest import ROOT, run_cli

from client.server import free_ports
from mtasr.spec import SAMPLE_RATE


def write_wav(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """16-bit PCM WAV."""
    sf.write(str(path), np.clip(samples, -1, 1), rate, subtype="PCM_16")


def test_unreadable_file(tmp_path):
    bad = tmp_path / "x.wav"
    bad.write_text("not audio")
    proc = run_cli("client", str(bad), "--out", str(tmp_path / "o"), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"mtasr-client: error: cannot read {bad}")
    proc = run_cli("client", str(tmp_path / "missing.wav"), "--out", str(tmp_path / "o"), timeout=120)
    missing = tmp_path / "missing.wav"
    assert proc.stderr.strip().splitlines()[-1] == f"mtasr-client: error: no such audio file: {missing}"


def test_max_speakers_must_not_be_negative(tmp_path):
    proc = run_cli("client", str(ROOT / "tests" / "data" / "three_speakers.flac"), "--out", str(tmp_path / "o"),
                   "--max-speakers", "-1", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == ("mtasr-client: error: --max-speakers must be >= 0 (0: no cap), "
                                                    "got -1")


def test_server_down(tmp_path):
    from mtasr.audio import synth_conversation

    wav = tmp_path / "a.wav"
    write_wav(wav, synth_conversation(1.0, 2))
    port = free_ports(1)[0]
    proc = run_cli("client", str(wav), "--out", str(tmp_path / "o"), "--url", f"127.0.0.1:{port}", timeout=120)
    assert proc.returncode == 2
    assert "no Triton server answers at" in proc.stderr.strip().splitlines()[-1]


def test_model_not_ready(tmp_path, tiny_parity):
    """A server whose repository lacks `multitalker`: the client says the model is not ready."""
    from client.server import TritonServer
    from model_repository.build import build
    from mtasr.audio import synth_conversation

    repo = build(tiny_parity["work"] / "graphs", "cpu", tmp_path / "repo", in_process=(),  # graphs as models
                 admission_headroom=0.0)
    wav = tmp_path / "a.wav"
    write_wav(wav, synth_conversation(1.0, 2))
    with TritonServer(repo, models=["decoder_joint"]) as server:
        proc = run_cli("client", str(wav), "--out", str(tmp_path / "o"), "--url", server.grpc_url, timeout=120)
    assert proc.returncode == 2
    assert "model 'multitalker' is not ready" in proc.stderr.strip().splitlines()[-1]


def test_serve_and_reference_defaults_follow_the_demo():
    """After `make demo`, `make serve` and `mtasr-reference` need no arguments: their defaults are its folders."""
    import subprocess

    from client import demo
    from export import reference

    dry = subprocess.run(["make", "-s", "-n", "serve"], cwd=demo.ROOT, capture_output=True, text=True, timeout=120)
    graphs = demo.graphs_folder().relative_to(demo.ROOT)
    assert f"--graphs {graphs} " in dry.stdout, dry.stdout[-2000:]
    assert "--address 127.0.0.1 " in dry.stdout
    default = next(a.default for a in reference.build_parser()._actions if a.dest == "models")
    assert demo.ROOT / default == demo.DEMO_REPO / "multitalker" / "1"


def test_output_formats_and_low_rate_warning(tmp_path):
    from mtasr.audio import synth_conversation

    wav = tmp_path / "a.wav"
    write_wav(wav, synth_conversation(1.0, 2))
    for args, message in ((["--format", "seglst,bogus"], "--format takes a comma list"),
                          (["--format", "ctm", "--timing", "nemo"], "need word times")):
        proc = run_cli("client", str(wav), "--out", str(tmp_path / "o"), *args, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1], proc.stderr
    narrow = tmp_path / "phone.wav"
    write_wav(narrow, synth_conversation(1.0, 2)[::2], rate=8000)
    port = free_ports(1)[0]
    proc = run_cli("client", str(narrow), "--out", str(tmp_path / "o"), "--url", f"127.0.0.1:{port}", timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == (f"mtasr-client: warning: {narrow} is sampled at 8000 Hz: upsampled to 16000 Hz, but accuracy "
                        "drops for band-limited audio"), lines


def test_word_outputs():
    from client.cli import ctm_lines, word_records

    seg = {"session_id": "s", "speaker": "speaker_1", "start_time": 0.4, "end_time": 1.2, "words": "nine oh",
           "word_times": [[0.4, 0.72], [0.88, 1.2]]}
    records = word_records([seg])
    assert [(r["word"], r["start_time"], r["end_time"]) for r in records] == [("nine", 0.4, 0.72), ("oh", 0.88, 1.2)]
    assert ctm_lines(records) == ["s speaker_1 0.40 0.32 nine", "s speaker_1 0.88 0.32 oh"]


def test_live_view_final_in_colour_interim_dim(capsys):
    from client.cli import CLEAR_LINE, COLORS, DIM, LiveView

    seg = {"speaker": "speaker_1", "start_time": 0.4, "end_time": 1.2, "words": "nine oh"}
    view = LiveView(color=True, interim=True)
    view.show("s", False, [], [{**seg, "words": "nine"}])
    view.show("s", False, [seg], [])
    view.close()
    out = capsys.readouterr().out
    assert out.startswith(f"{DIM}speaker_1: nine")  # the open utterance, dim, on the status line
    assert f"{CLEAR_LINE}{COLORS[1]}speaker_1    0.40-   1.20  nine oh" in out  # replaced by the final line
    plain = LiveView(color=False, interim=False)
    plain.show("s", True, [seg], [seg])
    assert capsys.readouterr().out == "[s] speaker_1    0.40-   1.20  nine oh\n"  # no terminal: finals only

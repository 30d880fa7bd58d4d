"""Bad input to the exporter: one clear error line, exit 2, nothing half-written."""

from __future__ import annotations

from conftest import run_cli

from mtasr.manifest import Manifest


def _error_lines(proc) -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("mtasr-export: error:")]


def test_missing_file(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("export", "--nemo", str(tmp_path / "nope.nemo"), str(tmp_path / "nope2.nemo"), "--out", str(out))
    assert proc.returncode == 2
    assert _error_lines(proc) == [f"mtasr-export: error: no such .nemo file: {tmp_path / 'nope.nemo'}"]
    assert not out.exists() and not list(tmp_path.glob("out*"))


def test_not_a_nemo_archive(tmp_path):
    bogus = tmp_path / "bogus.nemo"
    bogus.write_text("hello")
    proc = run_cli("export", "--nemo", str(bogus), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    [line] = _error_lines(proc)
    assert "is not a readable .nemo archive" in line
    assert not (tmp_path / "out").exists()


def test_wrong_model_class(tiny_parity, tmp_path):
    diar = tiny_parity["work"] / "nemo" / "diarizer.nemo"
    proc = run_cli("export", "--nemo", str(diar), str(diar), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    [line] = _error_lines(proc)
    assert "two diarizer checkpoints given" in line
    proc = run_cli("export", "--nemo", str(diar), "--out", str(tmp_path / "out"))
    assert _error_lines(proc) == ["mtasr-export: error: missing the asr .nemo file"]


def test_unknown_preset(tiny_parity, tmp_path):
    nemo = tiny_parity["work"] / "nemo"
    out = tmp_path / "out"
    proc = run_cli("export", "--nemo", str(nemo / "diarizer.nemo"), str(nemo / "asr.nemo"), "--out", str(out),
                   "--presets", "70,5")
    assert proc.returncode == 2
    [line] = _error_lines(proc)
    assert "unknown latency preset [70, 5]" in line
    assert not list(tmp_path.iterdir())


def test_export_real_loading_path(tiny_parity, tmp_path):
    """`--nemo` in either order exports every preset (`--int8`: with int8 twins of the diarizer and encoder graphs);
    the output folder appears only when complete."""
    nemo = tiny_parity["work"] / "nemo"
    out = tmp_path / "model"
    proc = run_cli("export", "--nemo", str(nemo / "asr.nemo"), str(nemo / "diarizer.nemo"), "--out", str(out),
                   "--presets", "all", "--int8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = {p.name for p in out.iterdir()}
    graphs = {"diarizer", "diarizer_standalone", "encoder_70_13", "encoder_70_6", "encoder_70_1", "encoder_70_0"}
    assert graphs | {"decoder_joint", "manifest.json", "features_asr.npz", "features_diarizer.npz"} <= names
    assert {g + "_int8" for g in graphs} <= names and "decoder_joint_int8" not in names
    assert Manifest.load(out).int8 == {g: g + "_int8" for g in graphs}
    assert not (tmp_path / "model.partial").exists()

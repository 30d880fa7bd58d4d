"""Typed contracts: the manifest is checked on load, example inputs follow the spec, wrappers take the spec's inputs
in the spec's order."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

from export.onnx_export import check_signature, export_graph
from mtasr.examples import example_feed
from mtasr.manifest import (
    MANIFEST_FILE,
    AsrInfo,
    DiarizerInfo,
    Manifest,
    ManifestError,
    Preset,
    Serving,
    Sources,
    StreamingCfg,
    dims_from_dict,
)
from mtasr.spec import PUBLIC_CHECKPOINT_DIMS, decoder_joint_spec, diarizer_spec, encoder_spec


def _manifest() -> Manifest:
    streaming = StreamingCfg((105, 112), (105, 112), (0, 9), 2, 14)
    return Manifest(
        dims=PUBLIC_CHECKPOINT_DIMS, default_preset="70_13",
        presets={"70_13": Preset((70, 13), "encoder_70_13", streaming)},
        diarizer=DiarizerInfo("diarizer", 2, "diarizer_standalone", {"spkcache_len": 188, "sil_threshold": 0.2}),
        asr=AsrInfo("decoder_joint", 1024, 10, ("<unk>", "a"), 8),
        graphs={"diarizer": "diarizer", "diarizer_standalone": "diarizer", "encoder_70_13": "encoder",
                "decoder_joint": "decoder_joint", "encoder_70_13_fp16": "encoder"},
        sources=Sources("d.nemo", "a.nemo"))


# ------------------------------------------------------------------------------------------------------ manifest
def test_manifest_round_trip_and_accessors(tmp_path):
    m = _manifest()
    assert Manifest.load(m.save(tmp_path).parent) == m
    data = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert "serving" not in data and data["presets"]["70_13"]["att_context_size"] == [70, 13]
    assert m.graph_names() == {"diarizer": "diarizer", "encoder": "encoder_70_13", "decoder_joint": "decoder_joint"}
    assert m.preset().streaming_cfg.step_frames == 121 and m.served_preset == "70_13"
    served = dataclasses.replace(m, serving=Serving("70_13", "masked", "nemo"))
    assert Manifest.from_dict(json.loads(json.dumps(served.to_dict()))) == served
    with pytest.raises(ValueError, match=r"preset 70_0 was not exported; the graphs have \['70_13'\]"):
        m.preset("70_0")
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.default_preset = "70_0"


def _broken(change) -> dict:
    data = copy.deepcopy(_manifest().to_dict())
    change(data)
    return data


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["asr"].pop("blank_id"), "missing key 'asr.blank_id'"),
    (lambda d: d.pop("presets"), "missing key 'presets'"),
    (lambda d: d["dims"].pop("fifo_len"), "missing key 'dims.fifo_len'"),
    (lambda d: d["dims"].update(fifo_len="188"), "'dims.fifo_len' must be an int"),
    (lambda d: d["presets"]["70_13"]["streaming_cfg"].update(valid_out_len=None),
     "'presets.70_13.streaming_cfg.valid_out_len' must be an int"),
    (lambda d: d["diarizer"]["spkcache"].update(fifo_len=True), "'diarizer.spkcache.fifo_len' must be a number"),
    (lambda d: d["asr"].update(vocabulary="ab"), "'asr.vocabulary' must be a list of strings"),
    (lambda d: d["graphs"].update(decoder_joint="joint"), "'graphs.decoder_joint' must be one of"),
    (lambda d: d["graphs"].pop("decoder_joint"), "graphs lists no decoder_joint graph 'decoder_joint'"),
    (lambda d: d.update(default_preset="70_0"), "preset 70_0 was not exported"),
    (lambda d: d["presets"]["70_13"].update(att_context_size=[70, 6]), "preset '70_13' has att_context_size"),
    (lambda d: d.update(int8=[]), "'int8' must be an object"),
    (lambda d: d.update(int8={"diarizer": 8}), "'int8.diarizer' must be a string"),
    (lambda d: d.update(int8={"diarizer": "diarizer_int8"}), "int8 twin 'diarizer_int8' of 'diarizer' must be"),
    (lambda d: d.update(int8={"decoder_joint": "decoder_joint"}), "int8 twin 'decoder_joint' of 'decoder_joint'"),
    (lambda d: d.update(int8={"encoder_70_13": "diarizer"}), "int8 twin 'diarizer' of 'encoder_70_13' must be"),
    (lambda d: d.update(serving={"preset": "70_13", "speaker_mode": "kernel", "timing": "audio", "precision": "int4"}),
     "serving precision must be one of ('fp32', 'int8')"),
])
def test_manifest_errors_name_the_file_and_key(change, message):
    with pytest.raises(ManifestError, match="^/x/manifest.json: ") as err:
        Manifest.from_dict(_broken(change), "/x/manifest.json")
    assert message in str(err.value)


def test_manifest_int8_twins():
    m = dataclasses.replace(_manifest(), graphs={**_manifest().graphs, "diarizer_int8": "diarizer",
                                                 "encoder_70_13_int8": "encoder"},
                            int8={"diarizer": "diarizer_int8", "encoder_70_13": "encoder_70_13_int8"})
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert m.graph_names(precision="int8") == {"diarizer": "diarizer_int8", "encoder": "encoder_70_13_int8",
                                               "decoder_joint": "decoder_joint"}
    assert m.graph_names(precision="fp32") == _manifest().graph_names()
    with pytest.raises(ValueError, match=r"no int8 copy of diarizer, encoder_70_13 \(export with --int8\)"):
        _manifest().graph_names(precision="int8")
    with pytest.raises(ValueError, match="unknown precision 'bf16'"):
        m.graph_names(precision="bf16")
    # a repository's manifest written before precisions existed serves fp32
    old = _broken(lambda d: d.update(serving={"preset": "70_13", "speaker_mode": "kernel", "timing": "audio"}))
    assert Manifest.from_dict(old).serving == Serving("70_13", "kernel", "audio", "fp32")


def test_manifest_load_errors(tmp_path):
    with pytest.raises(ManifestError, match="no such file"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("{")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("[]")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        Manifest.load(tmp_path)


def test_dims_ignore_unknown_keys():
    values = {**PUBLIC_CHECKPOINT_DIMS.to_dict(), "n_future_dim": 3}
    assert dims_from_dict(values) == PUBLIC_CHECKPOINT_DIMS
    old = _broken(lambda d: d.update(graph_bytes={}, fp16=True))  # keys no reader needs are ignored
    assert Manifest.from_dict(old) == _manifest()


# ------------------------------------------------------------------------------------------------------ examples
def test_example_feed_follows_the_spec():
    d = PUBLIC_CHECKPOINT_DIMS
    spec = encoder_spec(d)
    feed = example_feed(spec, {"batch": 3, "chunk_frames": 121, "enc_frames": 14},
                        {"length": 121, "cache_last_channel_len": [70, 0, 5]}, rng=1)
    assert list(feed) == spec.input_names
    for t in spec.inputs:
        assert feed[t.name].shape == t.resolve(batch=3, chunk_frames=121, enc_frames=14)
        assert feed[t.name].dtype == t.dtype
    assert feed["length"].tolist() == [121] * 3 and feed["cache_last_channel_len"].tolist() == [70, 0, 5]
    assert 0 <= feed["spk_targets"].min() and feed["spk_targets"].max() < 1  # activities are probabilities
    assert feed["audio_signal"].min() < 0
    again = example_feed(spec, {"batch": 3, "chunk_frames": 121, "enc_frames": 14},
                         {"length": 121, "cache_last_channel_len": [70, 0, 5]}, rng=1)
    assert all(np.array_equal(feed[k], again[k]) for k in feed)
    with pytest.raises(ValueError, match="no size for dynamic axis 'fifo_frames'"):
        example_feed(diarizer_spec(d), {"batch": 1, "chunk_frames": 8, "spkcache_frames": 0},
                     {"chunk_lengths": 8, "spkcache_lengths": 0})
    with pytest.raises(ValueError, match="no value for integer input 'targets'"):
        example_feed(decoder_joint_spec(d), {"batch": 1}, {})


# ------------------------------------------------------------------------------------------- wrapper signatures
class _Joint(torch.nn.Module):
    def forward(self, encoder_frame, targets, h_in, c_in):
        return encoder_frame[:, :1] + targets[:, None], h_in, c_in


class _SwappedJoint(torch.nn.Module):
    def forward(self, encoder_frame, targets, c_in, h_in):  # h and c swapped: ONNX names go by position
        return encoder_frame[:, :1] + targets[:, None], h_in, c_in


def test_a_wrapper_with_swapped_inputs_is_refused(tmp_path):
    spec = decoder_joint_spec(PUBLIC_CHECKPOINT_DIMS)
    check_signature(_Joint(), spec)
    with pytest.raises(TypeError, match=r"_SwappedJoint.forward\(encoder_frame, targets, c_in, h_in\) does not take "
                                        r"the decoder_joint spec's inputs in order \(encoder_frame, targets, h_in, "
                                        r"c_in\)"):
        export_graph(_SwappedJoint(), spec, example_feed(spec, {"batch": 2}, {"targets": 1}), tmp_path / "g")
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_export_wrappers_take_the_spec_inputs():
    from export.wrappers import DecoderJointStep, DiarizerStep, EncoderStep

    d = PUBLIC_CHECKPOINT_DIMS
    for cls, spec in ((DiarizerStep, diarizer_spec(d)), (EncoderStep, encoder_spec(d)),
                      (DecoderJointStep, decoder_joint_spec(d))):
        check_signature(cls.__new__(cls), spec)

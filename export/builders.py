"""Random-init NeMo models with the public checkpoints' architectures, built offline.

`tiny` sizes are for tests (seconds to build and export); `full` sizes match
`nvidia/diar_streaming_sortformer_4spk-v2` (117.7 M params) and
`nvidia/multitalker-parakeet-streaming-0.6b-v1` (622.3 M params).
"""

from __future__ import annotations

import random
import string
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mtasr.spec import ATT_CONTEXT_SIZES, N_MELS, NUM_SPEAKERS, SAMPLE_RATE

SIZES = ("tiny", "full")

# (fc_d_model, fc_layers, fc_heads, subsampling_channels, tf_d_model, tf_layers, tf_heads, tf_inner)
# `demo`: the trained demo models (demo_models/), not part of SIZES (parity/export sizes).
_DIAR_DIMS = {"tiny": (64, 2, 4, 64, 48, 2, 4, 96), "demo": (96, 4, 4, 64, 96, 2, 4, 384),
              "full": (512, 17, 8, 256, 192, 18, 8, 768)}
# (d_model, layers, heads, subsampling_channels, pred_hidden, pred_layers, joint_hidden, vocab)
_ASR_DIMS = {"tiny": (64, 2, 4, 64, 64, 2, 64, 64), "demo": (144, 6, 4, 96, 160, 1, 160, 128),
             "full": (1024, 24, 8, 256, 640, 2, 640, 1024)}


def _preprocessor(normalize: str, pad_to: int | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
        "sample_rate": SAMPLE_RATE,
        "normalize": normalize,
        "window_size": 0.025,
        "window_stride": 0.01,
        "window": "hann",
        "features": N_MELS,
        "n_fft": 512,
        "frame_splicing": 1,
        "dither": 0.00001,
    }
    if pad_to is not None:
        cfg["pad_to"] = pad_to
    return cfg


def diarizer_config(size: str, n_spk: int = NUM_SPEAKERS) -> dict[str, Any]:
    """Streaming Sortformer v2 config (the NeMo example config's fields) at `size`, with `n_spk` outputs (4 or 8).

    `max_num_of_spks` (what NeMo's multitalker flow reads from the diarizer's config) and `num_spks` (the sigmoid
    head's width) follow `n_spk`.
    """
    fc_d, fc_layers, fc_heads, sub_ch, tf_d, tf_layers, tf_heads, tf_inner = _DIAR_DIMS[size]
    return {
        "sample_rate": SAMPLE_RATE,
        "pil_weight": 0.5,
        "ats_weight": 0.5,
        "max_num_of_spks": n_spk,
        "streaming_mode": True,
        "model_defaults": {"fc_d_model": fc_d, "tf_d_model": tf_d},
        # streaming Sortformer v2 normalises nothing (a stream cannot see the whole file), like the ASR
        "preprocessor": _preprocessor("NA", 0),
        "sortformer_modules": {
            "_target_": "nemo.collections.asr.modules.sortformer_modules.SortformerModules",
            "num_spks": n_spk,
            "dropout_rate": 0.5,
            "fc_d_model": fc_d,
            "tf_d_model": tf_d,
            "spkcache_len": 188,
            "fifo_len": 188,
            "chunk_len": 6,
            "spkcache_update_period": 144,
            "chunk_left_context": 1,
            "chunk_right_context": 7,
            "spkcache_sil_frames_per_spk": 3,
            "scores_add_rnd": 0,
            "pred_score_threshold": 0.25,
            "max_index": 99999,
            "scores_boost_latest": 0.05,
            "sil_threshold": 0.2,
            "strong_boost_rate": 0.75,
            "weak_boost_rate": 1.5,
            "min_pos_scores_rate": 0.5,
            "causal_attn_rate": 0.5,
            "causal_attn_rc": 7,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": N_MELS,
            "feat_out": -1,
            "n_layers": fc_layers,
            "d_model": fc_d,
            "subsampling": "dw_striding",
            "subsampling_factor": 8,
            "subsampling_conv_channels": sub_ch,
            "causal_downsampling": False,
            "ff_expansion_factor": 4,
            "self_attention_model": "rel_pos",
            "n_heads": fc_heads,
            "att_context_size": [-1, -1],
            "att_context_style": "regular",
            "xscaling": True,
            "untie_biases": True,
            "pos_emb_max_len": 5000,
            "conv_kernel_size": 9,
            "conv_norm_type": "batch_norm",
            "conv_context_size": None,
            "dropout": 0.1,
            "dropout_pre_encoder": 0.1,
            "dropout_emb": 0.0,
            "dropout_att": 0.1,
        },
        "transformer_encoder": {
            "_target_": "nemo.collections.asr.modules.transformer.transformer_encoders.TransformerEncoder",
            "num_layers": tf_layers,
            "hidden_size": tf_d,
            "inner_size": tf_inner,
            "num_attention_heads": tf_heads,
            "attn_score_dropout": 0.5,
            "attn_layer_dropout": 0.5,
            "ffn_dropout": 0.5,
            "hidden_act": "relu",
            "pre_ln": False,
            "pre_ln_final_layer_norm": True,
        },
        "loss": {"_target_": "nemo.collections.asr.losses.bce_loss.BCELoss", "weight": None, "reduction": "mean"},
        "train_ds": None,
        "validation_ds": None,
        "test_ds": None,
    }


def asr_config(size: str, tokenizer_dir: str) -> dict[str, Any]:
    """Multitalker cache-aware FastConformer-RNNT config at `size`."""
    d_model, layers, heads, sub_ch, pred_hidden, pred_layers, joint_hidden, _ = _ASR_DIMS[size]
    return {
        "sample_rate": SAMPLE_RATE,
        "compute_eval_loss": False,
        "model_defaults": {"enc_hidden": d_model, "pred_hidden": pred_hidden, "joint_hidden": joint_hidden},
        "spk_kernel_type": "ff",
        "spk_kernel_layers": [0],
        "add_bg_spk_kernel": True,
        "tokenizer": {"dir": tokenizer_dir, "type": "bpe"},
        "preprocessor": _preprocessor("NA", 0),
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": N_MELS,
            "feat_out": -1,
            "n_layers": layers,
            "d_model": d_model,
            "use_bias": False,
            "subsampling": "dw_striding",
            "subsampling_factor": 8,
            "subsampling_conv_channels": sub_ch,
            "causal_downsampling": True,
            "ff_expansion_factor": 4,
            "self_attention_model": "rel_pos",
            "n_heads": heads,
            "att_context_size": [list(c) for c in ATT_CONTEXT_SIZES],
            "att_context_style": "chunked_limited",
            "att_context_probs": None,
            "xscaling": True,
            "untie_biases": True,
            "pos_emb_max_len": 5000,
            "conv_kernel_size": 9,
            "conv_norm_type": "layer_norm",
            "conv_context_size": "causal",
            "dropout": 0.1,
            "dropout_pre_encoder": 0.1,
            "dropout_emb": 0.0,
            "dropout_att": 0.1,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder",
            "normalization_mode": None,
            "random_state_sampling": False,
            "blank_as_pad": True,
            "prednet": {"pred_hidden": pred_hidden, "pred_rnn_layers": pred_layers, "t_max": None, "dropout": 0.2},
        },
        "joint": {
            "_target_": "nemo.collections.asr.modules.RNNTJoint",
            "log_softmax": None,
            "preserve_memory": False,
            "fuse_loss_wer": False,
            "jointnet": {"joint_hidden": joint_hidden, "activation": "relu", "dropout": 0.2},
        },
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}},
        "loss": {"loss_name": "default", "warprnnt_numba_kwargs": {"fastemit_lambda": 0.005, "clamp": -1.0}},
        "train_ds": None,
        "validation_ds": None,
        "test_ds": {"manifest_filepath": None, "shuffle": False, "batch_size": 1},
    }


def train_tokenizer(out_dir: Path, vocab_size: int, seed: int = 0) -> Path:
    """Train a SentencePiece BPE tokenizer offline on a synthetic corpus (numbers, letters, random words)."""
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    numbers = (
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand oh"
    ).split()
    letters = list(string.ascii_lowercase)
    lines = []
    for _ in range(20000):
        words = []
        for _ in range(rng.randint(3, 12)):
            kind = rng.random()
            if kind < 0.5:
                words.append(rng.choice(numbers))
            elif kind < 0.7:
                words.append(rng.choice(letters))
            else:
                words.append("".join(rng.choice(letters) for _ in range(rng.randint(2, 9))))
        lines.append(" ".join(words))
    corpus = out_dir / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(out_dir / "tokenizer"),
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        bos_id=-1,
        eos_id=-1,
        unk_id=0,
        pad_id=-1,
        num_threads=2,
        minloglevel=2,
    )
    proc = spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
    vocab = [proc.id_to_piece(i) for i in range(proc.get_piece_size())]
    (out_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    corpus.unlink()
    return out_dir


def build_diarizer(size: str, seed: int = 0, n_spk: int = NUM_SPEAKERS):
    """A random-init `SortformerEncLabelModel` at `size` with `n_spk` speaker outputs, in eval mode."""
    import torch
    from nemo.collections.asr.models import SortformerEncLabelModel

    torch.manual_seed(seed)
    model = SortformerEncLabelModel(cfg=OmegaConf.create(diarizer_config(size, n_spk)))
    return model.eval()


def build_asr(size: str, work_dir: Path, seed: int = 0):
    """A random-init `EncDecMultiTalkerRNNTBPEModel` at `size` (tokenizer trained into `work_dir`)."""
    import torch
    from nemo.collections.asr.models.multitalker_asr_models import EncDecMultiTalkerRNNTBPEModel

    vocab = _ASR_DIMS[size][-1]
    tok_dir = train_tokenizer(Path(work_dir) / f"tokenizer_{size}", vocab, seed)
    torch.manual_seed(seed)
    model = EncDecMultiTalkerRNNTBPEModel(cfg=OmegaConf.create(asr_config(size, str(tok_dir))))
    return model.eval()


def make_diarizer_decisive(diar, gain: float = 8.0) -> None:
    """Scale the Sortformer's sigmoid head by `gain` (see `make_decisive`)."""
    import torch

    head = diar.sortformer_modules.single_hidden_to_spks
    with torch.no_grad():
        head.weight.mul_(gain)
        head.bias.mul_(gain)


def make_decisive(diar, asr, diar_gain: float = 8.0, joint_gain: float = 8.0, emit_rate: float = 0.3) -> None:
    """Scale the output layers of random-init models so decisions are not at a knife edge.

    Random weights leave speaker sigmoids near 0.5 and joint logits nearly tied, where a 1e-6 difference
    between two correct implementations flips a threshold or an argmax. Larger output weights spread the
    scores (sigmoids near 0/1, clear argmax) without changing any code path. The blank logit is then biased
    so that about `emit_rate` of the frames of a random-feature encoder output emit a token at the start
    state (otherwise a gained joint emits max_symbols tokens on every frame).
    """
    import torch

    from export.wrappers import DecoderJointStep

    blank = int(asr.decoder.blank_idx)
    out = asr.joint.joint_net[-1]
    gen = torch.Generator().manual_seed(0)
    make_diarizer_decisive(diar, diar_gain)
    with torch.no_grad():
        out.weight.mul_(joint_gain)
        feats = torch.randn(1, asr.encoder._feat_in, 800, generator=gen) * 3 - 8
        enc, _ = asr.encoder(audio_signal=feats, length=torch.tensor([800]))
        frames = enc[0].T
        n, layers, hidden = frames.shape[0], asr.decoder.pred_rnn_layers, asr.decoder.pred_hidden
        logits, _, _ = DecoderJointStep(asr).eval()(
            frames, torch.full((n,), blank), torch.zeros(n, layers, hidden), torch.zeros(n, layers, hidden))
        others = torch.cat([logits[:, :blank], logits[:, blank + 1 :]], dim=1).max(dim=1).values
        out.bias[blank] += torch.quantile(others - logits[:, blank], 1.0 - emit_rate)

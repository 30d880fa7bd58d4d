"""Train the small demo diarizer and multitalker ASR on synthetic espeak-ng sessions (CPU, NeMo training paths).

    python -m demo_models.train --out demo_models/checkpoints [--diar-steps N --asr-steps N --asr-sessions N ...]

Generates the data (demo_models.data), trains a SentencePiece tokenizer on the training texts, then trains
`SortformerEncLabelModel` (streaming mode, PIL + ATS losses) and `EncDecMultiTalkerRNNTBPEModel` (speaker
kernels, cache-aware chunked_limited encoder with the four latency presets, RNNT loss) with a Lightning
trainer through NeMo's own Lhotse datasets: `LhotseAudioToSpeechE2ESpkDiarDataset` for the diarizer and
`LhotseSpeechToTextSpkBpeDataset` for the ASR (speaker targets from the reference segments). Writes
`diar_demo.nemo`, `asr_demo.nemo` and `training.json` (the loss curves and wall times) into --out.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from demo_models import rnnt_loss
from demo_models.data import write_split

SEED = 1234


def train_tokenizer(out_dir: Path, texts: list[str], vocab_size: int) -> Path:
    """SentencePiece BPE on the training texts, plus the vocab.txt NeMo wants beside it."""
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(out_dir / "tokenizer"), vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0, pad_id=-1, num_threads=1, minloglevel=2,
        hard_vocab_limit=False, seed_sentencepiece_size=1000000, shuffle_input_sentence=False)
    proc = spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
    (out_dir / "vocab.txt").write_text("\n".join(proc.id_to_piece(i) for i in range(proc.get_piece_size())) + "\n")
    corpus.unlink()
    return out_dir


def _lhotse_ds(cuts: Path, batch_size: int, **extra: Any) -> dict[str, Any]:
    return {"use_lhotse": True, "cuts_path": str(cuts), "batch_size": batch_size, "shuffle": True, "seed": SEED,
            "shard_seed": SEED, "num_workers": 0, "sample_rate": 16000, "pin_memory": False, **extra}


def _optim(lr: float, steps: int, max_warmup: int = 50) -> dict[str, Any]:
    """AdamW + NeMo CosineAnnealing over `steps`, warming up for a tenth of them (at most `max_warmup`)."""
    warmup = max(min(steps // 10, max_warmup), 1)
    return {"name": "adamw", "lr": lr, "betas": [0.9, 0.98], "weight_decay": 1e-3,
            "sched": {"name": "CosineAnnealing", "warmup_steps": warmup, "min_lr": lr / 20, "max_steps": steps}}


class CurveRecorder:
    """Lightning callback factory: records the logged training metrics every `every` steps and prints them."""

    @staticmethod
    def make(keys: tuple[str, ...], every: int, name: str):
        from lightning.pytorch.callbacks import Callback

        class _Recorder(Callback):
            def __init__(self) -> None:
                self.points: list[dict[str, float]] = []
                self.t0 = time.monotonic()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
                step = trainer.global_step
                if step % every and step != trainer.max_steps:
                    return
                metrics = trainer.callback_metrics
                point = {"step": step, "seconds": round(time.monotonic() - self.t0, 1)}
                if isinstance(outputs, dict) and "loss" in outputs:
                    point["loss"] = round(float(outputs["loss"]), 4)
                for k in keys:
                    if k in metrics:
                        point[k] = round(float(metrics[k]), 4)
                self.points.append(point)
                print(f"[{name}] " + " ".join(f"{k}={v}" for k, v in point.items()), flush=True)

        return _Recorder()


def _time_budget(budget_s: float, start: int = 10, measure_at: int = 30):
    """Lightning callback: at step `measure_at`, shrink max_steps (and the cosine schedule) to fit `budget_s`.

    The rate is measured from step `start` on: the first steps carry one-off costs (numba compilation, caches),
    and steps with a frozen encoder are faster than the rest.
    """
    from lightning.pytorch.callbacks import Callback

    class _Budget(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            step = trainer.global_step
            if step == 0 and not hasattr(self, "t0"):
                self.t0 = time.monotonic()
            if step == start and not hasattr(self, "t_start"):
                self.t_start = time.monotonic()
            if step != measure_at or hasattr(self, "done"):
                return
            self.done = True
            per_step = (time.monotonic() - self.t_start) / (measure_at - start)
            fit = max(measure_at + 1, int((budget_s - (self.t_start - self.t0)) / per_step))
            if fit < trainer.max_steps:
                print(f"time budget {budget_s:.0f} s at {per_step:.2f} s/step: {trainer.max_steps} -> {fit} steps",
                      flush=True)
                trainer.fit_loop.epoch_loop.max_steps = fit
                for cfg in trainer.lr_scheduler_configs:
                    cfg.scheduler.max_steps = fit

    return _Budget()


def _stop_file(path: Path):
    """Lightning callback: stop training cleanly (the model is still saved) once `path` exists."""
    from lightning.pytorch.callbacks import Callback

    class _Stop(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            if path.exists():
                print(f"{path} exists: stopping at step {trainer.global_step}", flush=True)
                trainer.should_stop = True

    return _Stop()


def _trainer(steps: int, callbacks: list) -> Any:
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import TQDMProgressBar

    return Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                   callbacks=[TQDMProgressBar(refresh_rate=5), *callbacks], log_every_n_steps=10,
                   limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=1.0, enable_model_summary=False,
                   use_distributed_sampler=False)


def train_diarizer(cuts: Path, out: Path, steps: int, stream_steps: int, batch_size: int, lr: float,
                   chunk_len: int, budget_s: float) -> dict:
    """Sortformer through its own training_step (PIL + ATS BCE losses) on NeMo's Lhotse diarization dataset.

    Phase 1 trains offline (`streaming_mode` off: one pass over the session); phase 2 fine-tunes in streaming
    mode (`forward_streaming`: speaker cache + FIFO over chunks of `chunk_len` frames). The saved model is in
    streaming mode; inference sets its own chunk sizes (export.exporter.configure_diarizer_streaming).
    """
    import torch
    from lightning.pytorch import seed_everything
    from nemo.collections.asr.models import SortformerEncLabelModel
    from omegaconf import OmegaConf, open_dict

    from export.builders import diarizer_config

    seed_everything(SEED, workers=True)
    cfg = diarizer_config("demo")
    # No per-utterance feature normalization: in the multitalker flow the diarizer reads the ASR's raw log-mels.
    cfg["preprocessor"].update({"normalize": "NA", "pad_to": 0})
    cfg["sortformer_modules"].update({"dropout_rate": 0.1, "chunk_len": chunk_len})
    cfg["transformer_encoder"].update({"attn_score_dropout": 0.1, "attn_layer_dropout": 0.1, "ffn_dropout": 0.1})
    cfg["train_ds"] = _lhotse_ds(cuts, batch_size, num_speakers=4, window_stride=0.01, subsampling_factor=8)
    cfg["streaming_mode"] = False
    phases = [("offline", steps, 0.75), ("streaming", stream_steps, 0.25)]
    model, curves, t0 = None, {}, time.monotonic()
    for name, n, share in phases:
        if n <= 0:
            continue
        phase_lr = lr if name == "offline" else lr / 4
        rec = CurveRecorder.make(("loss", "train_f1_acc", "train_f1_acc_ats"), 10, f"diar-{name}")
        trainer = _trainer(n, [rec, _time_budget(budget_s * share), _stop_file(out / "STOP")])
        if model is None:
            model = SortformerEncLabelModel(cfg=OmegaConf.create(cfg), trainer=trainer)
        else:
            model.streaming_mode = True
            model.set_trainer(trainer)
        with open_dict(model.cfg):
            model.cfg.optim = _optim(phase_lr, n, max_warmup=30)
        model.setup_optimization(model.cfg.optim)
        trainer.fit(model)
        curves[name] = rec.points
    wall = time.monotonic() - t0
    with open_dict(model.cfg):
        model.cfg.streaming_mode = True
        model.cfg.sortformer_modules.chunk_len = 6
    model.streaming_mode = True
    model.sortformer_modules.chunk_len = 6
    model.eval()
    path = out / "diar_demo.nemo"
    model.save_to(str(path))
    params = sum(p.numel() for p in model.parameters())
    torch.set_grad_enabled(True)
    return {"path": str(path), "params": params, "batch_size": batch_size, "wall_s": round(wall, 1),
            "steps": {k: (v[-1]["step"] if v else 0) for k, v in curves.items()}, "curve": curves}


def feature_stats(model: Any, cuts: Path, count: int = 64) -> tuple[float, float]:
    """Mean and standard deviation of the model's own (unnormalised) log-mel features over `count` cuts."""
    import torch
    from lhotse import CutSet

    values = []
    with torch.no_grad():
        for cut in CutSet.from_file(cuts).subset(first=count):
            audio = torch.from_numpy(cut.load_audio()[0])[None]
            feats, _ = model.preprocessor(input_signal=audio, length=torch.tensor([audio.shape[1]]))
            values.append(feats.flatten())
    x = torch.cat(values)
    return float(x.mean()), float(x.std())


def fold_input_normalization(model: Any, mean: float, std: float) -> None:
    """Initialise the first subsampling convolution as if its input were normalised: conv((x - mean) / std).

    The streaming models read raw log-mels (`normalize: NA`: no utterance statistics exist mid-stream), whose
    mean (about -8.5) dwarfs their variation (std about 2.4). Folding a fixed normalisation into the first
    convolution's initial weights and bias changes only the starting point, not the architecture or the
    features the served pipeline computes.
    """
    import torch

    conv = model.encoder.pre_encode.conv[0]
    with torch.no_grad():
        conv.weight /= std
        conv.bias -= mean * conv.weight.sum(dim=(1, 2, 3))


# The ASR encoder's streaming options switched off for pre-training (parameter shapes are unchanged).
OFFLINE_ENCODER = {"att_context_size": [-1, -1], "att_context_style": "regular", "causal_downsampling": False,
                   "conv_context_size": None}


def pretrain_encoder_ctc(cuts: Path, tok_dir: Path, out: Path, steps: int, batch_size: int, lr: float,
                         budget_s: float, offline: bool = True) -> tuple[dict, dict]:
    """CTC pre-training of the ASR encoder with NeMo's `EncDecCTCModelBPE` (torch CTC loss), offline by default.

    One cut per utterance of the sessions without overlap (about 1.3 s, 2-7 words). The encoder is the ASR's
    with the streaming constraints off (full attention context, symmetric convolutions, non-causal
    subsampling): same parameters except one more frequency bin after causal subsampling
    (_fit_subsampling_output). On one fixed batch of 8 cuts, CTC loss after 60 AdamW steps was 12.2 offline
    and 20.2 with the streaming constraints. The learning rate matters more: at 1e-3 the subsampling output
    collapses within 50 steps onto one direction scaled by loudness, which the first LayerNorm erases (the
    encoder output's sensitivity to its input fell from 0.20 to 0.00) and every later step stays on the
    label-prior plateau; at 2e-4 it recovered to 0.81 by step 150 with the held-out loss 16.2 -> 13.4.
    Returns the encoder's state dict, which initialises the streaming multitalker RNNT's encoder (as NeMo
    recipes do with `init_from_nemo_model`), and a report.
    """
    from lhotse import CutSet
    from lightning.pytorch import seed_everything
    from nemo.collections.asr.models import EncDecCTCModelBPE
    from omegaconf import OmegaConf

    from export.builders import asr_config

    seed_everything(SEED, workers=True)
    clean = cuts.with_name("cuts_ctc_utterances.jsonl.gz")
    if not clean.exists():  # one cut per utterance: short targets leave the all-blank plateau sooner
        CutSet.from_file(cuts).filter(_overlap_free).trim_to_supervisions(keep_overlapping=False).to_file(clean)
    rnnt_cfg = asr_config("demo", str(tok_dir))
    encoder = {**rnnt_cfg["encoder"], **(OFFLINE_ENCODER if offline else {})}
    cfg = {"sample_rate": rnnt_cfg["sample_rate"], "tokenizer": rnnt_cfg["tokenizer"],
           "preprocessor": rnnt_cfg["preprocessor"], "encoder": encoder,
           "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder",
                       "feat_in": rnnt_cfg["encoder"]["d_model"], "num_classes": -1, "vocabulary": []},
           "train_ds": _lhotse_ds(clean, batch_size), "optim": _optim(lr, steps)}
    rec = CurveRecorder.make(("train_loss", "training_batch_wer"), 10, "asr-ctc")
    trainer = _trainer(steps, [rec, _time_budget(budget_s), _stop_file(out / "STOP")])
    model = EncDecCTCModelBPE(cfg=OmegaConf.create(cfg), trainer=trainer)
    mean, std = feature_stats(model, clean)
    fold_input_normalization(model, mean, std)
    t0 = time.monotonic()
    trainer.fit(model)
    report = {"steps": rec.points[-1]["step"] if rec.points else 0, "batch_size": batch_size,
              "wall_s": round(time.monotonic() - t0, 1), "curve": rec.points}
    return model.encoder.state_dict(), report


def _fit_subsampling_output(state: dict, target: dict) -> dict:
    """Causal subsampling pads the frequency axis differently, so its output projection sees one more frequency
    bin (e.g. 17 x 96 inputs instead of 16 x 96); copy the shared bins and start the extra one at zero."""
    key = "pre_encode.out.weight"
    src, dst = state[key], target[key]
    if src.shape == dst.shape:
        return state
    channels = target["pre_encode.conv.0.weight"].shape[0]
    fitted = dst.new_zeros(dst.shape[0], channels, dst.shape[1] // channels)
    bins = src.shape[1] // channels
    fitted[:, :, :bins] = src.view(src.shape[0], channels, bins)
    return {**state, key: fitted.view_as(dst)}


def _overlap_free(cut: Any) -> bool:
    sups = sorted(cut.supervisions, key=lambda s: s.start)
    return all(a.end <= b.start for a, b in zip(sups, sups[1:], strict=False))


def _freeze_encoder(steps: int):
    """Lightning callback: keep the (pre-trained) encoder fixed, dropout off, for the first `steps` steps while
    the randomly initialised prediction network, joint and speaker kernels find it; then train everything."""
    from lightning.pytorch.callbacks import Callback

    class _Freeze(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            frozen = trainer.global_step < steps
            for p in pl_module.encoder.parameters():
                p.requires_grad_(not frozen)
            pl_module.encoder.train(not frozen)

    return _Freeze()


def train_asr(cuts: Path, tok_dir: Path, out: Path, steps: int, batch_size: int, lr: float, budget_s: float,
              encoder_init: dict | None = None, freeze_steps: int = 0, encoder_lr: float | None = None,
              batch_duration: float | None = None) -> dict:
    """Multitalker RNNT through its training_step (speaker + background targets, RNNT loss) on Lhotse.

    `encoder_init`: a pre-trained encoder state dict (pretrain_encoder_ctc); without it the first convolution
    gets the folded input normalisation. `batch_duration` (seconds of audio per batch, `batch_size` the most
    cuts) turns on Lhotse's duration bucketing, so that short and long sessions mix without padding waste.
    `lr` is for the prediction network, joint and speaker kernels,
    `encoder_lr` (an optimizer param group) for the encoder, which stays fixed for the first `freeze_steps`.
    Measured on the demo data (batch 8): with the encoder fixed, the joint reads the pre-trained encoder
    within 200 steps at lr 3e-3 but not in 800 steps at 3e-4; training the encoder from step 0 (even at 3e-4
    under a 2e-3 joint) kept the loss on the label-prior plateau (about 20) for the 290 steps it ran.
    """
    from lightning.pytorch import seed_everything
    from nemo.collections.asr.models.multitalker_asr_models import EncDecMultiTalkerRNNTBPEModel
    from omegaconf import OmegaConf

    from export.builders import asr_config

    seed_everything(SEED, workers=True)
    cfg = asr_config("demo", str(tok_dir))
    bucketing = {"use_bucketing": True, "num_buckets": 4, "batch_duration": batch_duration,
                 "num_cuts_for_bins_estimate": 2000, "bucket_buffer_size": 2000} if batch_duration else {}
    cfg["train_ds"] = _lhotse_ds(cuts, batch_size, num_speakers=4, num_sample_per_mel_frame=160,
                                 num_mel_frame_per_asr_frame=8, **bucketing)
    cfg["optim"] = _optim(lr, steps)
    if encoder_lr is not None:
        cfg["optim_param_groups"] = {"encoder": {"lr": encoder_lr}}
    rec = CurveRecorder.make(("train_loss", "training_batch_wer"), 10, "asr")
    frozen = freeze_steps if encoder_init is not None else 0
    callbacks = [rec, _time_budget(budget_s, frozen + 10, frozen + 30), _stop_file(out / "STOP")]
    if frozen:
        callbacks.append(_freeze_encoder(frozen))
    trainer = _trainer(steps, callbacks)
    model = EncDecMultiTalkerRNNTBPEModel(cfg=OmegaConf.create(cfg), trainer=trainer)
    rnnt_loss.install(model)  # same loss as NeMo's numba one (tests/test_rnnt_loss.py), vectorised for CPU
    if encoder_init is not None:
        encoder_init = _fit_subsampling_output(encoder_init, model.encoder.state_dict())
        missing, unexpected = model.encoder.load_state_dict(encoder_init, strict=False)
        if unexpected or any(k in dict(model.encoder.named_parameters()) for k in missing):
            raise RuntimeError(f"pre-trained encoder does not fit: missing {missing}, unexpected {unexpected}")
    else:
        fold_input_normalization(model, *feature_stats(model, cuts))
    t0 = time.monotonic()
    trainer.fit(model)
    wall = time.monotonic() - t0
    model.eval()
    path = out / "asr_demo.nemo"
    model.save_to(str(path))
    params = sum(p.numel() for p in model.parameters())
    return {"path": str(path), "params": params, "steps": rec.points[-1]["step"] if rec.points else 0,
            "batch_size": batch_size, "wall_s": round(wall, 1), "curve": rec.points}


DATA_SEEDS = {"train_diar": SEED, "train_asr": SEED + 1, "train_asr_long": SEED + 2}


def _data(folder: Path, sessions: int, max_seconds: float, t0: float) -> tuple[Path, list[str]]:
    """Generate (once) a training split into `folder`; returns its CutSet path and its utterance texts."""
    summary_path = folder / "sessions.jsonl"
    if not summary_path.exists():
        summaries = write_split(folder, sessions, "train", DATA_SEEDS[folder.name], max_seconds)
        print(f"data: {folder.name}: {len(summaries)} sessions, {sum(s['duration'] for s in summaries) / 3600:.2f} h "
              f"({time.monotonic() - t0:.0f} s)", flush=True)
    texts = []
    for line in summary_path.read_text().splitlines():
        texts += [g["words"] for g in json.loads(Path(json.loads(line)["seglst_filepath"]).read_text())]
    return folder / "cuts.jsonl.gz", texts


def _union(first: Path, second: Path, out: Path) -> Path:
    """One CutSet file holding the cuts of both."""
    from lhotse import CutSet

    if not out.exists():
        (CutSet.from_file(first) + CutSet.from_file(second)).to_file(out)
    return out


def train_in_parallel(argv: list[str], out: Path) -> int:
    """Run `--only diar` and `--only asr` as two single-threaded processes (logs in <out>/<model>.log), print
    their latest curve points every 30 s, and merge their reports into <out>/training.json."""
    import subprocess

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    children = {}
    for name in ("diar", "asr"):
        with (out / f"{name}.log").open("w") as log:  # the child keeps its own copy of the descriptor
            children[name] = subprocess.Popen([sys.executable, "-m", "demo_models.train", *argv, "--only", name,
                                               "--threads", "1"], stdout=log, stderr=subprocess.STDOUT)
    while any(p.poll() is None for p in children.values()):
        time.sleep(30)
        latest = [_last_point(out / f"{name}.log") for name in children]
        print(f"[{(time.monotonic() - t0) / 60:5.1f} min] " + " | ".join(x for x in latest if x), flush=True)
    failed = [name for name, p in children.items() if p.returncode]
    if failed:
        print(f"training failed: {failed}; see {[str(out / f'{n}.log') for n in failed]}", flush=True)
        return 1
    report = {"seed": SEED, "threads": "2 processes x 1 thread"}
    for name in children:
        report.update(json.loads((out / f"training_{name}.json").read_text()))
    report["total_wall_s"] = round(time.monotonic() - t0, 1)
    (out / "training.json").write_text(json.dumps(report, indent=1))
    print(f"training done: total wall time {report['total_wall_s'] / 60:.1f} min -> {out / 'training.json'}")
    return 0


def _last_point(log: Path) -> str:
    """The last curve line (`[name] step=... loss=...`) a child has written, if any."""
    text = log.read_text(errors="replace") if log.exists() else ""
    points = re.findall(r"\[[a-z-]+\] step=\d+ seconds=\S+ loss=\S+", text)
    return points[-1] if points else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demo_models.train", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("demo_models/checkpoints"))
    ap.add_argument("--data", type=Path, default=None, help="data folder (default: <out>/data)")
    ap.add_argument("--diar-sessions", type=int, default=800)
    ap.add_argument("--diar-max-seconds", type=float, default=10.0)
    ap.add_argument("--asr-sessions", type=int, default=2400)
    ap.add_argument("--asr-max-seconds", type=float, default=4.5,
                    help="short ASR sessions: more examples per CPU second")
    ap.add_argument("--asr-long-sessions", type=int, default=600,
                    help="longer sessions added to the RNNT stage, so that the streaming cache fills as in use")
    ap.add_argument("--asr-long-max-seconds", type=float, default=12.0)
    ap.add_argument("--asr-batch-seconds", type=float, default=40.0,
                    help="RNNT batches by duration (bucketed); --asr-batch caps the cuts per batch")
    ap.add_argument("--diar-steps", type=int, default=4000, help="offline phase (capped by --diar-minutes)")
    ap.add_argument("--diar-stream-steps", type=int, default=1000, help="streaming phase")
    ap.add_argument("--asr-steps", type=int, default=3000, help="capped by --asr-minutes")
    ap.add_argument("--diar-minutes", type=float, default=32.0, help="diarizer training time cap (75 %% offline)")
    ap.add_argument("--asr-minutes", type=float, default=26.0, help="ASR (RNNT) training time cap")
    ap.add_argument("--ctc-steps", type=int, default=4000, help="CTC pre-training of the ASR encoder (0: none)")
    ap.add_argument("--encoder-init", type=Path, default=None,
                    help="an asr_ctc_encoder.pt from an earlier run: skip CTC pre-training and start from it")
    ap.add_argument("--freeze-steps", type=int, default=300,
                    help="first RNNT steps with the pre-trained encoder fixed while the joint learns to read it")
    ap.add_argument("--ctc-minutes", type=float, default=14.0, help="CTC pre-training time cap")
    ap.add_argument("--ctc-streaming", action="store_true",
                    help="CTC pre-training with the ASR's streaming encoder configuration (default: offline)")
    ap.add_argument("--ctc-lr", type=float, default=3e-4,
                    help="above ~1e-3 the subsampling collapses to one direction in the first 50 steps")
    ap.add_argument("--ctc-batch", type=int, default=16)
    ap.add_argument("--diar-batch", type=int, default=8)
    ap.add_argument("--asr-batch", type=int, default=16)
    ap.add_argument("--diar-lr", type=float, default=5e-4,
                    help="offline phase (streaming: a quarter); held-out DER 17.7 %% at 5e-4, 25.8 %% at 2e-3")
    ap.add_argument("--asr-lr", type=float, default=3e-3, help="RNNT lr: prediction network, joint, speaker kernels")
    ap.add_argument("--asr-encoder-lr", type=float, default=3e-4, help="RNNT lr of the pre-trained encoder")
    ap.add_argument("--diar-train-chunk-len", type=int, default=24,
                    help="Sortformer chunk_len (80 ms frames) during training; inference sets its own")
    ap.add_argument("--vocab", type=int, default=128)
    ap.add_argument("--only", choices=("diar", "asr"), default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", action="store_true",
                    help="train the diarizer and the ASR at once in two processes, one thread each")
    args = ap.parse_args(argv)
    if args.parallel and args.only is None:
        return train_in_parallel([a for a in (argv if argv is not None else sys.argv[1:]) if a != "--parallel"],
                                 args.out)

    import torch
    from nemo.utils import logging

    logging.setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    t_start = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data or args.out / "data"
    report_path = args.out / (f"training_{args.only}.json" if args.only else "training.json")
    report: dict[str, Any] = json.loads(report_path.read_text()) if report_path.exists() else {}
    report.update({"seed": SEED, "threads": args.threads})
    if args.only in (None, "diar"):
        cuts, texts = _data(data / "train_diar", args.diar_sessions, args.diar_max_seconds, t_start)
        report["diarizer_data"] = {"sessions": args.diar_sessions, "max_seconds": args.diar_max_seconds,
                                   "utterances": len(texts), "wall_s": round(time.monotonic() - t_start, 1)}
        report["diarizer"] = train_diarizer(cuts, args.out, args.diar_steps, args.diar_stream_steps, args.diar_batch,
                                            args.diar_lr, args.diar_train_chunk_len, args.diar_minutes * 60)
        report_path.write_text(json.dumps(report, indent=1))
    if args.only in (None, "asr"):
        t0 = time.monotonic()
        cuts, texts = _data(data / "train_asr", args.asr_sessions, args.asr_max_seconds, t_start)
        report["asr_data"] = {"sessions": args.asr_sessions, "max_seconds": args.asr_max_seconds,
                              "utterances": len(texts), "wall_s": round(time.monotonic() - t0, 1)}
        tok = train_tokenizer(args.out / "tokenizer", texts, args.vocab)
        encoder = None
        if args.encoder_init is not None:
            encoder = torch.load(args.encoder_init)
            report["asr_ctc_pretraining"] = {"encoder_init": str(args.encoder_init)}
        elif args.ctc_steps > 0:
            encoder, report["asr_ctc_pretraining"] = pretrain_encoder_ctc(
                cuts, tok, args.out, args.ctc_steps, args.ctc_batch, args.ctc_lr, args.ctc_minutes * 60,
                not args.ctc_streaming)
            torch.save(encoder, args.out / "asr_ctc_encoder.pt")
            report_path.write_text(json.dumps(report, indent=1))
        rnnt_cuts = cuts
        if args.asr_long_sessions > 0:
            long_cuts, _ = _data(data / "train_asr_long", args.asr_long_sessions, args.asr_long_max_seconds, t_start)
            rnnt_cuts = _union(cuts, long_cuts, long_cuts.with_name("cuts_rnnt.jsonl.gz"))
            report["asr_long_data"] = {"sessions": args.asr_long_sessions, "max_seconds": args.asr_long_max_seconds}
        report["asr"] = train_asr(rnnt_cuts, tok, args.out, args.asr_steps, args.asr_batch, args.asr_lr,
                                  args.asr_minutes * 60, encoder, args.freeze_steps, args.asr_encoder_lr,
                                  args.asr_batch_seconds or None)
        report_path.write_text(json.dumps(report, indent=1))
    total = time.monotonic() - t_start
    report["total_wall_s"] = round(total, 1)
    report_path.write_text(json.dumps(report, indent=1))
    print(f"training done: total wall time {total / 60:.1f} min -> {report_path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

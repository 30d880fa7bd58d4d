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
import time
from pathlib import Path
from typing import Any

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


def _optim(lr: float, steps: int, warmup: int) -> dict[str, Any]:
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

    The rate is measured from step `start` on: the first steps carry one-off costs (numba compilation, caches).
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
            model.cfg.optim = _optim(phase_lr, n, max(min(n // 10, 30), 1))
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


def train_asr(cuts: Path, tok_dir: Path, out: Path, steps: int, batch_size: int, lr: float, budget_s: float) -> dict:
    """Multitalker RNNT through its training_step (speaker + background targets, RNNT loss) on Lhotse."""
    from lightning.pytorch import seed_everything
    from nemo.collections.asr.models.multitalker_asr_models import EncDecMultiTalkerRNNTBPEModel
    from omegaconf import OmegaConf

    from export.builders import asr_config

    seed_everything(SEED, workers=True)
    cfg = asr_config("demo", str(tok_dir))
    cfg["train_ds"] = _lhotse_ds(cuts, batch_size, num_speakers=4, num_sample_per_mel_frame=160,
                                 num_mel_frame_per_asr_frame=8)
    cfg["optim"] = _optim(lr, steps, max(min(steps // 10, 50), 1))
    rec = CurveRecorder.make(("train_loss", "training_batch_wer"), 10, "asr")
    trainer = _trainer(steps, [rec, _time_budget(budget_s), _stop_file(out / "STOP")])
    model = EncDecMultiTalkerRNNTBPEModel(cfg=OmegaConf.create(cfg), trainer=trainer)
    t0 = time.monotonic()
    trainer.fit(model)
    wall = time.monotonic() - t0
    model.eval()
    path = out / "asr_demo.nemo"
    model.save_to(str(path))
    params = sum(p.numel() for p in model.parameters())
    return {"path": str(path), "params": params, "steps": rec.points[-1]["step"] if rec.points else 0,
            "batch_size": batch_size, "wall_s": round(wall, 1), "curve": rec.points}


def _data(folder: Path, sessions: int, max_seconds: float, t0: float) -> tuple[Path, list[str]]:
    """Generate (once) a training split into `folder`; returns its CutSet path and its utterance texts."""
    summary_path = folder / "sessions.jsonl"
    if not summary_path.exists():
        summaries = write_split(folder, sessions, "train", SEED if "diar" in folder.name else SEED + 1, max_seconds)
        print(f"data: {folder.name}: {len(summaries)} sessions, {sum(s['duration'] for s in summaries) / 3600:.2f} h "
              f"({time.monotonic() - t0:.0f} s)", flush=True)
    texts = []
    for line in summary_path.read_text().splitlines():
        texts += [g["words"] for g in json.loads(Path(json.loads(line)["seglst_filepath"]).read_text())]
    return folder / "cuts.jsonl.gz", texts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demo_models.train", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("demo_models/checkpoints"))
    ap.add_argument("--data", type=Path, default=None, help="data folder (default: <out>/data)")
    ap.add_argument("--diar-sessions", type=int, default=800)
    ap.add_argument("--diar-max-seconds", type=float, default=10.0)
    ap.add_argument("--asr-sessions", type=int, default=2400)
    ap.add_argument("--asr-max-seconds", type=float, default=4.5,
                    help="short ASR sessions: NeMo's CPU RNNT loss costs ~0.2 ms per lattice cell (T x U)")
    ap.add_argument("--diar-steps", type=int, default=540, help="offline phase (capped by --diar-minutes)")
    ap.add_argument("--diar-stream-steps", type=int, default=160, help="streaming phase")
    ap.add_argument("--asr-steps", type=int, default=1000, help="capped by --asr-minutes")
    ap.add_argument("--diar-minutes", type=float, default=16.0, help="diarizer training time cap (75 %% offline)")
    ap.add_argument("--asr-minutes", type=float, default=36.0, help="ASR training time cap")
    ap.add_argument("--diar-batch", type=int, default=8)
    ap.add_argument("--asr-batch", type=int, default=8)
    ap.add_argument("--diar-lr", type=float, default=2e-3)
    ap.add_argument("--asr-lr", type=float, default=3e-3)
    ap.add_argument("--diar-train-chunk-len", type=int, default=24,
                    help="Sortformer chunk_len (80 ms frames) during training; inference sets its own")
    ap.add_argument("--vocab", type=int, default=128)
    ap.add_argument("--only", choices=("diar", "asr"), default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch
    from nemo.utils import logging

    logging.setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    t_start = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data or args.out / "data"
    report_path = args.out / "training.json"
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
        report["asr"] = train_asr(cuts, tok, args.out, args.asr_steps, args.asr_batch, args.asr_lr,
                                  args.asr_minutes * 60)
        report_path.write_text(json.dumps(report, indent=1))
    total = time.monotonic() - t_start
    report["total_wall_s"] = round(total, 1)
    report_path.write_text(json.dumps(report, indent=1))
    print(f"training done: total wall time {total / 60:.1f} min -> {report_path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

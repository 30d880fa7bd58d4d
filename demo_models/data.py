"""Seeded multi-speaker sessions from espeak-ng voices, with exact references and NeMo/Lhotse manifests.

    python -m demo_models.data --out DIR --sessions N --split train|heldout [--seed S]

Each session mixes 1-4 espeak-ng voices reading AN4-style utterances (number words, digits, spelled letters)
in turns with pauses and with overlaps (0-40 % of speech), per-speaker gains and light noise. Written to DIR:
`wav/<id>.wav` (16 kHz), `rttm/<id>.rttm`, `seglst/<id>.json`, `sessions.jsonl` (one summary line each),
`diar_manifest.json` and `asr_manifest.json` (NeMo manifests) and `cuts.jsonl.gz` (a Lhotse CutSet whose
supervisions carry speaker and text: what NeMo's Lhotse diarization and multitalker ASR datasets read).

The split is fixed: training and held-out sessions use disjoint utterance texts (by a hash of the text),
and held-out sessions draw on two voices (accent and variant) never used in training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from mtasr.spec import SAMPLE_RATE

DIGITS = "zero one two three four five six seven eight nine oh".split()
TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
LETTERS = list("abcdefghijklmnopqrstuvwxyz")
COMMANDS = "enter rubout stop go repeat help yes no".split()  # AN4 control words

# (espeak-ng voice, speed wpm, pitch 0-99). Held-out voices use accents and variants absent from training.
TRAIN_VOICES = [
    ("en-us+m3", 150, 45), ("en-gb+f2", 160, 55), ("en-us+m1", 140, 40), ("en-gb-scotland+f1", 155, 60),
    ("en-029+m4", 165, 50), ("en-gb-x-rp+f3", 145, 65), ("en-us-nyc+m7", 170, 35), ("en-gb+f4", 150, 70),
    ("en-us+m2", 160, 30), ("en-gb-x-rp+m1", 135, 50), ("en-us+f1", 165, 60), ("en-029+f2", 140, 55),
]
HELDOUT_VOICES = [("en-gb-x-gbcwmd+m6", 155, 45), ("en-gb-x-gbclan+f5", 150, 60)]
SPLIT_SALT = {"train": 0, "heldout": 1_000_003}
HELDOUT_TEXT_MOD = 10  # texts whose hash % 10 == 0 are held out


def text_is_heldout(text: str) -> bool:
    """The fixed text split: a stable hash of the utterance."""
    return int(hashlib.sha1(text.encode()).hexdigest(), 16) % HELDOUT_TEXT_MOD == 0


def random_utterance(rng: np.random.Generator) -> str:
    """One AN4-style utterance: a digit string, a number, a spelled word, or a mix."""
    kind = rng.random()
    words: list[str] = []
    if kind < 0.3:
        words = list(rng.choice(DIGITS, size=int(rng.integers(3, 8))))
    elif kind < 0.5:
        for _ in range(int(rng.integers(1, 3))):
            r = rng.random()
            if r < 0.4:
                words += [str(rng.choice(TENS)), str(rng.choice(DIGITS[1:10]))]
            elif r < 0.7:
                words.append(str(rng.choice(TEENS)))
            else:
                words += [str(rng.choice(DIGITS[1:10])), "hundred"]
    elif kind < 0.75:
        words = list(rng.choice(LETTERS, size=int(rng.integers(2, 7))))
    else:
        pool = DIGITS + LETTERS + TENS + COMMANDS
        words = list(rng.choice(pool, size=int(rng.integers(3, 7))))
    return " ".join(words)


def utterance_for_split(rng: np.random.Generator, split: str) -> str:
    while True:
        text = random_utterance(rng)
        if text_is_heldout(text) == (split == "heldout"):
            return text


def speak(text: str, voice: tuple[str, int, int]) -> np.ndarray:
    """espeak-ng `text` with `voice` -> 16 kHz float32, leading/trailing silence trimmed."""
    name, speed, pitch = voice
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(["espeak-ng", "-v", name, "-s", str(speed), "-p", str(pitch), "-w", f.name, text],
                       check=True, capture_output=True)
        x, rate = sf.read(f.name, dtype="float32")
    if rate != SAMPLE_RATE:
        g = np.gcd(SAMPLE_RATE, rate)
        x = resample_poly(x, SAMPLE_RATE // g, rate // g).astype(np.float32)
    active = np.flatnonzero(np.abs(x) > 0.01 * max(float(np.abs(x).max()), 1e-6))
    return x[active[0] : active[-1] + 1] if len(active) else x


@dataclass
class Turn:
    speaker: str
    start: float
    audio: np.ndarray
    text: str

    @property
    def end(self) -> float:
        return self.start + len(self.audio) / SAMPLE_RATE


def overlap_ratio(turns: list[Turn]) -> float:
    """Overlapped speech time / total speech time, on a 10 ms grid."""
    if not turns:
        return 0.0
    n = int(max(t.end for t in turns) * 100) + 1
    count = np.zeros(n, dtype=np.int32)
    for t in turns:
        count[int(t.start * 100) : int(t.end * 100)] += 1
    speech = int((count > 0).sum())
    return float((count > 1).sum()) / max(speech, 1)


def make_session(rng: np.random.Generator, split: str, max_seconds: float) -> tuple[list[Turn], float]:
    """Turns for one session (1-4 speakers, pauses and overlaps), and the session length in seconds."""
    n_spk = int(rng.choice([1, 2, 3, 4], p=[0.2, 0.35, 0.25, 0.2]))
    if split == "train":
        pool = TRAIN_VOICES
        voices = [pool[i] for i in rng.choice(len(pool), size=n_spk, replace=False)]
    else:  # at least one never-seen voice
        unseen = HELDOUT_VOICES[int(rng.integers(len(HELDOUT_VOICES)))]
        rest = [v for v in TRAIN_VOICES + HELDOUT_VOICES if v != unseen]
        voices = [unseen] + [rest[i] for i in rng.choice(len(rest), size=n_spk - 1, replace=False)]
        voices = [voices[i] for i in rng.permutation(n_spk)]
    gains = rng.uniform(0.35, 1.0, size=n_spk)
    p_overlap = 0.0 if (n_spk == 1 or rng.random() < 0.4) else float(rng.uniform(0.2, 0.7))
    turns: list[Turn] = []
    t, prev = float(rng.uniform(0.2, 1.0)), -1
    order = list(range(n_spk))
    while True:
        # every speaker talks once before anyone repeats, then random turn-taking
        spk = order.pop(0) if order else int(rng.choice([s for s in range(n_spk) if s != prev] or [0]))
        text = utterance_for_split(rng, split)
        audio = speak(text, voices[spk]) * gains[spk]
        start = t
        if turns and n_spk > 1 and rng.random() < p_overlap:
            last = turns[-1]
            start = max(last.start + 0.3, last.end - float(rng.uniform(0.3, 0.7)) * (last.end - last.start))
            if any(x.speaker == f"speaker_{spk}" and x.end > start for x in turns):
                start = t
        if start + len(audio) / SAMPLE_RATE > max_seconds and turns:
            break
        turns.append(Turn(f"speaker_{spk}", round(start, 3), audio, text))
        prev = spk
        t = max(t, turns[-1].end) + float(rng.uniform(0.15, 0.9))
        if len(turns) > 40:
            break
    length = max(x.end for x in turns) + float(rng.uniform(0.3, 0.8))
    return turns, length


def mix(turns: list[Turn], length: float, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(int(length * SAMPLE_RATE) + 1, dtype=np.float32)
    for t in turns:
        i = int(round(t.start * SAMPLE_RATE))
        out[i : i + len(t.audio)] += t.audio
    peak = float(np.abs(out).max())
    out *= float(rng.uniform(0.5, 0.9)) / max(peak, 1e-6)
    rms = float(np.sqrt(np.mean(out**2)))
    snr_db = float(rng.uniform(20.0, 40.0))
    out += rng.standard_normal(len(out)).astype(np.float32) * rms * 10 ** (-snr_db / 20)
    return np.clip(out, -1.0, 1.0)


MAX_OVERLAP = 0.4


def _session(args: tuple[Path, str, int, int, float]) -> dict:
    """Generate and write one session (own RNG from (seed, split, index): the same output in any process)."""
    out, split, seed, k, max_seconds = args
    rng = np.random.default_rng([seed, SPLIT_SALT[split], k])
    sid = f"{split}_{k:05d}"
    while True:
        turns, length = make_session(rng, split, max_seconds)
        if overlap_ratio(turns) <= MAX_OVERLAP:
            break
    audio = mix(turns, length, rng)
    wav, rttm, seglst = out / "wav" / f"{sid}.wav", out / "rttm" / f"{sid}.rttm", out / "seglst" / f"{sid}.json"
    sf.write(wav, audio, SAMPLE_RATE, subtype="PCM_16")
    rttm.write_text("".join(
        f"SPEAKER {sid} 1 {t.start:.3f} {t.end - t.start:.3f} <NA> <NA> {t.speaker} <NA> <NA>\n" for t in turns))
    segs = [{"session_id": sid, "speaker": t.speaker, "start_time": round(t.start, 3),
             "end_time": round(t.end, 3), "words": t.text} for t in turns]
    seglst.write_text(json.dumps(segs, indent=1))
    return {"session_id": sid, "audio_filepath": str(wav.resolve()), "rttm_filepath": str(rttm.resolve()),
            "seglst_filepath": str(seglst.resolve()), "duration": round(len(audio) / SAMPLE_RATE, 3),
            "num_speakers": len({t.speaker for t in turns}), "overlap_ratio": round(overlap_ratio(turns), 4),
            "num_words": sum(len(t.text.split()) for t in turns)}


def write_split(out: Path, sessions: int, split: str, seed: int, max_seconds: float, workers: int = 2) -> list[dict]:
    """Generate `sessions` sessions of `split` into `out` (in `workers` processes); returns the summaries."""
    if split not in SPLIT_SALT:
        raise ValueError(f"split must be one of {list(SPLIT_SALT)}")
    for sub in ("wav", "rttm", "seglst"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(out, split, seed, k, max_seconds) for k in range(sessions)]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            summaries = pool.map(_session, jobs, chunksize=16)
    else:
        summaries = [_session(j) for j in jobs]
    diar_lines, asr_lines = [], []
    for s in summaries:
        segs = json.loads(Path(s["seglst_filepath"]).read_text())
        diar_lines.append({"audio_filepath": s["audio_filepath"], "offset": 0.0, "duration": s["duration"],
                           "label": "infer", "text": "-", "num_speakers": s["num_speakers"],
                           "rttm_filepath": s["rttm_filepath"], "uem_filepath": None})
        for spk in sorted({g["speaker"] for g in segs}):
            asr_lines.append({"audio_filepath": s["audio_filepath"], "offset": 0.0, "duration": s["duration"],
                              "speaker": spk, "text": " ".join(g["words"] for g in segs if g["speaker"] == spk),
                              "rttm_filepath": s["rttm_filepath"]})
    for name, lines in (("sessions.jsonl", summaries), ("diar_manifest.json", diar_lines),
                        ("asr_manifest.json", asr_lines)):
        (out / name).write_text("".join(json.dumps(line) + "\n" for line in lines))
    write_cuts(out, summaries)
    return summaries


def write_cuts(out: Path, summaries: list[dict]) -> Path:
    """A Lhotse CutSet (one MonoCut per session, supervisions = SegLST segments) at `out/cuts.jsonl.gz`."""
    from lhotse import CutSet, Recording, SupervisionSegment

    cuts = []
    for s in summaries:
        rec = Recording.from_file(s["audio_filepath"], recording_id=s["session_id"])
        segs = json.loads(Path(s["seglst_filepath"]).read_text())
        sups = [SupervisionSegment(id=f"{s['session_id']}-{i:03d}", recording_id=s["session_id"],
                                   start=g["start_time"], duration=round(g["end_time"] - g["start_time"], 3),
                                   channel=0, text=g["words"], speaker=g["speaker"], language="en")
                for i, g in enumerate(segs)]
        cut = rec.to_cut()
        cut.supervisions = sups
        cuts.append(cut)
    path = out / "cuts.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m demo_models.data", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sessions", type=int, required=True)
    ap.add_argument("--split", choices=sorted(SPLIT_SALT), required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=15.0, help="session length cap")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    summaries = write_split(args.out, args.sessions, args.split, args.seed, args.max_seconds, args.workers)
    hours = sum(s["duration"] for s in summaries) / 3600
    ov = sum(s["overlap_ratio"] > 0 for s in summaries)
    print(f"{args.split}: {len(summaries)} sessions, {hours:.2f} h, {ov} with overlap -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Synthesize the committed multi-speaker test audio with espeak-ng voices (run once; outputs are committed).

    python tests/data/make_samples.py      # needs `apt-get install espeak-ng`

Each sample is a mixture of espeak-ng voices reading number words and spelled letters (AN4-style), with
overlaps, written as 16 kHz FLAC beside this script.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
RATE = 16000
VOICES = ["en-us+m3", "en-gb+f2", "en-us+m7", "en-sc+f4"]
# (speaker, start seconds, text)
SAMPLES = {
    "two_speakers_overlap": [
        (0, 0.3, "eleven twenty seven fifty seven"), (1, 2.4, "b a s h e r six one two"),
        (0, 4.8, "four nine zero one three"), (1, 5.6, "r u b o u t g o"),
        (0, 8.2, "enter seven two"),
    ],
    "three_speakers": [
        (0, 0.2, "one two three four"), (1, 1.9, "x y z seven"), (2, 3.4, "eighty five ninety"),
        (0, 5.0, "m a r k nine"), (2, 6.1, "twelve thirteen"), (1, 7.3, "s t o p"),
    ],
}


def _long_session() -> list[tuple[int, float, str]]:
    rng = np.random.default_rng(7)
    words = ("zero one two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty "
             "a b c d e f g h k l m n p r s t").split()
    turns, t = [], 0.3
    while t < 62.0:
        spk = int(rng.integers(0, 3))
        text = " ".join(rng.choice(words, size=int(rng.integers(3, 7))))
        turns.append((spk, round(t, 2), text))
        t += float(rng.uniform(0.9, 2.6))
    return turns


def speak(text: str, voice: str) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", f.name, text], check=True)
        x, rate = sf.read(f.name, dtype="float32")
    from scipy.signal import resample_poly

    return resample_poly(x, RATE, rate).astype(np.float32) if rate != RATE else x


def mix(turns: list[tuple[int, float, str]]) -> tuple[np.ndarray, list[str]]:
    pieces = [(spk, start, speak(text, VOICES[spk])) for spk, start, text in turns]
    n = max(int(start * RATE) + len(x) for _, start, x in pieces) + RATE // 2
    out = np.zeros(n, dtype=np.float32)
    rttm = []
    for spk, start, x in pieces:
        i = int(start * RATE)
        out[i : i + len(x)] += 0.6 * x
        rttm.append(f"{start:.2f} {len(x) / RATE:.2f} speaker_{spk}")
    return out / max(1.0, float(np.abs(out).max()) / 0.9), rttm


def main() -> None:
    for name, turns in {**SAMPLES, "long_three_speakers": _long_session()}.items():
        audio, rttm = mix(turns)
        sf.write(HERE / f"{name}.flac", audio, RATE, subtype="PCM_16")
        (HERE / f"{name}.rttm").write_text("".join(
            f"SPEAKER {name} 1 {line.split()[0]} {line.split()[1]} <NA> <NA> {line.split()[2]} <NA> <NA>\n"
            for line in rttm))
        print(f"{name}: {len(audio) / RATE:.1f} s")


if __name__ == "__main__":
    main()

"""numpy log-mel (mtasr.features) against NeMo's AudioToMelSpectrogramPreprocessor, offline and streaming."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
audio_preprocessing = pytest.importorskip("nemo.collections.asr.modules.audio_preprocessing")

from export.features_export import feature_params_from_nemo  # noqa: E402
from mtasr.features import NO_FRAMES, FeatureParams, StreamingLogMel, logmel, logmel_batch  # noqa: E402

SR = 16000
TOL = 1e-4  # vs NeMo's float32 output
TOL_F64 = 1e-5  # vs NeMo's own pipeline run in float64 (our result is only rounded to float32)
COMMON = dict(
    sample_rate=SR, window_size=0.025, window_stride=0.01, window="hann", n_fft=512, features=128, frame_splicing=1,
    dither=1e-5,
)  # fmt: skip
CONFIGS = {
    "asr": dict(COMMON, normalize="NA", pad_to=0),  # multitalker Parakeet, cache-aware streaming
    # an offline model (e.g. Sortformer v1) normalising per feature; pad_to left at NeMo's default (16)
    "diar": dict(COMMON, normalize="per_feature"),
}


def _speech_like(rng: np.random.Generator, n: int) -> np.ndarray:
    """Voiced harmonics with a wandering f0 and syllable envelope, over low-passed (speech-tilted) noise."""
    t = np.arange(n) / SR
    f0 = 110 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum(np.sin(k * phase + rng.uniform(0, 6)) / k for k in range(1, 40))
    envelope = (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2
    noise = np.zeros(n)
    white = rng.normal(size=n)
    acc = 0.0
    for i in range(n):  # one-pole low-pass, pole 0.9: roughly cancels the pre-emphasis tilt
        acc = white[i] + 0.9 * acc
        noise[i] = acc
    x = envelope * voiced / voiced.std() + 0.5 * noise / noise.std()
    return 0.05 * x / x.std()


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    """~3.5 s: speech-like, exact silence, low-level noise (log guard regime), speech-like; not a multiple of hop."""
    rng = np.random.default_rng(1234)
    speech, tail = _speech_like(rng, 2 * SR), _speech_like(rng, SR // 2 + 77)
    parts = [speech, np.zeros(SR // 2), rng.normal(0, 1e-4, SR // 2), tail]
    return np.concatenate(parts).astype(np.float32)


@pytest.fixture(scope="module")
def pre() -> dict[str, torch.nn.Module]:
    """The two NeMo preprocessors, eval mode."""
    return {k: audio_preprocessing.AudioToMelSpectrogramPreprocessor(**c).eval() for k, c in CONFIGS.items()}


def _nemo(pre: torch.nn.Module, audio: np.ndarray) -> tuple[np.ndarray, int]:
    """NeMo's full (padded) float32 output and valid length."""
    feats, length = pre(input_signal=torch.from_numpy(audio)[None], length=torch.tensor([audio.size]))
    return feats[0].numpy(), int(length[0])


def _nemo_float64(pre: torch.nn.Module, audio: np.ndarray) -> np.ndarray:
    """NeMo's featurizer run in float64 (its stft hard-codes a float32 window), valid frames only."""
    f = copy.deepcopy(pre.featurizer).double()
    f.stft = lambda x: torch.stft(
        x, f.n_fft, f.hop_length, f.win_length, f.window, center=True, pad_mode="constant", return_complex=True
    )
    feats, length = f(torch.from_numpy(audio.astype(np.float64))[None], torch.tensor([audio.size]))
    return feats[0, :, : int(length[0])].numpy()


def pad_like_nemo(params: FeatureParams, feats: np.ndarray) -> np.ndarray:
    """NeMo's full output for valid frames ``feats``: one extra STFT frame and ``pad_to`` padding, as ``pad_value``."""
    total = feats.shape[1] + 1
    if params.pad_to > 0:
        total += -total % params.pad_to
    out = np.full((feats.shape[0], total), params.pad_value, dtype=np.float32)
    out[:, : feats.shape[1]] = feats
    return out


def _stream(params: FeatureParams, audio: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Push ``audio`` in chunks of the cycled ``sizes``, then flush; concatenate all frames."""
    s, out, pos, i = StreamingLogMel(params), [], 0, 0
    while pos < audio.size:
        chunk = audio[pos : pos + sizes[i % len(sizes)]]
        frames = s.push(chunk)
        assert frames.shape[0] == params.n_mels and frames.dtype == np.float32
        out.append(frames)
        pos, i = pos + chunk.size, i + 1
    out.append(s.flush())
    return np.concatenate(out, axis=1)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_offline_matches_nemo(pre: dict, audio: np.ndarray, name: str) -> None:
    params = feature_params_from_nemo(pre[name])
    full, length = _nemo(pre[name], audio)
    ours = logmel(params, audio)
    assert ours.dtype == np.float32 and ours.shape == (128, length) == (128, audio.size // 160)
    diff = np.abs(ours - full[:, :length]).max()
    diff64 = np.abs(ours - _nemo_float64(pre[name], audio)).max()
    padded = pad_like_nemo(params, ours)
    print(f"\n{name}: offline max|ours - nemo| = {diff:.2e}, vs nemo float64 = {diff64:.2e}, frames {length}")
    assert diff <= TOL and diff64 <= TOL_F64
    assert padded.shape == full.shape and np.abs(padded - full).max() <= TOL


@pytest.mark.parametrize("name", list(CONFIGS))
def test_white_noise_float32_fft_noise(pre: dict, name: str) -> None:
    """Pre-emphasised white noise leaves the lowest bins ~30 dB down, where NeMo's float32 (MKL) FFT has ~1e-4 log
    error: the exact (float64) pipeline still agrees with ours to float32 rounding."""
    audio = np.random.default_rng(7).normal(0, 0.1, 2 * SR + 33).astype(np.float32)
    params = feature_params_from_nemo(pre[name])
    full, length = _nemo(pre[name], audio)
    ours = logmel(params, audio)
    diff = np.abs(ours - full[:, :length]).max()
    diff64 = np.abs(ours - _nemo_float64(pre[name], audio)).max()
    print(f"\n{name}: white noise max|ours - nemo| = {diff:.2e}, vs nemo float64 = {diff64:.2e}")
    assert diff <= 1e-3 and diff64 <= TOL_F64


@pytest.mark.parametrize("n", [1, 100, 160, 399, 1234, 4000])
def test_short_lengths(pre: dict, n: int) -> None:
    audio = np.random.default_rng(n).normal(0, 0.05, n).astype(np.float32)
    params = feature_params_from_nemo(pre["asr"])
    full, length = _nemo(pre["asr"], audio)
    ours, streamed = logmel(params, audio), _stream(params, audio, [37])
    assert ours.shape == streamed.shape == (128, length)
    assert np.abs(ours - full[:, :length]).max(initial=0.0) <= TOL
    assert np.abs(streamed - ours).max(initial=0.0) <= 1e-6


@pytest.mark.parametrize(
    ("sizes", "start"),
    [([1], 1.9), ([160], 0), ([320], 0), ([16000], 0), ([7, 1000, 161, 3, 2400, 80, 513], 0), ("random", 0)],
)
def test_streaming_matches_nemo(pre: dict, audio: np.ndarray, sizes: list[int] | str, start: float) -> None:
    """Whole signal, or (1-sample pushes, for speed) the part from 1.9 s: speech, silence, low noise, speech."""
    if sizes == "random":
        sizes = np.random.default_rng(5).integers(1, 3000, 200).tolist()
    audio = audio[int(start * SR) :]
    params = feature_params_from_nemo(pre["asr"])
    full, length = _nemo(pre["asr"], audio)
    streamed = _stream(params, audio, sizes)
    assert streamed.shape == (128, length)
    diff = np.abs(streamed - full[:, :length]).max()
    vs_offline = np.abs(streamed - logmel(params, audio)).max()
    print(f"\nasr stream {sizes[:8]}: max|stream - nemo| = {diff:.2e}, vs offline {vs_offline:.1e}")
    assert diff <= TOL


def test_empty_signal(pre: dict) -> None:
    """NeMo itself fails on 0 samples; we return no frames."""
    params = feature_params_from_nemo(pre["asr"])
    assert logmel(params, np.zeros(0, np.float32)).shape == (128, 0)
    assert _stream(params, np.zeros(0, np.float32), [1]).shape == (128, 0)


def test_streaming_delay_and_state(pre: dict) -> None:
    """Hop-sized pushes give one frame each, one hop behind; the retained tail stays bounded."""
    params = feature_params_from_nemo(pre["asr"])
    s = StreamingLogMel(params)
    counts = [s.push(np.full(160, 0.01, np.float32)).shape[1] for _ in range(50)]
    assert counts == [0] + [1] * 49  # frame i needs samples up to i*160 + 199
    assert s._buf.size < params.win_length + params.hop_length
    assert s.flush().shape[1] == 1 and s.samples_received == 0


def test_batched_frames_equal_each_stream_bit_for_bit(pre: dict, audio: np.ndarray) -> None:
    """Streams whose owed frames are computed together (`logmel_batch`: pre-emphasis and FFT over every stream at
    once, as the engine does) give exactly the frames each stream computes alone, ends (zero-padded after
    pre-emphasis) and streams owing nothing included, and offline `logmel` of each whole signal."""
    params = feature_params_from_nemo(pre["asr"])
    rng = np.random.default_rng(5)
    signals = [audio[rng.integers(0, 4000):][: rng.integers(3000, 30000)] * rng.uniform(0.2, 3) for _ in range(5)]
    sizes = [[17920], [2560, 160], [999, 5], [17920, 1], [321]]
    batched, alone = [StreamingLogMel(params) for _ in signals], [StreamingLogMel(params) for _ in signals]
    got: list[list[np.ndarray]] = [[] for _ in signals]
    want: list[list[np.ndarray]] = [[] for _ in signals]
    pos, step = [0] * len(signals), 0
    while any(p <= x.size for p, x in zip(pos, signals, strict=True)):
        jobs = []
        for i, (x, mel) in enumerate(zip(signals, batched, strict=True)):
            if pos[i] > x.size:
                jobs.append(NO_FRAMES)
                continue
            piece = x[pos[i] : pos[i] + sizes[i][step % len(sizes[i])]]
            last = pos[i] + piece.size >= x.size
            count = mel.push_samples(piece)
            if last:
                count = mel.end_samples()
            jobs.append(mel.owed(count))
            want[i].append(alone[i].push(piece))
            if last:
                want[i].append(alone[i].flush())
            pos[i] = x.size + 1 if last else pos[i] + piece.size
        for i, (frames, job) in enumerate(zip(logmel_batch(params, jobs), jobs, strict=True)):
            got[i].append(frames)
            if job is not NO_FRAMES:
                batched[i].consume(job.count)
        step += 1
    for x, g, w in zip(signals, got, want, strict=True):
        g, w = np.concatenate(g, axis=1), np.concatenate(w, axis=1)
        assert g.shape == w.shape == (128, x.size // 160) and np.array_equal(g, w)
        assert np.array_equal(g, logmel(params, x))


def test_per_feature_streaming_refused(pre: dict) -> None:
    with pytest.raises(ValueError, match="whole utterance"):
        StreamingLogMel(feature_params_from_nemo(pre["diar"]))


def test_save_load_roundtrip(pre: dict, tmp_path: Path, audio: np.ndarray) -> None:
    params = feature_params_from_nemo(pre["diar"])
    assert params.pad_to == 16 and params.normalize == "per_feature" and params.log_guard == 2.0**-24
    params.save(tmp_path / "features.npz")
    loaded = FeatureParams.load(tmp_path / "features.npz")
    assert loaded.window.shape == (400,) and loaded.filterbank.shape == (128, 257)
    assert np.array_equal(logmel(loaded, audio[:SR]), logmel(params, audio[:SR]))

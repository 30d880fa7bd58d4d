"""Audio-time words, utterances and the live transcript's final/interim rules, on hand-made hypotheses."""

from __future__ import annotations

from mtasr.pipeline.words import LiveTranscript, session_frames, split_utterances, timed_words

VOCAB = ["\u2581one", "\u2581two", "ty", "\u2581three", "\u2581four"]
F = 0.08


def test_session_frames_follow_the_steps_a_speaker_ran():
    # ran at steps 0 and 3 (14 frames each): its frames 0..13 are session frames 0..13, 14.. are 42..
    assert session_frames([0, 13, 14, 20], [(0, 0), (3, 14)], 14) == [0, 13, 42, 48]


def test_words_and_utterances():
    words = timed_words([0, 1, 2, 3], [2, 5, 6, 20], VOCAB, F)
    assert [(w.text, w.start, w.end) for w in words] == [("one", 0.16, 0.24), ("twoty", 0.4, 0.56),
                                                         ("three", 1.6, 1.68)]
    groups = split_utterances(words, 0.6)
    assert [[w.text for w in g] for g in groups] == [["one", "twoty"], ["three"]]
    assert timed_words([3], [20], VOCAB, F, audio_end=1.62)[0].end == 1.62  # clipped to the audio


def test_final_once_interim_until_the_pause_has_passed():
    live = LiveTranscript(VOCAB, F, frames_per_step=14, pause_sec=0.6)
    run = [(0, 0)]
    live.update({0: ([0, 1], [2, 5], run)}, decoded_end=1.0, audio_end=1.5, session_id="s")
    assert live.drain() == [] and live.interim_segments()[0]["words"] == "one two"  # 0.52 s after "two": open
    live.update({0: ([0, 1], [2, 5], run)}, decoded_end=1.12, audio_end=1.5, session_id="s")
    final = live.drain()
    assert [s["words"] for s in final] == ["one two"] and live.interim_segments() == []
    assert final[0]["word_times"] == [[0.16, 0.24], [0.4, 0.48]]
    # a token continuing "two" after it was final starts a new word: sent segments never change
    live.update({0: ([0, 1, 2, 4], [2, 5, 16, 17], [(0, 0), (1, 14)])}, decoded_end=2.24, audio_end=2.5,
                session_id="s", last=True)
    assert [s["words"] for s in live.drain()] == ["ty four"]
    assert live.drain() == [] and [s["words"] for s in live.seglst()] == ["one two", "ty four"]


def test_a_speaker_without_pauses_still_gets_final_segments():
    live = LiveTranscript(VOCAB, F, frames_per_step=14, pause_sec=0.6, max_utterance_sec=2.0)
    tokens = [0, 1, 3, 4] * 10  # a word every 4 frames (0.32 s): never a 0.6 s gap
    frames = list(range(0, 4 * len(tokens), 4))
    live.update({0: (tokens, frames, [(0, 0)])}, decoded_end=frames[-1] * F + 0.1, audio_end=20.0, session_id="s")
    final, tail = live.drain(), live.interim_segments()
    assert final and len(tail) == 1 and len(tail[0]["words"].split()) == 1
    assert sum(len(s["words"].split()) for s in final) == len(tokens) - 1


class _Uncached(LiveTranscript):
    """Words made again from every open token each step (the reference for the incremental update)."""

    def update(self, hyps, decoded_end, audio_end, session_id, last=False):
        for state in self.speakers.values():
            state.words, state.upto = [], 0
        super().update(hyps, decoded_end, audio_end, session_id, last)


def test_incremental_words_equal_words_made_again_each_step():
    """Random streams of two speakers over 60 steps: the incremental transcript, whose hypotheses are trimmed after
    every step as the engine trims them, sends exactly the segments and interim tails of one that keeps whole
    hypotheses and makes every open word again."""
    import numpy as np

    rng = np.random.default_rng(3)
    vocab = [f"\u2581w{i}" if i % 3 else f"p{i}" for i in range(30)] + [".", "\u2581,"]
    fast = LiveTranscript(vocab, F, frames_per_step=14, pause_sec=0.6, max_utterance_sec=3.0)
    ref = _Uncached(vocab, F, frames_per_step=14, pause_sec=0.6, max_utterance_sec=3.0)
    hyps = {s: ([], [], [(0, 0)]) for s in (0, 1)}  # whole hypotheses (the reference's)
    trimmed = {s: ([], [], [(0, 0)]) for s in (0, 1)}
    sent = {"fast": [], "ref": []}
    for step in range(60):
        for spk in (0, 1):
            frame0 = step * 14
            n = int(rng.integers(0, 6)) if rng.random() < 0.7 else 0  # talk, or pause
            new_frames = sorted(int(f) for f in rng.integers(frame0, frame0 + 14, n))
            new_tokens = [int(t) for t in rng.integers(0, len(vocab), n)]
            for h in (hyps[spk], trimmed[spk]):
                h[0].extend(new_tokens)
                h[1].extend(new_frames)
        last = step == 59
        decoded = (step + 1) * 14 * F
        fast.update({s: trimmed[s] for s in (0, 1)}, decoded, decoded + 0.05, "s", last=last)
        ref.update(hyps, decoded, decoded + 0.05, "s", last=last)
        sent["fast"] += fast.drain()
        sent["ref"] += ref.drain()
        assert fast.interim_segments() == ref.interim_segments(), step
        for spk in (0, 1):  # the engine's trimming (transcribe.SpeakerInstance.drop_tokens, runs kept whole here)
            done = fast.release(spk)
            del trimmed[spk][0][:done], trimmed[spk][1][:done]
    assert sent["fast"] == sent["ref"] and len(sent["ref"]) > 20

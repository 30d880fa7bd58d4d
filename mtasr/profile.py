"""Where the serving loop's host CPU goes, by stage: an exclusive-time stage clock the pipeline reports into.

Disabled (the default) a stage costs one attribute test. Enabled (`bench.capacity`, `bench.overhead`), each
`with stage("name"):` charges the calling thread's CPU time to that stage, excluding the stages nested in it, so
the figures add up to the time spent. Stages named in `DEVICE_STAGES` are arithmetic that runs on the accelerator
on a GPU deployment (graph calls, the decoder's products): reported apart from host cost.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager

# The stages the pipeline reports (one name each, used by the benchmarks' tables).
FEATURES = "features"  # audio -> log-mel chunks, graph input batches of features
SPEAKER_CACHE = "speaker_cache"  # the speaker-cache / FIFO update
TARGETS = "targets"  # cache gating, speaker targets
DECODING = "decoding_control"  # the greedy search's host control (which rows, which frames)
WORDS = "words_replies"  # hypotheses -> words, utterances, turns, reply segments and JSON
STATE_COPIES = "state_copies"  # slot-pool gathers and scatters
GRAPHS = "graphs"  # graph calls (device)
DECODER_PRODUCTS = "decoder_products"  # prediction net and joint (device)
FEATURE_PRODUCTS = "feature_products"  # log-mel arithmetic: FFT, power, filterbank, log (device)
REQUESTS = "request_handling"  # everything else: validation, ownership, scheduling (the residual)
HOST_STAGES = (REQUESTS, FEATURES, SPEAKER_CACHE, TARGETS, DECODING, WORDS, STATE_COPIES)
DEVICE_STAGES = (GRAPHS, DECODER_PRODUCTS, FEATURE_PRODUCTS)


class StageClock:
    """Exclusive CPU seconds per stage (thread CPU time), and how often each was entered."""

    def __init__(self) -> None:
        self.enabled = False
        self.seconds: Counter = Counter()
        self.calls: Counter = Counter()
        self._stack: list[str] = []
        self._mark = 0.0

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def _charge(self) -> None:
        now = time.thread_time()
        if self._stack:
            self.seconds[self._stack[-1]] += now - self._mark
        self._mark = now

    @contextmanager
    def __call__(self, name: str):
        if not self.enabled:
            yield
            return
        self._charge()
        self._stack.append(name)
        self.calls[name] += 1
        try:
            yield
        finally:
            self._charge()
            self._stack.pop()


CLOCK = StageClock()
stage = CLOCK

"""Admission by measured capacity: what one engine step costs, learnt from the steps the engine runs.

A step's wall time (the graphs, decoding and the replies it completes) is modelled as a fixed part plus a part per
session, a part per active speaker and a part that grows with each session's state until its speaker cache and
FIFO are full (the diarizer re-reads them every step: a young session costs less than one in steady state):
`t = fixed + per_session * sessions + per_speaker * speakers + per_full_state * sum(fill)`, `fill` in [0, 1] per
session. It is fitted by least squares over the steps the engine runs, older steps weighing less (exponential
forgetting), so the estimate follows the graphs, precision and machine this instance runs on; a warm-up at load
gives the first points. Admission predicts sessions in steady state (full state). Triton-free.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

FORGET = 0.98  # weight kept by each older step per new one: ~50 steps of memory
# Once the fit has this many steps, one step counts as at most CLIP x its prediction: a one-off stall (a first call
# at a new batch shape, a collection, a neighbour's burst) moves the estimate a little; a lasting slowdown still
# moves it all the way within a few dozen steps.
SETTLED_STEPS = 8
CLIP = 2.0
RIDGE = 1e-9  # keeps the normal equations solvable while one kind of step has been seen (s^2 units)


@dataclass(frozen=True)
class StepCost:
    """A fitted step cost, in seconds; `speakers_per_session` is the mean active speakers per session-step."""

    fixed_s: float
    per_session_s: float
    per_speaker_s: float
    per_full_state_s: float
    speakers_per_session: float

    @property
    def marginal_s(self) -> float:
        """What one more session in steady state adds to a step."""
        return self.per_session_s + self.per_speaker_s * self.speakers_per_session + self.per_full_state_s

    def predict(self, sessions: int) -> float:
        """Seconds of one step over `sessions` steady-state sessions with the mean number of active speakers."""
        return self.fixed_s + sessions * self.marginal_s if sessions > 0 else 0.0

    def sessions_within(self, seconds: float) -> int:
        """The most sessions one step carries within `seconds` (a large number when sessions cost nothing)."""
        marginal = self.marginal_s
        room = seconds - self.fixed_s
        if room <= 0:
            return 0
        return int(room / marginal) if marginal > 0 else 1 << 20


class StepCostModel:
    """Least-squares fit of the step cost over the steps observed (thread-safe: the engine thread writes, the
    admission path reads)."""

    def __init__(self, forget: float = FORGET) -> None:
        self.forget = forget
        self._xx = np.zeros((4, 4))
        self._xy = np.zeros(4)
        self._speakers = 0.0  # forgetting sums of active speakers and of sessions (their ratio: the mean)
        self._sessions = 0.0
        self._steps = 0
        self._cost: StepCost | None = None
        self._lock = threading.Lock()

    @property
    def steps(self) -> int:
        """Steps observed so far."""
        return self._steps

    def observe(self, sessions: int, speakers: int, seconds: float, fill: float) -> None:
        """One step over `sessions` sessions with `speakers` active speakers and state `fill` (the sum over the
        sessions of how full each one's speaker cache and FIFO are, 0..1 each) took `seconds`."""
        if sessions <= 0 or not math.isfinite(seconds) or seconds < 0:
            return
        x = np.array([1.0, float(sessions), float(speakers), float(fill)])
        with self._lock:
            if self._cost is not None and self._steps >= SETTLED_STEPS:
                c = self._cost
                predicted = float(x @ np.array([c.fixed_s, c.per_session_s, c.per_speaker_s, c.per_full_state_s]))
                seconds = min(seconds, CLIP * predicted) if predicted > 0 else seconds
            self._xx = self.forget * self._xx + np.outer(x, x)
            self._xy = self.forget * self._xy + x * seconds
            self._speakers = self.forget * self._speakers + speakers
            self._sessions = self.forget * self._sessions + sessions
            self._steps += 1
            self._cost = self._fit()

    def estimate(self) -> StepCost | None:
        """The current fit, or None before any step was observed."""
        return self._cost

    def _fit(self) -> StepCost:
        """Non-negative least squares over the four terms: solve, drop any term that comes out negative, re-solve
        (at most four rounds)."""
        active = [0, 1, 2, 3]
        coef = np.zeros(4)
        while active:
            xx = self._xx[np.ix_(active, active)] + RIDGE * np.eye(len(active)) * max(self._xx[0, 0], 1.0)
            sol = np.linalg.solve(xx, self._xy[active])
            if (sol >= 0).all():
                coef[:] = 0
                coef[active] = sol
                break
            active = [a for a, v in zip(active, sol, strict=True) if v >= 0] if (sol >= 0).any() else []
        if not active:  # nothing non-negative fits: all cost per session (the conservative reading)
            coef = np.array([0.0, self._xy[1] / max(self._xx[1, 1], 1e-12), 0.0, 0.0])
        return StepCost(float(coef[0]), float(coef[1]), float(coef[2]), float(coef[3]),
                        self._speakers / self._sessions if self._sessions else 0.0)


class ReplyWaits:
    """The server-side waits of recent step-completing replies (how far behind real time each was answered), over
    the last `window_s` seconds (thread-safe: the engine thread adds, the admission path reads)."""

    def __init__(self, window_s: float = 10.0, least: int = 20, quantile: float = 95.0) -> None:
        self.window_s, self.least, self.quantile = window_s, least, quantile
        self._waits: deque[tuple[float, float]] = deque(maxlen=1024)
        self._lock = threading.Lock()

    def add(self, now: float, wait_s: float) -> None:
        with self._lock:
            self._waits.append((now, wait_s))

    def recent(self, now: float) -> float | None:
        """The `quantile` of the waits within the window, or None while fewer than `least` were seen there."""
        with self._lock:
            while self._waits and self._waits[0][0] < now - self.window_s:
                self._waits.popleft()
            waits = [w for _, w in self._waits]
        return float(np.percentile(waits, self.quantile)) if len(waits) >= self.least else None


@dataclass(frozen=True)
class Admission:
    """The capacity rules for one more session beside `live` ones, all sessions in steady state:

    - throughput: one step over every session must fit in `headroom` of `budget_s`, the audio one step covers
      (the real-time budget);
    - reply latency: a reply that completes a chunk waits for the step in progress and then its own. A step
      collects the chunks completed while the previous one ran, so at utilisation `u = sessions x marginal /
      budget_s` a step lasts `(fixed + marginal) / (1 - u)`, and such a reply up to twice that; it must stay within
      `reply_budget_s` (0: no latency rule). Where one session's step is a large share of the reply budget (a slow
      or busy machine) this rule admits far fewer sessions than throughput would.

    `headroom` 0 turns both rules off (admission by count only)."""

    budget_s: float
    headroom: float
    reply_budget_s: float = 0.0

    @property
    def limit_s(self) -> float:
        return self.budget_s * self.headroom

    def reply_latency(self, cost: StepCost, sessions: int) -> float:
        """The longest wait of a chunk-completing reply with `sessions` sessions (seconds; inf when saturated)."""
        u = sessions * cost.marginal_s / self.budget_s
        return 2 * (cost.fixed_s + cost.marginal_s) / (1 - u) if u < 1 else math.inf

    def refusal(self, cost: StepCost | None, live: int) -> str | None:
        """Why one more session does not fit beside `live` ones ("step X ms of Y ms" / "replies X ms of Y ms"),
        or None when it fits (also before any step has been measured)."""
        if not self.headroom or cost is None:
            return None
        step = cost.predict(live + 1)
        if step > self.limit_s:
            return f"step {step * 1000:.0f} ms of {self.limit_s * 1000:.0f} ms"
        if self.reply_budget_s:
            wait = self.reply_latency(cost, live + 1)
            if wait > self.reply_budget_s:
                shown = f"{wait * 1000:.0f} ms" if math.isfinite(wait) else "unbounded"
                return f"replies {shown} of {self.reply_budget_s * 1000:.0f} ms"
        return None

    def sessions(self, cost: StepCost | None, cap: int) -> int:
        """The sessions the rules admit (at most `cap`)."""
        if not self.headroom or cost is None:
            return cap
        n = cost.sessions_within(self.limit_s)
        if self.reply_budget_s and cost.marginal_s > 0:
            room = 1 - 2 * (cost.fixed_s + cost.marginal_s) / self.reply_budget_s
            n = min(n, max(0, math.floor(room * self.budget_s / cost.marginal_s)))
        return min(cap, n)

    def budget_fraction(self, cost: StepCost | None, live: int) -> float:
        """The predicted step over `live` sessions as a fraction of the budget."""
        return cost.predict(live) / self.budget_s if cost is not None and self.budget_s else 0.0

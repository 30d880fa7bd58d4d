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


@dataclass(frozen=True)
class Admission:
    """The capacity rule: a step over every live session plus a new one must fit in `headroom` of `budget_s`,
    the audio one step covers (the real-time budget). `headroom` 0 turns the rule off."""

    budget_s: float
    headroom: float

    @property
    def limit_s(self) -> float:
        return self.budget_s * self.headroom

    def admits(self, cost: StepCost | None, live: int) -> tuple[bool, float]:
        """Whether one more session fits beside `live` ones, and the predicted step with it (seconds; 0 when no
        step has been measured yet, which admits)."""
        if not self.headroom or cost is None:
            return True, 0.0
        predicted = cost.predict(live + 1)
        return predicted <= self.limit_s, predicted

    def sessions(self, cost: StepCost | None, cap: int) -> int:
        """The sessions the rule admits (at most `cap`)."""
        if not self.headroom or cost is None:
            return cap
        return min(cap, cost.sessions_within(self.limit_s))

    def budget_fraction(self, cost: StepCost | None, live: int) -> float:
        """The predicted step over `live` sessions as a fraction of the budget."""
        return cost.predict(live) / self.budget_s if cost is not None and self.budget_s else 0.0

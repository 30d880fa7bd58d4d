"""Admission of a new session: the count cap, and measured capacity (the step-cost estimate learnt from the steps
the engine runs, `mtasr.pipeline.capacity`); the warm-up that gives the first estimate; the capacity gauges.
Triton-free."""

from __future__ import annotations

import time

import numpy as np

from mtasr.audio import synth_conversation
from mtasr.pipeline.capacity import Admission, ReplyWaits, StepCostModel
from mtasr.pipeline.sessions import ErrorCode, RefusalReason, RequestError, SessionEvents, SessionPolicy
from mtasr.spec import FRAME_SEC, SAMPLE_RATE

# Admission never goes beyond RAMP x the most sessions the engine has carried in measured steps: the warm-up
# measures the engine in a quiet process, while live sessions also load the server around it (gRPC, the batcher,
# replies), so the fit is trusted only near what it has seen; steps with more sessions live extend it (like TCP's
# slow start). A burst of STARTs beyond it is refused with a short retry.
RAMP = 2


def state_fill_seconds(engine) -> float:
    """Audio a session processes before its speaker cache and FIFO are full (its steps cost the most from then)."""
    p = engine.cfg.spkcache
    return (p.spkcache_len + p.fifo_len) * FRAME_SEC


def step_seconds(engine) -> float:
    """The audio one step of `engine` covers: the real-time budget of a step (multitalker: the preset's chunk,
    1.12 s at [70,13]; diarization: its latency preset's chunk)."""
    own = getattr(engine, "step_seconds", None)
    if own is not None:
        return float(own)
    return engine.cfg.nframes_per_chunk * engine.cfg.frame_len_sec


class AdmissionControl:
    """Whether one more session may start beside the live ones: `policy.max_sessions`, then the capacity rules
    (`rules`) on the fitted step cost (`cost`); `observe` feeds the fit with every step the engine runs."""

    def __init__(self, engine, policy: SessionPolicy, events: SessionEvents) -> None:
        self.policy = policy
        self.events = events
        self.cost = StepCostModel()
        self.rules = Admission(step_seconds(engine), policy.admission_headroom, policy.reply_budget_s)
        self.fill_steps = max(state_fill_seconds(engine) / self.rules.budget_s, 1.0)  # steps to a full state
        self.carried = 0  # the most sessions live during a measured step (the warm-up's: its streams)
        self.waits = ReplyWaits()  # what the fit cannot see: the replies' measured waits
        self._reported: tuple[int, float] | None = None

    @property
    def measures(self) -> bool:
        """Whether admission is by measured capacity (else by count only: nothing to measure)."""
        return bool(self.rules.headroom)

    def check(self, live: int, now: float) -> None:
        """Admit a session beside `live` ones at time `now`, or raise RequestError: the count cap, then measured
        capacity: the fit's rules, the ramp, and the replies' waits measured in the last seconds against the
        headroom of the reply budget (one session is always admitted: a step slower than real time shows in its
        lag)."""
        if live >= self.policy.max_sessions:
            raise RequestError(f"server full ({self.policy.max_sessions} sessions): try again later",
                               ErrorCode.UNAVAILABLE, RefusalReason.FULL)
        why = self.rules.refusal(self.cost.estimate(), live) if live else None
        retry = f"retry in {self.policy.idle_timeout_s:g} s"
        if not why and live and self.measures and self.carried and live >= self.ramp_limit:
            why = f"ramping up: {self.carried} carried so far"
            retry = f"retry in {np.ceil(self.rules.budget_s):g} s"  # the next steps measure more
        limit = self.rules.reply_budget_s * self.rules.headroom
        if not why and live and limit and (wait := self.waits.recent(now)) is not None and wait > limit:
            why = f"replies p95 {wait * 1000:.0f} ms of {limit * 1000:.0f} ms measured"
        if why:
            raise RequestError(f"server at capacity ({live} sessions, {why}): {retry}", ErrorCode.UNAVAILABLE,
                               RefusalReason.CAPACITY)

    @property
    def ramp_limit(self) -> int:
        """The most sessions admitted on the measurements so far (`RAMP`)."""
        return RAMP * max(self.carried, 1)

    def fill(self, stepped: int) -> float:
        """How full a session's speaker cache and FIFO are after `stepped` steps (0..1)."""
        return min(1.0, stepped / self.fill_steps)

    def observe(self, sessions: int, speakers: int, seconds: float, fill: float, live: int = 0) -> None:
        """One step over `sessions` sessions (`speakers` active, state `fill` summed) took `seconds`, with `live`
        sessions admitted (0: as many as it stepped)."""
        self.cost.observe(sessions, speakers, seconds, fill)
        self.carried = max(self.carried, live or sessions)

    def replied(self, now: float, wait_s: float) -> None:
        """A reply that completed a step was sent `wait_s` behind real time (after its request came in, or after
        its audio's real time for a client sending ahead of it)."""
        if self.measures:
            self.waits.add(now, wait_s)

    def report(self, live: int) -> None:
        """The capacity gauges (sessions admissible, the live ones' predicted step as a fraction of the budget),
        when they changed."""
        cost = self.cost.estimate()
        cap = min(self.policy.max_sessions, self.ramp_limit) if self.carried else self.policy.max_sessions
        figures = (self.rules.sessions(cost, cap),
                   round(self.rules.budget_fraction(cost, live), 2))
        if figures != self._reported:
            self._reported = figures
            self.events.capacity(*figures)

    def warm_up(self, engine, timing: str, sessions: int, max_seconds: float) -> None:
        """The first step-cost estimate: a step of one synthetic stream, then steps of `sessions` of them until
        their speaker caches and FIFOs are full (or `max_seconds` have gone: the fit extrapolates), the first call
        of each batch shape unmeasured (it allocates); then free them. The caller holds the schedule."""
        budget = self.rules.budget_s
        steps = int(np.ceil(self.fill_steps)) + 2
        audio = synth_conversation(steps * budget + 2.0, n_speakers=2, seed=0)
        done = [0] * sessions
        warm = [engine.new_stream(f"warm-up-{i}", timing) for i in range(sessions)]
        try:
            for s in warm:
                for pos in range(0, len(audio), 2 * SAMPLE_RATE):
                    engine.push_audio(s, audio[pos : pos + 2 * SAMPLE_RATE])
            t_end = time.perf_counter() + max_seconds
            plan = [(1, False), (1, True), (sessions, False)] + [(sessions, True)] * steps
            for n, measured in plan:
                fill = sum(self.fill(k) for k in done[:n])
                t0 = time.perf_counter()
                outs = engine.step(warm[:n])
                if not outs:
                    break
                if measured:
                    self.observe(len(outs), sum(len(o.active_speakers) for o in outs), time.perf_counter() - t0,
                                 fill)
                done[:n] = [k + 1 for k in done[:n]]
                if time.perf_counter() > t_end or self.fill(done[-1]) >= 1:
                    break
        finally:
            for s in warm:
                engine.close(s)

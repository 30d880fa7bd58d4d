"""The orchestrator's custom metrics, defined once: Triton exposes them on its metrics port (Prometheus text).

`ServingMetrics` turns `SessionEvents` into metric updates through a `MetricSink`; the Triton glue gives it a
sink backed by `pb_utils.MetricFamily` (tests: a dictionary).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from mtasr.pipeline.sessions import RefusalReason, SessionEvents


class MetricKind(Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class MetricDef:
    name: str
    kind: MetricKind
    description: str
    buckets: tuple[float, ...] = ()  # histogram bucket upper bounds


MODEL_LABEL = "model"  # the streaming model a series belongs to (multitalker, diarization): same names in both

ACTIVE_SESSIONS = MetricDef("mtasr_active_sessions", MetricKind.GAUGE, "Live streaming sessions")
ACTIVE_SPEAKERS = MetricDef("mtasr_active_speakers", MetricKind.GAUGE,
                            "Speaker instances (encoder + decoder state) over all live sessions")
SESSIONS_STARTED = MetricDef("mtasr_sessions_started_total", MetricKind.COUNTER, "Sessions admitted")
REQUESTS_REFUSED = MetricDef("mtasr_requests_refused_total", MetricKind.COUNTER,
                             "Requests refused, by reason (label `reason`)")
SESSIONS_EXPIRED = MetricDef("mtasr_sessions_expired_total", MetricKind.COUNTER,
                             "Sessions freed after the idle timeout (client gone without END)")
STEP_SECONDS = MetricDef("mtasr_step_seconds", MetricKind.HISTOGRAM,
                         "Wall time of one engine step over every session with a pending chunk (graphs, decoding, "
                         "the replies it completes)", (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
CAPACITY_SESSIONS = MetricDef("mtasr_capacity_sessions", MetricKind.GAUGE,
                              "Sessions the measured step cost admits within the real-time budget and headroom "
                              "(at most the session cap)")
STEP_BUDGET_FRACTION = MetricDef("mtasr_step_budget_fraction", MetricKind.GAUGE,
                                 "Predicted step over the live sessions as a fraction of the audio one step covers")
LAG_SECONDS = MetricDef("mtasr_lag_seconds", MetricKind.HISTOGRAM,
                        "Per engine round, the largest lag behind real time among the replies its step completed",
                        (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
METRICS = (ACTIVE_SESSIONS, ACTIVE_SPEAKERS, SESSIONS_STARTED, REQUESTS_REFUSED, SESSIONS_EXPIRED, STEP_SECONDS,
           CAPACITY_SESSIONS, STEP_BUDGET_FRACTION, LAG_SECONDS)
REASON_LABEL = "reason"


class MetricSink(Protocol):
    def set(self, metric: MetricDef, value: float, labels: dict[str, str] | None = None) -> None: ...

    def increment(self, metric: MetricDef, value: float = 1.0, labels: dict[str, str] | None = None) -> None: ...

    def observe(self, metric: MetricDef, value: float) -> None: ...

    def declare(self, metric: MetricDef) -> None:
        """Create the (unlabelled) series of `metric` without changing it."""


class ServingMetrics(SessionEvents):
    """Session events as metric updates."""

    def __init__(self, sink: MetricSink) -> None:
        self.sink = sink
        # every series exists from the start (Prometheus shows a series only once it was touched)
        sink.set(ACTIVE_SESSIONS, 0)
        sink.set(ACTIVE_SPEAKERS, 0)
        sink.increment(SESSIONS_STARTED, 0)
        sink.increment(SESSIONS_EXPIRED, 0)
        for reason in RefusalReason:
            sink.increment(REQUESTS_REFUSED, 0, {REASON_LABEL: reason.value})
        sink.declare(STEP_SECONDS)
        sink.declare(LAG_SECONDS)
        sink.set(CAPACITY_SESSIONS, 0)
        sink.set(STEP_BUDGET_FRACTION, 0)

    def started(self) -> None:
        self.sink.increment(SESSIONS_STARTED)

    def refused(self, reason: RefusalReason) -> None:
        self.sink.increment(REQUESTS_REFUSED, 1, {REASON_LABEL: reason.value})

    def expired(self, count: int) -> None:
        self.sink.increment(SESSIONS_EXPIRED, count)

    def stepped(self, seconds: float) -> None:
        self.sink.observe(STEP_SECONDS, seconds)

    def occupancy(self, sessions: int, speakers: int) -> None:
        self.sink.set(ACTIVE_SESSIONS, sessions)
        self.sink.set(ACTIVE_SPEAKERS, speakers)

    def lag(self, seconds: float) -> None:
        self.sink.observe(LAG_SECONDS, seconds)

    def capacity(self, sessions: int, budget_fraction: float) -> None:
        self.sink.set(CAPACITY_SESSIONS, sessions)
        self.sink.set(STEP_BUDGET_FRACTION, budget_fraction)

"""The user's session: who may open, use and keep one (policy, keys, refusal codes, the reaper), the record of an
admitted session and the table of them.

Triton-free. A session is the client's Triton sequence once admitted; it is owned by the client that started it:
its START carries a per-session secret (the `SESSION_KEY_HEADER` gRPC header, which Triton forwards as a request
parameter) and every later request must carry the same secret. Sessions are admitted by measured capacity under a
count cap, idle ones are reaped, and every refusal has a reason and a code. Its engine state is its stream
(`mtasr.pipeline.engine.Stream`, `mtasr.diarization.engine.DiarStream`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Generic, TypeVar

from mtasr.pipeline.params import (
    DEFAULT_ADMISSION_HEADROOM,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_LAG_LIMIT_S,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_REPLY_BUDGET_S,
)
from mtasr.spec import SESSION_KEY_HEADER

if TYPE_CHECKING:
    import numpy as np

    from mtasr.diarization.engine import DiarStream
    from mtasr.pipeline.engine import Stream
    from mtasr.pipeline.replies import Respond
    from mtasr.pipeline.validation import AudioRequest

log = logging.getLogger("mtasr.sessions")

# A key is a client-made random token (the client library makes 32 url-safe bytes); these bounds refuse empty,
# guessable or absurd values before they are hashed.
MIN_KEY_CHARS = 16
MAX_KEY_CHARS = 256


class ErrorCode(Enum):
    """Why a request was refused; the Triton glue maps these onto its own status codes."""

    INVALID_ARGUMENT = "invalid_argument"  # malformed audio or controls
    NOT_FOUND = "not_found"  # no live session with this id for this client
    ALREADY_EXISTS = "already_exists"  # START on a live id
    UNAVAILABLE = "unavailable"  # server full or at capacity
    UNAUTHENTICATED = "unauthenticated"  # no or malformed session key
    INTERNAL = "internal"  # a graph call or the session's own processing failed


class RefusalReason(Enum):
    """The label a refused request is counted under (metrics)."""

    BAD_REQUEST = "bad_request"
    FULL = "full"  # the session count cap (MAX_SESSIONS)
    CAPACITY = "capacity"  # the measured step cost leaves no room for one more session
    NO_KEY = "no_key"
    NOT_OWNER = "not_owner"  # unknown id, or a live id with another key (the two are not told apart)
    DUPLICATE_START = "duplicate_start"
    INTERNAL = "internal"
    LAGGING = "lagging"  # a session ended for being further behind real time than the lag limit
    SHUTDOWN = "shutdown"


class RequestError(ValueError):
    """A request that is refused; the message goes back to the client, the session is left as it was."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.INVALID_ARGUMENT,
                 reason: RefusalReason = RefusalReason.BAD_REQUEST) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class SessionPolicy:
    """Admission limits of one orchestrator instance.

    `admission_headroom`: a START is admitted only while the predicted step over every live session plus the new
    one takes at most this fraction of the audio one step covers (0: no capacity check, only `max_sessions`), and
    while the replies that complete a step are predicted within `reply_budget_s` (0: no such rule).
    `lag_limit_s`: a session further behind real time than this is ended with an error.
    """

    max_sessions: int = DEFAULT_MAX_SESSIONS
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    reap_period_s: float = 0.5
    admission_headroom: float = DEFAULT_ADMISSION_HEADROOM
    lag_limit_s: float = DEFAULT_LAG_LIMIT_S
    reply_budget_s: float = DEFAULT_REPLY_BUDGET_S

    def __post_init__(self) -> None:
        if (self.max_sessions < 1 or self.idle_timeout_s <= 0 or self.reap_period_s <= 0
                or not 0 <= self.admission_headroom <= 1 or self.lag_limit_s <= 0 or self.reply_budget_s < 0):
            raise ValueError(f"invalid session policy {self}")

    @classmethod
    def from_params(cls, params) -> SessionPolicy:
        """The policy a streaming model's typed parameters (`OrchestratorParams`, `DiarizationParams`) describe."""
        return cls(max_sessions=params.max_sessions, idle_timeout_s=params.idle_timeout_s,
                   admission_headroom=params.admission_headroom, lag_limit_s=params.lag_limit_s,
                   reply_budget_s=params.reply_budget_s)


def key_digest(key: str | None) -> bytes:
    """SHA-256 of a well-formed session key; RequestError when it is missing or malformed."""
    if not key:
        raise RequestError(f"no session key: send a random token of {MIN_KEY_CHARS}-{MAX_KEY_CHARS} characters in "
                           f"the '{SESSION_KEY_HEADER}' header with every request of the session",
                           ErrorCode.UNAUTHENTICATED, RefusalReason.NO_KEY)
    if not MIN_KEY_CHARS <= len(key) <= MAX_KEY_CHARS or not key.isascii() or not key.isprintable():
        raise RequestError(f"malformed session key: {MIN_KEY_CHARS}-{MAX_KEY_CHARS} printable ASCII characters",
                           ErrorCode.UNAUTHENTICATED, RefusalReason.NO_KEY)
    return hashlib.sha256(key.encode()).digest()


def same_owner(digest: bytes, key: str | None) -> bool:
    """Constant-time comparison of a request's key with the session's."""
    try:
        return hmac.compare_digest(digest, key_digest(key))
    except RequestError:
        return False


class SessionEvents:
    """What the session manager reports (metrics and logs hook in here); every method is a no-op."""

    def started(self) -> None: ...

    def refused(self, reason: RefusalReason) -> None: ...

    def expired(self, count: int) -> None: ...

    def stepped(self, seconds: float) -> None:
        """One engine step (every session with a pending chunk) took `seconds`, replies included."""

    def occupancy(self, sessions: int, speakers: int) -> None:
        """Live sessions and their speaker instances, after every change."""

    def lag(self, seconds: float) -> None:
        """How far behind real time a session was when a reply was sent."""

    def capacity(self, sessions: int, budget_fraction: float) -> None:
        """The sessions the measured step cost admits, and the predicted step of the live ones as a fraction of
        the real-time budget (the audio one step covers)."""


K = TypeVar("K")
V = TypeVar("V")


class IdleClock(Generic[K, V]):
    """Entries ordered by when they went idle: expiry costs O(expired), never O(live).

    An entry is here only while idle (no request queued or being processed); `touch` (re)starts its clock,
    `remove` takes it out when work arrives. Not thread-safe: the owner's lock guards it.
    """

    def __init__(self) -> None:
        self._since: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def touch(self, key: K, value: V, now: float) -> None:
        self._since.pop(key, None)
        self._since[key] = (now, value)

    def remove(self, key: K) -> None:
        self._since.pop(key, None)

    def expired(self, now: float, timeout_s: float) -> list[tuple[K, V]]:
        """Remove and return the entries idle for longer than `timeout_s` (oldest first)."""
        gone = []
        while self._since:
            key, (since, value) = next(iter(self._since.items()))
            if now - since <= timeout_s:
                break
            del self._since[key]
            gone.append((key, value))
        return gone

    def __len__(self) -> int:
        return len(self._since)


@dataclass
class PendingRequest:
    """A submitted request waiting for its turn in its session."""

    request: AudioRequest
    respond: Respond
    arrived: float
    samples: np.ndarray | None = None
    error: RequestError | None = None  # refused in its turn (a live session's bad request leaves it untouched)


@dataclass
class AdmittedSession:
    """A session the manager admitted: its owner, its queue of requests, its engine stream (opened by the engine
    thread at its START's turn), and what its replies and the lag rule need."""

    corrid: int
    owner: bytes  # SHA-256 of the session key
    timing: str
    anchor: float  # real-time origin: the START's arrival minus the audio it carried
    max_speakers: int = 0  # the START's cap on speaker instances (0: none)
    stream: Stream | DiarStream | None = None  # its engine state, opened at its START's turn
    queue: deque[PendingRequest] = field(default_factory=deque)
    current: PendingRequest | None = None  # pushed, waiting for its chunks to be stepped
    frames: list[np.ndarray] = field(default_factory=list)  # activity of the current request's steps
    speakers: int = 0  # speaker instances, as counted in the occupancy gauge
    stepped: int = 0  # chunks stepped (how full its state is: the step cost model)
    scheduled: bool = False  # in the engine's ready list
    ended: bool = False
    sent: dict[tuple, dict] = field(default_factory=dict)  # timing nemo: (speaker, start) -> segment last sent


class SessionTable:
    """The admitted sessions by correlation id, the idle ones in an `IdleClock`, their speaker instances and the
    sessions freed since the heap was last trimmed. `lock` guards all of it (and the scheduler's queues), never a
    step; the methods below take it themselves, the attributes are read and written under it."""

    def __init__(self) -> None:
        self.live: dict[int, AdmittedSession] = {}
        self.idle: IdleClock[int, AdmittedSession] = IdleClock()
        self.speakers = 0  # speaker instances over live sessions
        self.freed = 0
        self.lock = threading.Lock()

    def owned(self, corrid: int, key: str | None) -> AdmittedSession:
        """The live session `corrid` if `key` is its owner's (call under `lock`); else RequestError: an unknown id
        and another client's id get the same answer, so there is no oracle for live ids."""
        session = self.live.get(corrid)
        if session is None or session.ended or not same_owner(session.owner, key):
            raise RequestError(f"sequence {corrid} is not open for this client: start it with START and send its "
                               "session key with every request (it may have ended or timed out)",
                               ErrorCode.NOT_FOUND, RefusalReason.NOT_OWNER)
        return session

    def remove(self, session: AdmittedSession) -> tuple[list[PendingRequest], int]:
        """Take an ended session out: its queued requests (emptied) and the live sessions left."""
        with self.lock:
            session.ended = True
            if self.live.get(session.corrid) is session:
                del self.live[session.corrid]
            self.idle.remove(session.corrid)
            left, session.queue = list(session.queue), deque()
            self.speakers -= session.speakers
            self.freed += 1
            return left, len(self.live)

    def expire(self, now: float, timeout_s: float) -> tuple[list[tuple[int, AdmittedSession]], int]:
        """Take out the sessions idle for longer than `timeout_s`: (corrid, session) of each, the live ones left."""
        with self.lock:
            gone = self.idle.expired(now, timeout_s)
            for corrid, session in gone:
                session.ended = True
                del self.live[corrid]
                self.speakers -= session.speakers
            self.freed += len(gone)
            return gone, len(self.live)

    def add_speakers(self, delta: int) -> int:
        """Count `delta` more speaker instances; the live sessions."""
        with self.lock:
            self.speakers += delta
            return len(self.live)

    def take_freed(self) -> int:
        """Sessions freed since the last call."""
        with self.lock:
            freed, self.freed = self.freed, 0
            return freed


class Reaper:
    """A daemon thread that calls `expire()` every `period_s` until `stop()`: idle state is freed eagerly."""

    def __init__(self, expire: Callable[[], object], period_s: float) -> None:
        self._expire = expire
        self._period = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mtasr-reaper", daemon=True)

    def start(self) -> Reaper:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self._expire()
            except Exception:  # noqa: BLE001 - the reaper must outlive one bad pass; the next one retries
                log.exception("idle-session reaper pass failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

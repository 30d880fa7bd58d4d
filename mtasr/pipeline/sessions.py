"""Who may open, use and keep a session: the admission and ownership rules of the served stream.

Triton-free. A session is owned by the client that started it: its START carries a per-session secret (the
`SESSION_KEY_HEADER` gRPC header, which Triton forwards as a request parameter) and every later request must
carry the same secret. Sessions are capped, idle ones are reaped, and every refusal has a reason and a code.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from dataclasses import dataclass
from enum import Enum

from mtasr.spec import SESSION_KEY_HEADER

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
    UNAVAILABLE = "unavailable"  # server full
    UNAUTHENTICATED = "unauthenticated"  # no or malformed session key
    INTERNAL = "internal"  # a graph call failed


class RefusalReason(Enum):
    """The label a refused request is counted under (metrics)."""

    BAD_REQUEST = "bad_request"
    FULL = "full"
    NO_KEY = "no_key"
    NOT_OWNER = "not_owner"  # unknown id, or a live id with another key (the two are not told apart)
    DUPLICATE_START = "duplicate_start"
    INTERNAL = "internal"


class RequestError(ValueError):
    """A request that is refused; the message goes back to the client, the session is left as it was."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.INVALID_ARGUMENT,
                 reason: RefusalReason = RefusalReason.BAD_REQUEST) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class SessionPolicy:
    """Admission limits of one orchestrator instance."""

    max_sessions: int = 32
    idle_timeout_s: float = 5.0  # = the sequence batcher's max_sequence_idle_microseconds
    reap_period_s: float = 0.5

    def __post_init__(self) -> None:
        if self.max_sessions < 1 or self.idle_timeout_s <= 0 or self.reap_period_s <= 0:
            raise ValueError(f"invalid session policy {self}")


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

    def stepped(self, seconds: float) -> None: ...

    def occupancy(self, sessions: int, speakers: int) -> None:
        """Live sessions and their speaker instances, after every change."""


class Reaper:
    """A daemon thread that calls `expire()` every `period_s` until `stop()`: idle state is freed eagerly."""

    def __init__(self, expire, period_s: float) -> None:
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

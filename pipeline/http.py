"""One HTTP session for every stage that talks to Steam: retries, backoff, Retry-After, rate.

Retries are urllib3's ``Retry`` mounted on a ``requests`` session, so 429 and 5xx answers
are retried with exponential backoff and a server's ``Retry-After`` is honoured (capped, so
a bogus header cannot stall a run for hours).
"""

from __future__ import annotations

import threading
import time

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

from pipeline import __version__

USER_AGENT = f"steam-gan/{__version__} (dataset curation; python-requests)"
RETRY_STATUSES = (429, 500, 502, 503, 504)


class CappedRetry(Retry):
    """urllib3 ``Retry`` whose wait on a ``Retry-After`` header is at most ``max_retry_after``."""

    max_retry_after: float = 120.0

    def new(self, **kw) -> CappedRetry:
        retry = super().new(**kw)
        retry.max_retry_after = self.max_retry_after
        return retry

    def get_retry_after(self, response) -> float | None:
        """The header's wait, capped; a negative or garbled header counts as no header.

        urllib3 raises ``InvalidHeader`` for those, which would end the retries of a 429.
        """
        try:
            seconds = super().get_retry_after(response)
        except InvalidHeader:
            return None
        return None if seconds is None else min(max(seconds, 0.0), self.max_retry_after)


def make_session(
    retries: int = 5,
    backoff_s: float = 0.5,
    pool_size: int = 16,
    max_retry_after_s: float = 120.0,
) -> requests.Session:
    """A session that retries connection errors, 429 and 5xx, then returns the last answer."""
    retry = CappedRetry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff_s,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET", "HEAD"}),
        respect_retry_after_header=True,
        raise_on_status=False,  # hand back the final 429/5xx so it is recorded, not raised
    )
    retry.max_retry_after = max_retry_after_s
    adapter = HTTPAdapter(max_retries=retry, pool_connections=pool_size, pool_maxsize=pool_size)
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


class RateLimiter:
    """At most ``rate_per_s`` starts per second across all threads (None: unlimited).

    Written here because it is a dozen lines over a lock and a monotonic clock; the rate
    limiting packages on PyPI either wrap a function (we need one limiter shared by a pool)
    or bring storage backends we do not need.
    """

    def __init__(self, rate_per_s: float | None):
        self.interval = 1.0 / rate_per_s if rate_per_s else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


OFFLINE_README = "docs/offline.md"


def offline_hint(settings: str) -> str:
    """Advice on the line of a network failure: the params that switch to local sources."""
    return f"offline? set {settings}, or use params.offline.yaml ({OFFLINE_README})"


def short_error(exc: BaseException) -> str:
    """One readable line for a failed request (urllib3 nests the cause several levels deep)."""
    cause: BaseException = exc
    while True:
        inner = getattr(cause, "reason", None) or (cause.args[0] if cause.args else None)
        if not isinstance(inner, BaseException):
            break
        cause = inner
    text = str(cause)
    if "Read timed out" in text:
        text = "read timed out"
    elif ": " in text and cause is not exc:
        text = text.rsplit(": ", 1)[-1]
    return f"{exc.__class__.__name__}: {text}"[:300]

"""The one retry policy: which answers are worth another try, and how long to wait first.

Callbacks schedule their retries in the database with delay(); the http engine
runs its requests under tenacity with the same delay() as its wait.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable

import httpx

from dropbox_daemon.config_net import RetryConfig


def retryable_status(code: int) -> bool:
    """429 (slow down) and 5xx (the other side's trouble) are retried; other 4xx are final."""
    return code == 429 or code >= 500


RETRYABLE_ERRORS = (httpx.TransportError,)  # connection refused/reset, timeouts, DNS


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def delay(
    attempt: int,
    policy: RetryConfig,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number `attempt` (1 = the first retry).

    Exponential from initial_seconds, +- jitter, capped at max_seconds; never
    shorter than the server's Retry-After.
    """
    base = min(
        policy.max_seconds, policy.initial_seconds * policy.multiplier ** max(0, attempt - 1)
    )
    base *= 1 + policy.jitter * (2 * rand() - 1)
    if retry_after is not None:
        base = max(base, retry_after)
    return base

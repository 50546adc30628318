"""What every storage backend shares: the failure kinds it raises, the retry loop around each
call, object metadata and the transfer settings read from the environment."""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Callable

from facepipe.errors import StorageError
from facepipe.secrets import redact

log = logging.getLogger("facepipe.storage")


class Transient(Exception):
    """A failure worth retrying (connection refused or reset, timeout, 5xx, throttling)."""


class Permanent(Exception):
    """A failure that a retry cannot fix (bad credentials, no such bucket or key, bad request)."""


class NotFound(Permanent):
    pass


NO_BUCKET = "bucket does not exist; create it first"


def _attempts() -> int:
    return max(1, int(os.environ.get("FACEPIPE_STORAGE_ATTEMPTS", "5")))


def _backoff_s() -> float:
    return float(os.environ.get("FACEPIPE_STORAGE_BACKOFF_S", "0.5"))


def with_retries(what: str, uri: str, endpoint: str, fn: Callable, missing_ok: bool = False):
    """Run fn, retrying transient failures with exponential backoff and jitter.

    With missing_ok, a missing object propagates as NotFound for the caller to handle.
    """
    attempts, delay = _attempts(), _backoff_s()
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except NotFound as exc:
            if missing_ok:
                raise
            raise StorageError(redact(f"{what} {uri}: not found (endpoint {endpoint}): {exc}")) from None
        except Permanent as exc:
            raise StorageError(redact(f"{what} {uri} failed (endpoint {endpoint}): {exc}")) from None
        except Transient as exc:
            if attempt == attempts:
                raise StorageError(redact(
                    f"{what} {uri} failed after {attempts} attempts (endpoint {endpoint}): {exc}; "
                    f"is the endpoint up and reachable?")) from None
            wait = min(delay * 2 ** (attempt - 1), 30.0) * (1 + 0.25 * random.random())
            log.warning(redact(f"{what} {uri}: {exc}; retry {attempt}/{attempts - 1} in {wait:.1f}s"))
            time.sleep(wait)


@dataclass
class ObjectInfo:
    size: int
    sha256: str | None  # from the object's metadata, when it was uploaded by facepipe


def read_timeout_s() -> float:
    """How long a request waits for the server's answer: a server that accepts and stays silent
    costs this per attempt, not minutes."""
    return float(os.environ.get("FACEPIPE_STORAGE_TIMEOUT_S", "20"))


def part_size() -> int:
    return int(float(os.environ.get("FACEPIPE_STORAGE_PART_MB", "16")) * (1 << 20))


def need_env(names: tuple[str, ...], scheme: str) -> dict[str, str]:
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        which = (f"environment variable {missing[0]} is" if len(missing) == 1 else
                 f"environment variables {' and '.join(missing)} are")
        raise StorageError(f"{scheme}:// needs credentials: {which} not set (required: {', '.join(names)})")
    return {n: os.environ[n] for n in names}

"""JSON over HTTP to a server that may be flaky (an OpenAI-compatible endpoint, a judge): a request that fails
with 429, a 5xx status, a dropped connection or a reply that is not JSON is retried with exponential back-off
(the server's ``Retry-After`` when it sends one), at most ``rate_limit`` requests a second across threads.
Only the standard library is used."""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
import urllib.error
import urllib.request
from typing import Any


class ServerError(RuntimeError):
    """The server refused a request or answered something that is not a completion."""


class RateLimiter:
    """At most ``rate`` acquisitions a second across threads (0: no limit)."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_free = 0.0
        self.lock = threading.Lock()

    def acquire(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            wait = max(0.0, self.next_free - now)
            self.next_free = max(now, self.next_free) + self.interval
        if wait:
            time.sleep(wait)


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class JsonClient:
    """POSTs JSON to ``{api_base}/{endpoint}`` with retries (see the module docstring)."""

    def __init__(self, api_base: str, *, api_key: str | None = None, timeout: float = 600.0, retries: int = 5,
                 rate_limit: float = 0.0, backoff: float = 1.0, max_backoff: float = 30.0):
        self.api_base = api_base.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.limiter = RateLimiter(rate_limit)
        self.backoff = backoff
        self.max_backoff = max_backoff

    def post(self, endpoint: str, payload: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.api_base}/{endpoint}"
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(payload).encode("utf-8")
        for attempt in range(self.retries + 1):
            self.limiter.acquire()
            try:
                return self._attempt(url, data, headers)
            except _Retryable as err:
                if attempt == self.retries:
                    raise ServerError(f"{url}: {err} (gave up after {self.retries + 1} attempts)") from None
                delay = err.retry_after if err.retry_after is not None else \
                    min(self.backoff * 2.0 ** attempt, self.max_backoff) * (0.5 + random.random() / 2)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _attempt(self, url: str, data: bytes, headers: dict[str, str]) -> dict[str, Any]:
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as err:
            text = err.read().decode("utf-8", errors="replace")[:500]
            if err.code == 429 or err.code >= 500:
                raise _Retryable(f"HTTP {err.code}: {text}", _retry_after(err.headers.get("Retry-After"))) from None
            raise ServerError(f"{url}: HTTP {err.code}: {text}") from None
        except urllib.error.URLError as err:
            raise _Retryable(f"cannot reach the server: {getattr(err, 'reason', err)}") from None
        except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
            raise _Retryable(f"connection lost: {type(err).__name__}: {err}") from None
        try:
            return json.loads(body.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise _Retryable(f"the reply is not JSON ({err})") from None


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, min(float(value), 300.0)) if value is not None else None
    except ValueError:
        return None

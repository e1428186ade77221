"""Injected faults: make chosen requests fail with a Status, or arrive late.

A test registers a fault (``server.faults.add(method="PATCH", path_regex=r"/virtualmachines/",
status=500, times=1)``); the server consults :meth:`Faults.take` before handling each request.
A fault with ``status=0`` only delays; ``times=None`` keeps firing until removed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from nichotplug.testing.errors import StatusError

_REASONS = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
    410: "Expired", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass
class Fault:
    method: str  # "*" for any
    path_regex: re.Pattern[str]
    status: int  # 0: no failure, only the delay
    times: int | None  # None: unlimited
    delay: float
    message: str
    hits: int = field(default=0)

    def matches(self, method: str, path_and_query: str) -> bool:
        return (self.method in ("*", method.upper())) and bool(self.path_regex.search(path_and_query))

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times

    def error(self) -> StatusError | None:
        if not self.status:
            return None
        return StatusError(self.status, _REASONS.get(self.status, "InternalError"), self.message, {})


class Faults:
    """The registered faults, first match wins."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, method: str = "*", path_regex: str = ".*", status: int = 500, times: int | None = 1,
            delay: float = 0.0, message: str = "injected fault") -> Fault:
        if status and not 400 <= status <= 599:
            raise ValueError(f"a failing fault needs an HTTP error status (400-599), not {status}")
        if delay < 0:
            raise ValueError("delay must not be negative")
        fault = Fault(method.upper(), re.compile(path_regex), status, times, delay, message)
        self._faults.append(fault)
        return fault

    def clear(self) -> None:
        self._faults.clear()

    def take(self, method: str, path_and_query: str) -> Fault | None:
        """The fault for this request (counting it as fired), or None."""
        for fault in self._faults:
            if not fault.exhausted and fault.matches(method, path_and_query):
                fault.hits += 1
                return fault
        return None

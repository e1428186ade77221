"""Kubernetes ``Status`` errors as the in-process API server answers them.

One exception type carries the HTTP code, the machine-readable reason and the
message; :meth:`StatusError.to_status` renders the ``kind: Status`` body exactly
as kube-apiserver does (see the recorded answers in the fixtures).
"""

from __future__ import annotations

from typing import Any


class StatusError(Exception):
    """An API error answered as a ``kind: Status`` object with ``code`` as the HTTP status."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            status["details"] = self.details
        status["code"] = self.code
        return status


def not_found(resource: str, group: str, name: str) -> StatusError:
    qualified = f"{resource}.{group}" if group else resource
    return StatusError(
        404, "NotFound", f'{qualified} "{name}" not found',
        {"name": name, "group": group, "kind": resource} if group else {"name": name, "kind": resource},
    )


def already_exists(resource: str, group: str, name: str) -> StatusError:
    qualified = f"{resource}.{group}" if group else resource
    return StatusError(
        409, "AlreadyExists", f'{qualified} "{name}" already exists',
        {"name": name, "group": group, "kind": resource} if group else {"name": name, "kind": resource},
    )


def conflict(resource: str, group: str, name: str) -> StatusError:
    qualified = f"{resource}.{group}" if group else resource
    return StatusError(
        409, "Conflict",
        f'Operation cannot be fulfilled on {qualified} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        {"name": name, "group": group, "kind": resource} if group else {"name": name, "kind": resource},
    )


def bad_request(message: str) -> StatusError:
    return StatusError(400, "BadRequest", message)

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


def _details(resource: str, group: str, name: str = "") -> dict[str, Any]:
    details: dict[str, Any] = {}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    details["kind"] = resource
    return details


def not_found_resource() -> StatusError:
    """A path that names no resource the server knows (unknown group, version or plural)."""
    return StatusError(404, "NotFound", "the server could not find the requested resource", {})


def namespace_not_found(namespace: str) -> StatusError:
    return not_found("namespaces", "", namespace)


def namespace_terminating(resource: str, group: str, name: str, namespace: str) -> StatusError:
    qualified = f"{resource}.{group}" if group else resource
    subject = f'{qualified} "{name}"' if name else qualified
    details = _details(resource, group, name)
    details["causes"] = [{"reason": "NamespaceTerminating", "message": f"namespace {namespace} is being terminated",
                          "field": "metadata.namespace"}]
    return StatusError(403, "Forbidden", f"{subject} is forbidden: unable to create new content in namespace "
                       f"{namespace} because it is being terminated", details)


def unauthorized() -> StatusError:
    return StatusError(401, "Unauthorized", "Unauthorized")


def forbidden(*, username: str, verb: str, resource: str, subresource: str, group: str,
              namespace: str, name: str) -> StatusError:
    """403 worded exactly like kube-apiserver's RBAC denial."""
    qualified = f"{resource}.{group}" if group else resource
    subject = f'{qualified} "{name}"' if name else qualified
    full_resource = f"{resource}/{subresource}" if subresource else resource
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    message = (f'{subject} is forbidden: User "{username}" cannot {verb} resource "{full_resource}" '
               f'in API group "{group}" {scope}')
    return StatusError(403, "Forbidden", message, _details(resource, group, name))


def forbidden_path(username: str, verb: str, path: str) -> StatusError:
    """403 for a non-resource URL (``/api``, ``/openapi/v3`` ...)."""
    return StatusError(403, "Forbidden", f'forbidden: User "{username}" cannot {verb} path "{path}"', {})


def unsupported_media_type(accepted: list[str]) -> StatusError:
    return StatusError(
        415, "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: " + ", ".join(accepted),
    )


def patch_rejected() -> StatusError:
    """A JSON Patch that cannot be applied (failed ``test``, missing path): 422 as fixture 06 shows."""
    return StatusError(422, "Invalid", "the server rejected our request due to an error in our request", {})


def expired(requested: str, oldest: int) -> StatusError:
    return StatusError(410, "Expired", f"too old resource version: {requested} ({oldest})")


def method_not_allowed() -> StatusError:
    return StatusError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource", {})


def invalid(kind: str, group: str, name: str, causes: list[dict[str, str]]) -> StatusError:
    """422 Invalid listing every field cause, message joined like apimachinery's NewInvalid."""
    qualified = f"{kind}.{group}" if group else kind
    rendered = [f"{cause['field']}: {cause['message']}" for cause in causes]
    summary = rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
    details: dict[str, Any] = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = kind
    details["causes"] = causes
    return StatusError(422, "Invalid", f'{qualified} "{name}" is invalid: {summary}', details)

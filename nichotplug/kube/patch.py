"""The one place that writes custom objects (VMs, migrations) and turns API errors into our exceptions.

Why a module of its own: kubernetes-asyncio guesses the ``Content-Type`` of a PATCH from the body (a
dict goes out as JSON Patch and the API server answers 400), so every call here names it explicitly.
And the API server reports "the object changed under you" two ways: 409 Conflict for a stale update,
and 422 Invalid with no details for a JSON Patch whose ``test`` op failed (see the recorded
``fixtures/apiserver/06-jsonpatch-test-op-fails.json``). The same bare 422 also answers a ``remove``
of a missing path, so a bare 422 on a patch with ``test`` ops is settled by reading the object and
re-running those ops: only if one of them fails now is it a :class:`Conflict`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonpatch
from kubernetes_asyncio.client import ApiClient, CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException

from nichotplug.rules.jsonpatch import resource_version_test as rules_resource_version_test

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
PATCH_OPS = frozenset({"add", "remove", "replace", "move", "copy", "test"})
DEFAULT_TIMEOUT_SECONDS = 30.0
_ADMISSION_PREFIX = 'admission webhook "'
_DENIED_MARKER = '" denied the request: '


class KubeError(Exception):
    """An API request failed; ``status`` is the HTTP code, ``reason`` the Status reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(KubeError):
    """404: the object (or its namespace, or its resource type) does not exist."""


class Conflict(KubeError):
    """The object changed since it was read (409 Conflict, or a JSON Patch ``test`` op that failed)."""


class AlreadyExists(KubeError):
    """409 AlreadyExists on create: the name is taken."""


class Forbidden(KubeError):
    """403 from RBAC (not from a webhook): the credentials used may not do this."""


class Unauthorized(KubeError):
    """401: the credentials were not accepted."""


class Invalid(KubeError):
    """422 or 400: the server refused the request itself (schema violation, bad patch path...)."""


class Denied(KubeError):
    """An admission webhook refused the write; ``code`` is the webhook's code, ``message`` its text."""

    def __init__(self, code: int, message: str, webhook: str = "") -> None:
        super().__init__(code, "Denied", message)
        self.code = code
        self.webhook = webhook

    def __str__(self) -> str:
        return f'admission webhook "{self.webhook}" denied the request: {self.message}'

    @property
    def transient(self) -> bool:
        """The webhook could not judge the write (5xx: not synced yet, an internal error), as opposed
        to judging and refusing it: the same write may pass in a moment."""
        return self.code >= 500


class WebhookUnreachable(KubeError):
    """The API server could not get an answer from an admission webhook whose failure policy is Fail
    (connection refused, no endpoints, a timeout, a certificate it does not trust): it refused the
    write without judging it. ``webhook`` is the webhook's name, ``cause`` what the API server saw."""

    def __init__(self, status: int, reason: str, message: str, webhook: str, cause: str) -> None:
        super().__init__(status, reason, message)
        self.webhook = webhook
        self.cause = cause


# kube-apiserver's wording (apiserver/pkg/admission/plugin/webhook/errors): 'failed calling webhook
# "NAME": CAUSE', behind "Internal error occurred: " and sometimes other prefixes.
_FAILED_CALL = re.compile(r'failed calling webhook "([^"]+)": (.*)', re.DOTALL)


def _status_body(exc: ApiException) -> Mapping[str, Any]:
    """The decoded ``kind: Status`` body of an API error, or ``{}`` when it is not JSON."""
    body: Any = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str) or not body:
        return {}
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    return decoded if isinstance(decoded, dict) else {}


def as_kube_error(exc: ApiException) -> KubeError:
    """Map a kubernetes-asyncio ``ApiException`` to the most specific :class:`KubeError`."""
    status = int(exc.status or 0)
    body = _status_body(exc)
    reason = str(body.get("reason") or exc.reason or "")
    message = str(body.get("message") or exc.reason or f"HTTP {status}")
    if message.startswith(_ADMISSION_PREFIX) and _DENIED_MARKER in message:
        webhook, _, webhook_message = message[len(_ADMISSION_PREFIX):].partition(_DENIED_MARKER)
        return Denied(status, webhook_message, webhook)
    failed_call = _FAILED_CALL.search(message) if status >= 500 else None
    if failed_call is not None:
        return WebhookUnreachable(status, reason, message, failed_call.group(1), failed_call.group(2))
    if status == 404:
        return NotFound(status, reason, message)
    if status == 409:
        kind = AlreadyExists if reason == "AlreadyExists" else Conflict
        return kind(status, reason, message)
    if status == 403:
        return Forbidden(status, reason, message)
    if status == 401:
        return Unauthorized(status, reason, message)
    if status in (400, 422):
        return Invalid(status, reason, message)
    return KubeError(status, reason, message)


def resource_version_test(resource_version: str) -> dict[str, Any]:
    """The JSON Patch op that makes a patch fail if the object changed since ``resource_version``."""
    if not resource_version:
        raise ValueError("a resourceVersion test needs the resourceVersion the change was based on")
    return rules_resource_version_test(resource_version)


def _options(dry_run: bool, request_timeout: float, content_type: str | None = None) -> dict[str, Any]:
    """Keyword options for a kubernetes-asyncio call (its stubs omit ``_content_type``, hence a dict)."""
    options: dict[str, Any] = {"_request_timeout": request_timeout}
    if dry_run:
        options["dry_run"] = "All"
    if content_type is not None:
        options["_content_type"] = content_type
    return options


def _checked_ops(ops: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ops as plain dicts, or ValueError naming the first malformed one (nothing is sent)."""
    if isinstance(ops, (str, bytes, Mapping)) or not ops:
        raise ValueError("a JSON Patch is a non-empty list of operations")
    checked: list[dict[str, Any]] = []
    for index, op in enumerate(ops):
        if not isinstance(op, Mapping) or op.get("op") not in PATCH_OPS:
            raise ValueError(f"JSON Patch op {index} is not one of {sorted(PATCH_OPS)}: {op!r}")
        if not isinstance(op.get("path"), str) or not (op["path"] == "" or op["path"].startswith("/")):
            raise ValueError(f"JSON Patch op {index} has no JSON Pointer path: {op!r}")
        if op["op"] in ("add", "replace", "test") and "value" not in op:
            raise ValueError(f"JSON Patch op {index} ({op['op']}) has no value: {op!r}")
        checked.append(dict(op))
    return checked


async def get_custom_object(
    api: ApiClient, group: str, version: str, plural: str, namespace: str, name: str,
    *, request_timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """Read one namespaced custom object; raises :class:`NotFound` and friends."""
    try:
        obj: dict[str, Any] = await CustomObjectsApi(api).get_namespaced_custom_object(
            group, version, namespace, plural, name, _request_timeout=request_timeout)
    except ApiException as exc:
        raise as_kube_error(exc) from exc
    return obj


async def _explain_invalid_patch(
    api: ApiClient, where: tuple[str, str, str, str, str], ops: list[dict[str, Any]], error: Invalid,
) -> KubeError:
    """Decide whether a bare 422 came from a failed ``test`` op (Conflict) or a bad patch (Invalid)."""
    tests = [op for op in ops if op["op"] == "test"]
    if error.status != 422 or not tests:
        return error
    group, version, plural, namespace, name = where
    current = await get_custom_object(api, group, version, plural, namespace, name)
    try:
        jsonpatch.JsonPatch(tests).apply(current)
    except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPointerException):
        return Conflict(409, "Conflict", f"{plural}.{group} {namespace}/{name} changed since it was "
                        f"read (now resourceVersion {current.get('metadata', {}).get('resourceVersion')})")
    return error


async def json_patch(
    api: ApiClient, group: str, version: str, plural: str, namespace: str, name: str,
    ops: Sequence[Mapping[str, Any]], *, dry_run: bool = False, request_timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """Apply a JSON Patch (RFC 6902) to a namespaced custom object; returns the patched object.

    Raises ``ValueError`` for malformed ops (nothing is sent), :class:`Conflict` when a ``test`` op
    fails or the write conflicts, :class:`NotFound`, :class:`Denied` for a webhook refusal, and
    :class:`KubeError` subclasses for the rest.
    """
    checked = _checked_ops(ops)
    try:
        patched: dict[str, Any] = await CustomObjectsApi(api).patch_namespaced_custom_object(
            group, version, namespace, plural, name, checked,
            **_options(dry_run, request_timeout, JSON_PATCH))
    except ApiException as exc:
        error = as_kube_error(exc)
        if isinstance(error, Invalid):
            raise await _explain_invalid_patch(
                api, (group, version, plural, namespace, name), checked, error) from exc
        raise error from exc
    return patched




async def merge_patch(
    api: ApiClient, group: str, version: str, plural: str, namespace: str, name: str,
    patch: Mapping[str, Any], *, dry_run: bool = False, request_timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """Apply a JSON Merge Patch (RFC 7386) to a namespaced custom object; returns the patched object.

    Put ``metadata.resourceVersion`` in ``patch`` for optimistic concurrency (a stale one is a
    :class:`Conflict`).
    """
    if not isinstance(patch, Mapping) or not patch:
        raise ValueError("a merge patch is a non-empty JSON object")
    try:
        patched: dict[str, Any] = await CustomObjectsApi(api).patch_namespaced_custom_object(
            group, version, namespace, plural, name, dict(patch),
            **_options(dry_run, request_timeout, MERGE_PATCH))
    except ApiException as exc:
        raise as_kube_error(exc) from exc
    return patched


async def create_custom_object(
    api: ApiClient, group: str, version: str, plural: str, namespace: str, body: Mapping[str, Any],
    *, dry_run: bool = False, request_timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """Create a namespaced custom object (``metadata.generateName`` works); returns it as stored."""
    if not isinstance(body, Mapping) or not isinstance(body.get("metadata"), Mapping):
        raise ValueError("an object to create needs a metadata mapping")
    try:
        created: dict[str, Any] = await CustomObjectsApi(api).create_namespaced_custom_object(
            group, version, namespace, plural, dict(body), **_options(dry_run, request_timeout))
    except ApiException as exc:
        raise as_kube_error(exc) from exc
    return created


@dataclass(frozen=True, slots=True)
class RawAnswer:
    """An API server's answer to :func:`request_json`: the HTTP status and the decoded JSON body."""

    status: int
    body: Any  # None when the body is empty or not JSON


async def request_json(
    api: ApiClient, method: str, path: str, body: Any = None,
    *, request_timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> RawAnswer:
    """One request to an API path the generated client has no method for (an aggregated API's subresource).

    Every HTTP status is an answer, so the caller can read the ``metav1.Status`` of a refusal itself;
    only a transport failure raises (``aiohttp.ClientError``, ``TimeoutError``).
    """
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    try:
        response = await api.call_api(path, method, header_params=headers, body=body, auth_settings=["BearerToken"],
                                      _preload_content=False, _request_timeout=request_timeout)
    except ApiException as exc:
        return RawAnswer(int(exc.status or 0), _decoded(exc.body))
    try:
        raw = await response.read()
    finally:
        response.release()
    return RawAnswer(int(response.status), _decoded(raw))


def _decoded(raw: Any) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, TypeError):
        return None

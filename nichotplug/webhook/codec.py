"""Decode an AdmissionReview body, encode the answer.

Two kinds of failure exist for a webhook:

- the *call itself* is bad (not JSON, wrong kind, no uid...). controller-runtime
  answers such a call with an errored AdmissionReview (HTTP 200, ``allowed:
  false`` and a ``status`` with code 400); kopf answers it with an HTTP 4xx.
  This module does as kopf does: an HTTP 4xx whose body is a ``metav1.Status``
  the API server shows (:func:`encode_error`), because a call without a usable
  uid cannot be answered with a review the API server would accept.
- the *user's operation* is refused: both answer a normal review with
  ``allowed: false``, as :mod:`nichotplug.webhook.engine` builds it.

This module only knows the first kind.

orjson does the parsing and the encoding: on the validating path it is most of
the cost of a request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

import orjson

from nichotplug.rules.decision import status_reason
from nichotplug.webhook.review import (
    API_VERSION,
    KIND,
    OPERATIONS,
    AdmissionRequest,
    AdmissionResponse,
)

# The API server never sends more than ~3 MiB (etcd's object limit plus the old
# object); 8 MiB leaves room while keeping a hostile body from filling memory.
MAX_BODY_BYTES = 8 * 1024 * 1024
JSON_CONTENT_TYPE = "application/json"

class BadReview(Exception):
    """The webhook call itself is unusable; answered with ``http_status`` and ``message``.

    ``reason`` is a short slug for the bad-request metric.
    """

    def __init__(self, http_status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.reason = reason
        self.message = message


def decode_review(body: bytes) -> AdmissionRequest:
    """The checked ``request`` of an AdmissionReview body; raises :class:`BadReview`."""
    if not body:
        raise BadReview(400, "empty-body", "empty request body: expected an AdmissionReview")
    review = _loads(body)
    if not isinstance(review, dict):
        raise BadReview(400, "not-a-review", f"expected an AdmissionReview object, got JSON {_json_type(review)}")
    if review.get("apiVersion") != API_VERSION or review.get("kind") != KIND:
        raise BadReview(
            400,
            "not-a-review",
            f"expected apiVersion {API_VERSION!r} and kind {KIND!r}, "
            f"got {review.get('apiVersion')!r} and {review.get('kind')!r}",
        )
    request = review.get("request")
    if not isinstance(request, dict):
        raise BadReview(400, "missing-field", "the AdmissionReview has no request object")
    _check_request(request)
    return cast(AdmissionRequest, request)


def _loads(body: bytes) -> Any:
    """The JSON value of ``body``: orjson's reading, or, for a number orjson cannot hold, the standard
    library's.

    orjson refuses a number beyond a double's range (``1e400``, 309 digits). That is valid JSON, and a
    webhook written in Go reads such a number in a field it does not decode without complaint. The
    API server never sends one. The standard json module reads it (as infinity, or a big int), but it
    is laxer than orjson in three other ways, each held here to orjson's rule:

    - bytes that are not UTF-8 (decoded strictly first);
    - ``NaN`` and ``Infinity`` literals (refused by ``parse_constant``);
    - a lone surrogate escape (the round trip through UTF-8 refuses it).

    So a body is refused only for what orjson refuses in it other than a number's size, with orjson's
    message; when orjson stopped at a big number and the body has another fault further on, the
    message names that fault (the big number is not one). The msgspec route (``fastdecode``) relies
    on this: it skips unread numbers without reading their size.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        refusal = error
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError) as error:  # JSONDecodeError and the Unicode errors are ValueErrors
        fault = error if str(refusal).startswith(_ORJSON_BIG_NUMBER) else refusal
        raise BadReview(400, "malformed-json", f"request body is not valid JSON: {fault}") from None
    return value


# How orjson words its refusal of a number beyond a double's range (1e400, or 309 digits and more).
_ORJSON_BIG_NUMBER = "number is infinity when parsed as double"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_request(request: dict[str, Any]) -> None:
    """Check every field of the request that the webhook reads, so later code can trust the types."""
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadReview(400, "missing-field", "request.uid is missing or not a non-empty string")
    operation = request.get("operation")
    if operation not in OPERATIONS:
        raise BadReview(
            400, "bad-field", f"request.operation {operation!r} is not one of {', '.join(OPERATIONS)}"
        )
    _require_strings(request, "kind", ("group", "version", "kind"))
    _require_strings(request, "resource", ("group", "version", "resource"))
    for key in ("subResource", "name", "namespace"):
        if key in request and not isinstance(request[key], str):
            raise BadReview(400, "bad-field", f"request.{key} must be a string")
    user_info = request.get("userInfo", {})
    if not isinstance(user_info, dict) or not isinstance(user_info.get("username", ""), str):
        raise BadReview(400, "bad-field", "request.userInfo must be an object with a string username")
    for key in ("object", "oldObject"):
        if request.get(key) is not None and not isinstance(request[key], dict):
            raise BadReview(400, "bad-field", f"request.{key} must be an object or null")
    if not isinstance(request.get("dryRun", False), bool):
        raise BadReview(400, "bad-field", "request.dryRun must be a boolean")


def _require_strings(request: Mapping[str, Any], field: str, keys: tuple[str, ...]) -> None:
    value = request.get(field)
    if not isinstance(value, dict) or not all(isinstance(value.get(key), str) for key in keys):
        raise BadReview(400, "missing-field", f"request.{field} must be an object with string {', '.join(keys)}")


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def encode_review(response: AdmissionResponse) -> bytes:
    """The full AdmissionReview body answering a request."""
    return orjson.dumps({"apiVersion": API_VERSION, "kind": KIND, "response": response})


_ALLOWED_HEAD = orjson.dumps({"apiVersion": API_VERSION, "kind": KIND, "response": {"uid": ""}})[:-4]
_ALLOWED_TAIL = b',"allowed":true}}'


def encode_allowed(uid: str) -> bytes:
    """``encode_review({"uid": uid, "allowed": True})``, the answer to nearly every request, without
    building the dicts: only the uid needs encoding (orjson escapes it)."""
    return _ALLOWED_HEAD + orjson.dumps(uid) + _ALLOWED_TAIL


def encode_error(error: BadReview) -> bytes:
    """A metav1.Status body: the API server's client decodes it and shows our message."""
    status: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "message": error.message,
        "code": error.http_status,
    }
    reason = status_reason(error.http_status)
    if reason:
        status["reason"] = reason
    return orjson.dumps(status)

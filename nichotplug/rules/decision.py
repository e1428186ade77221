"""The answer of an admission rule: allowed (maybe with a patch and warnings) or denied with a code.

``reason`` is a short slug used as the ``reason`` label of ``nichotplug_admission_decisions_total``;
``REASONS`` lists every slug the rules can produce so the metric can be pre-seeded.
Denials use 403 (a rule refuses the edit), 409 (a MAC is already used) or 500 (a bug); never 422,
because ``kubectl edit`` hides the webhook's message for a 422 and shows only "<vm> was not valid".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from nichotplug.rules.eligibility import ELIGIBILITY_REASONS, UNPLUG_REASONS
from nichotplug.rules.jsonpatch import JsonPatchOp

__all__ = ["ALLOW_REASONS", "DENY_REASONS", "HOTPLUG_REASONS", "REASONS", "Decision", "status_reason"]

ALLOW_REASONS = (
    "allowed",  # a VM write that passed every rule, no hot-plug involved
    "hotplug-allowed",  # a hot-plug / hot-unplug edit of a running VM that passed every rule
    "macs-assigned",  # mutation: MACs were added to interfaces that had none
    "no-change",  # mutation: nothing to add
    "deleting",  # the object is being deleted: nothing to judge
    "not-judged",  # not a CREATE or UPDATE
    "unreadable-object",  # mutation of an object the API server's schema will reject anyway
)
HOTPLUG_REASONS = (
    "hotplug-not-virtio", "hotplug-not-bridge", "hotplug-missing-network", "hotplug-pod-network",
    "hotplug-nad-missing", "hotplug-network-not-hotpluggable",
)
DENY_REASONS = (
    "invalid-object", "invalid-mac", "duplicate-mac", "mac-collision",
    *ELIGIBILITY_REASONS, *HOTPLUG_REASONS, *UNPLUG_REASONS, "internal-error",
)
REASONS = ALLOW_REASONS + DENY_REASONS

# metav1.StatusReason for the HTTP codes this service answers with (webhook Statuses and denials,
# the subresource API's errors): one table, so every face names a code the same way.
_STATUS_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def status_reason(code: int) -> str | None:
    """The metav1.StatusReason for an HTTP code, if it has a well-known one."""
    return _STATUS_REASONS.get(code)


@dataclass(frozen=True, slots=True)
class Decision:
    """``code`` is 200 when allowed; ``patch`` holds JSON Patch operations as data (empty: no patch)."""

    allowed: bool
    code: int
    message: str
    reason: str
    warnings: tuple[str, ...] = ()
    patch: tuple[JsonPatchOp, ...] = ()

    @classmethod
    def allow(cls, *, reason: str = "allowed", warnings: Iterable[str] = ()) -> Decision:
        return cls(True, 200, "", reason, tuple(warnings))

    @classmethod
    def deny(cls, code: int, message: str, reason: str) -> Decision:
        if not 400 <= code <= 599 or code == 422:
            raise ValueError(f"a denial needs a 4xx/5xx code other than 422, got {code}")
        return cls(False, code, message, reason)

    @classmethod
    def patched(cls, ops: Iterable[JsonPatchOp], *, reason: str = "macs-assigned",
                warnings: Iterable[str] = ()) -> Decision:
        return cls(True, 200, "", reason, tuple(warnings), tuple(ops))

"""The answer of an admission rule: allowed (maybe with a patch and warnings) or denied with a code.

``reason`` is a short slug used as the ``reason`` label of ``nichotplug_admission_decisions_total``;
``REASONS`` lists every slug the rules can produce so the metric can be pre-seeded.
Denials use 403 (a rule refuses the edit), 409 (a MAC is already used) or 500 (a bug); never 422,
because ``kubectl edit`` hides the webhook's message for a 422 and shows only "<vm> was not valid".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from nichotplug.rules.eligibility import ELIGIBILITY_REASONS, UNPLUG_REASONS
from nichotplug.rules.jsonpatch import JsonPatchOp

__all__ = ["ALLOW_REASONS", "DENY_REASONS", "HOTPLUG_REASONS", "REASONS", "Decision", "Reason", "status_reason"]


class Reason(StrEnum):
    """The reason slugs of admission decisions (the webhook engine's included); the hot-plug and
    eligibility slugs are the ``Finding`` reasons of ``rules.eligibility`` and the hot-plug rules."""

    ALLOWED = "allowed"  # a VM write that passed every rule, no hot-plug involved
    HOTPLUG_ALLOWED = "hotplug-allowed"  # a hot-plug / hot-unplug edit of a running VM that passed every rule
    MACS_ASSIGNED = "macs-assigned"  # mutation: MACs were added to interfaces that had none
    NO_CHANGE = "no-change"  # mutation: nothing to add
    DELETING = "deleting"  # the object is being deleted: nothing to judge
    NOT_JUDGED = "not-judged"  # not a VirtualMachine CREATE or UPDATE: allowed untouched
    UNREADABLE_OBJECT = "unreadable-object"  # mutation of an object the API server's schema will reject anyway
    INVALID_OBJECT = "invalid-object"  # validation: the object cannot be read as a VirtualMachine
    INVALID_MAC = "invalid-mac"
    DUPLICATE_MAC = "duplicate-mac"
    MAC_COLLISION = "mac-collision"
    INTERNAL_ERROR = "internal-error"  # a rule raised, or no MAC could be generated
    NOT_SYNCED = "not-synced"  # the webhook's: the cluster view has not finished its first list
    OTHER = "other"  # the metric's: a slug nobody declared (keeps the label bounded)


ALLOW_REASONS: tuple[str, ...] = (
    Reason.ALLOWED, Reason.HOTPLUG_ALLOWED, Reason.MACS_ASSIGNED, Reason.NO_CHANGE, Reason.DELETING,
    Reason.NOT_JUDGED, Reason.UNREADABLE_OBJECT,
)
HOTPLUG_REASONS = (
    "hotplug-not-virtio", "hotplug-not-bridge", "hotplug-missing-network", "hotplug-pod-network",
    "hotplug-nad-missing", "hotplug-network-not-hotpluggable",
)
DENY_REASONS: tuple[str, ...] = (
    Reason.INVALID_OBJECT, Reason.INVALID_MAC, Reason.DUPLICATE_MAC, Reason.MAC_COLLISION,
    *ELIGIBILITY_REASONS, *HOTPLUG_REASONS, *UNPLUG_REASONS, Reason.INTERNAL_ERROR,
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

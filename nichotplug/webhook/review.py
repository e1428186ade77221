"""The AdmissionReview wire format (``admission.k8s.io/v1``) as typed dictionaries.

Only the shape is declared here; :mod:`nichotplug.webhook.codec` checks that a
decoded body really has it before anything else reads it, so code past the
codec may trust these types.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"

Operation = Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]
OPERATIONS: tuple[Operation, ...] = ("CREATE", "UPDATE", "DELETE", "CONNECT")

# The two webhooks this service serves; also the ``webhook`` metric label.
WebhookName = Literal["mutation", "validation"]
WEBHOOKS: tuple[WebhookName, ...] = ("mutation", "validation")


class GroupVersionKind(TypedDict):
    group: str
    version: str
    kind: str


class GroupVersionResource(TypedDict):
    group: str
    version: str
    resource: str


class UserInfo(TypedDict, total=False):
    username: str
    uid: str
    groups: list[str]
    extra: dict[str, list[str]]


class AdmissionRequest(TypedDict):
    uid: str
    kind: GroupVersionKind
    resource: GroupVersionResource
    operation: Operation
    userInfo: NotRequired[UserInfo]
    subResource: NotRequired[str]
    requestKind: NotRequired[GroupVersionKind]
    requestResource: NotRequired[GroupVersionResource]
    requestSubResource: NotRequired[str]
    name: NotRequired[str]
    namespace: NotRequired[str]
    object: NotRequired[dict[str, Any] | None]
    oldObject: NotRequired[dict[str, Any] | None]
    dryRun: NotRequired[bool]
    options: NotRequired[dict[str, Any] | None]


class AdmissionReviewRequest(TypedDict):
    apiVersion: str
    kind: str
    request: AdmissionRequest


class ResponseStatus(TypedDict):
    """The part of a metav1.Status the API server shows the user on a denial."""

    code: int
    message: str
    reason: NotRequired[str]


class AdmissionResponse(TypedDict):
    uid: str
    allowed: bool
    status: NotRequired[ResponseStatus]
    patch: NotRequired[str]
    patchType: NotRequired[Literal["JSONPatch"]]
    warnings: NotRequired[list[str]]


class AdmissionReviewResponse(TypedDict):
    apiVersion: str
    kind: str
    response: AdmissionResponse

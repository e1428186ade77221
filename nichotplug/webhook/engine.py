"""Turn a checked AdmissionRequest into an AdmissionResponse by asking the rules.

This is the one place that maps a :class:`~nichotplug.rules.decision.Decision`
to the wire (uid echoed, ``status`` on a denial, base64 JSON Patch, warnings),
and that decides what happens when a rule raises. It does no I/O and never
copies the request's objects: the rules read the decoded dicts in place.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import Any

import orjson

from nichotplug.rules.admission import AdmissionInput, mutate_judged_vm, validate_judged_vm
from nichotplug.rules.admission import is_judged as is_judged_vm_write
from nichotplug.rules.cluster import ClusterState
from nichotplug.rules.decision import Decision, Reason, status_reason
from nichotplug.rules.mac import InvalidMac
from nichotplug.rules.views import InvalidObject
from nichotplug.webhook import metrics
from nichotplug.webhook.review import AdmissionRequest, AdmissionResponse, ResponseStatus, WebhookName

log = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class Verdict:
    """The answer to one request plus what the metrics and the log need to know about it."""

    response: AdmissionResponse
    result: str  # one of metrics.RESULTS
    reason: str  # a rules.REASONS slug or one of metrics.WEBHOOK_REASONS


def is_judged(request: AdmissionRequest) -> bool:
    """``rules.admission.is_judged`` of a request: a VirtualMachine CREATE/UPDATE on the main resource."""
    resource = request["resource"]
    return is_judged_vm_write(request["operation"], resource["group"], resource["resource"],
                              request.get("subResource") or "")


def admission_input(request: AdmissionRequest) -> AdmissionInput:
    """The rules' view of a request; the objects are passed by reference, not copied."""
    return AdmissionInput(
        operation=request["operation"],
        namespace=request.get("namespace", ""),
        name=request.get("name", ""),
        obj=request.get("object") or {},
        old_obj=request.get("oldObject"),
        username=request.get("userInfo", {}).get("username", ""),
        dry_run=request.get("dryRun", False),
    )


def review(webhook: WebhookName, request: AdmissionRequest, cluster: ClusterState) -> Verdict:
    """Judge one request with the rules of ``webhook``; never raises for what a rule does."""
    uid = request["uid"]
    if not is_judged(request):
        return Verdict({"uid": uid, "allowed": True}, metrics.RESULT_ALLOWED, Reason.NOT_JUDGED)
    if request.get("object") is None:
        # The API server always sends the object for CREATE/UPDATE; without it there is nothing to judge.
        return _refused(webhook, uid, 400, "the request has no object to judge", Reason.INVALID_OBJECT)
    if webhook == "mutation":
        return _mutate(request, cluster)
    return _validate(request, cluster)


def not_synced(webhook: WebhookName, request: AdmissionRequest) -> Verdict:
    """The answer while the cluster view has not finished its first list.

    Judging against a half-read cluster would allow a MAC another VM already has (the index is not
    complete) and would take a running VM for a stopped one (its VMI not seen yet). Validation
    therefore refuses with 503, which says "try again"; mutation adds nothing (best-effort, and the
    validating webhook refuses the write anyway).
    """
    uid = request["uid"]
    if webhook == "mutation":
        return Verdict({"uid": uid, "allowed": True}, metrics.RESULT_ALLOWED, Reason.NOT_SYNCED)
    message = ("nichotplug is starting and has not finished reading the cluster's VMs, VMIs and networks, "
               "so it cannot check this write for MAC collisions and hot-plug safety yet; try again in a few seconds")
    return Verdict({"uid": uid, "allowed": False, "status": _status(503, message)}, metrics.RESULT_DENIED,
                   Reason.NOT_SYNCED)


def _validate(request: AdmissionRequest, cluster: ClusterState) -> Verdict:
    """The validating webhook: MAC uniqueness and the hot-plug rules; fails closed."""
    uid = request["uid"]
    try:
        decision = validate_judged_vm(admission_input(request), cluster)
    except (InvalidObject, InvalidMac) as error:
        # The user's object is malformed: refuse it with the rules' own message (403, as the rules
        # refuse an object they cannot read), it is not our bug.
        return _refused("validation", uid, 403, str(error), Reason.INVALID_OBJECT)
    except Exception as error:
        # A bug in a rule must never turn into an allow: deny, and say so loudly.
        metrics.RULE_ERRORS.labels("validation").inc()
        log.exception("validation rule crashed; request %s denied", uid)
        message = f"nichotplug could not check this request (internal error: {type(error).__name__}); try again"
        return _refused("validation", uid, 500, message, Reason.INTERNAL_ERROR, result=metrics.RESULT_ERROR)
    return Verdict(to_response(uid, decision, with_patch=False), _result_of(decision, False), decision.reason)


def _mutate(request: AdmissionRequest, cluster: ClusterState) -> Verdict:
    """The mutating webhook: MACs for the interfaces that need one."""
    uid = request["uid"]
    try:
        decision = mutate_judged_vm(admission_input(request), cluster)
    except (InvalidObject, InvalidMac):
        # The validating webhook refuses the object with a clear message; mutating it is pointless.
        return Verdict({"uid": uid, "allowed": True}, metrics.RESULT_ALLOWED, Reason.UNREADABLE_OBJECT)
    except Exception:
        # The mutation is best-effort: an interface left without a MAC still gets one from KubeVirt, and
        # the validating webhook (which fails closed) holds the line on everything that matters. Failing
        # closed here would block every VM write on a bug in MAC assignment.
        metrics.RULE_ERRORS.labels("mutation").inc()
        log.exception("mutation rule crashed; request %s allowed without a patch", uid)
        return Verdict({"uid": uid, "allowed": True}, metrics.RESULT_ERROR, Reason.INTERNAL_ERROR)
    return Verdict(to_response(uid, decision, with_patch=True), _result_of(decision, True), decision.reason)


def _result_of(decision: Decision, with_patch: bool) -> str:
    if not decision.allowed:
        return metrics.RESULT_DENIED
    if with_patch and decision.patch:
        return metrics.RESULT_PATCHED
    return metrics.RESULT_ALLOWED


def _refused(
    webhook: WebhookName, uid: str, code: int, message: str, reason: str, *, result: str = metrics.RESULT_DENIED
) -> Verdict:
    if webhook == "mutation":
        # The mutating webhook never refuses: what it cannot read, validation refuses with a message.
        return Verdict({"uid": uid, "allowed": True}, metrics.RESULT_ALLOWED, Reason.UNREADABLE_OBJECT)
    return Verdict({"uid": uid, "allowed": False, "status": _status(code, message)}, result, reason)


# The metav1.StatusReason of a denial is the code's usual one (``rules.decision.status_reason``) but for 409:
# the API server hands the reason on to the client, and client code branches on it. A MAC collision
# keeps its code 409 (SPEC) but not reason Conflict: client-go reads Conflict as a stale
# resourceVersion, so RetryOnConflict, or a controller that requeues conflicts quietly, would send
# the same refused write again and again.
_DENIAL_REASON_EXCEPTIONS = {409: "Forbidden"}


def _status(code: int, message: str) -> ResponseStatus:
    status: ResponseStatus = {"code": code, "message": message}
    reason = _DENIAL_REASON_EXCEPTIONS.get(code) or status_reason(code)
    if reason:
        status["reason"] = reason
    return status


def to_response(uid: str, decision: Decision, *, with_patch: bool) -> AdmissionResponse:
    """The AdmissionResponse for a rules Decision (a patch only where one may be sent)."""
    response: AdmissionResponse = {"uid": uid, "allowed": decision.allowed}
    if not decision.allowed:
        response["status"] = _status(decision.code, decision.message)
    if decision.warnings:
        response["warnings"] = list(decision.warnings)
    if with_patch and decision.allowed and decision.patch:
        response["patch"] = encode_patch(decision.patch)
        response["patchType"] = "JSONPatch"
    return response


def encode_patch(ops: Any) -> str:
    """JSON Patch ops (data, never text) as the base64 string AdmissionResponse.patch carries."""
    return base64.b64encode(orjson.dumps(list(ops))).decode("ascii")

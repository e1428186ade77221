"""The checks kube-apiserver makes of the built-in objects nichotplug writes, and only those.

Custom resources are checked against their CRD's schema (``validation``); built-in kinds have their
validation compiled into kube-apiserver. These are the rules, from its ``pkg/apis/*/validation``,
that a Lease, an Event, a TLS Secret or a webhook configuration written by nichotplug (or its chart
and tests) could break: a write that breaks one is refused here as the real server refuses it, so
a regression shows in the tests rather than in a cluster.

Each check returns the causes of a 422 Invalid (``field``, ``reason``, ``message`` in
apimachinery's words); a value that could not even be decoded (a Lease time in another format)
raises the 400 the real server answers before it validates anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from nichotplug.testing.admission import compile_condition
from nichotplug.testing.errors import bad_request

Cause = dict[str, str]
Check = Callable[[Mapping[str, Any]], list[Cause]]

# metav1.MicroTime's wire format, RFC3339 with exactly six fractional digits.
_MICRO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")
_MICRO_TIME_LAYOUT = "2006-01-02T15:04:05.000000Z07:00"
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_OPERATIONS = frozenset({"*", "CREATE", "UPDATE", "DELETE", "CONNECT"})
_SCOPES = frozenset({"*", "Cluster", "Namespaced"})
_REVIEW_VERSIONS = frozenset({"v1", "v1beta1"})


def _invalid(field: str, value: Any, detail: str) -> Cause:
    shown = f'"{value}"' if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else value
    return {"reason": "FieldValueInvalid", "field": field, "message": f"Invalid value: {shown}: {detail}"}


def _required(field: str, detail: str = "") -> Cause:
    return {"reason": "FieldValueRequired", "field": field, "message": "Required value" + (f": {detail}" if detail
                                                                                              else "")}


def _unsupported(field: str, value: Any, supported: list[str]) -> Cause:
    listed = ", ".join(f'"{item}"' for item in supported)
    return {"reason": "FieldValueNotSupported", "field": field,
            "message": f'Unsupported value: "{value}": supported values: {listed}'}


# -- coordination.k8s.io/v1 Lease ------------------------------------------------------------------


def _lease(obj: Mapping[str, Any]) -> list[Cause]:
    spec = obj.get("spec") or {}
    for key in ("acquireTime", "renewTime"):
        value = spec.get(key)
        if value is not None and not (isinstance(value, str) and _MICRO_TIME.match(value)):
            raise bad_request(f'Lease in version "v1" cannot be handled as a Lease: parsing time "{value}" as '
                              f'"{_MICRO_TIME_LAYOUT}": cannot parse "{value}" as "{_MICRO_TIME_LAYOUT}"')
    causes = []
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and duration <= 0:
        causes.append(_invalid("spec.leaseDurationSeconds", duration, "must be greater than 0"))
    transitions = spec.get("leaseTransitions")
    if transitions is not None and transitions < 0:
        causes.append(_invalid("spec.leaseTransitions", transitions, "must be greater than or equal to 0"))
    return causes


# -- core/v1 Event (the legacy rules every Event written through /api/v1 must pass) ----------------


def _event(obj: Mapping[str, Any]) -> list[Cause]:
    namespace = (obj.get("metadata") or {}).get("namespace", "")
    involved = (obj.get("involvedObject") or {}).get("namespace", "")
    causes = []
    if not obj.get("eventTime"):
        if (involved and involved != namespace) or (not involved and namespace not in ("", "default")):
            causes.append(_invalid("involvedObject.namespace", involved, "does not match event.namespace"))
        return causes
    if not involved and namespace not in ("default", "kube-system"):
        causes.append(_invalid("involvedObject.namespace", involved, "does not match event.namespace"))
    # core/v1 spells the reporting controller reportingComponent.
    causes += [_required(key) for key in ("reportingComponent", "reportingInstance", "action", "reason")
               if not obj.get(key)]
    return causes


# -- core/v1 Secret of type kubernetes.io/tls ------------------------------------------------------


def _secret(obj: Mapping[str, Any]) -> list[Cause]:
    if obj.get("type") != "kubernetes.io/tls":
        return []
    data = obj.get("data") or {}
    return [_required(f"data[{key}]") for key in ("tls.crt", "tls.key") if key not in data]


# -- admissionregistration.k8s.io/v1 webhook configurations ----------------------------------------


def _label_selector(field: str, selector: Any) -> list[Cause]:
    causes = []
    for index, expression in enumerate((selector or {}).get("matchExpressions") or ()):
        where = f"{field}.matchExpressions[{index}]"
        operator, values = expression.get("operator"), expression.get("values") or []
        if operator in ("In", "NotIn") and not values:
            causes.append(_required(f"{where}.values", "must be specified when `operator` is 'In' or 'NotIn'"))
        elif operator in ("Exists", "DoesNotExist") and values:
            causes.append({"reason": "FieldValueForbidden", "field": f"{where}.values",
                           "message": "Forbidden: may not be specified when `operator` is 'Exists' or "
                                      "'DoesNotExist'"})
        elif operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            causes.append(_invalid(f"{where}.operator", operator, "not a valid selector operator"))
    return causes


def _client_config(field: str, config: Mapping[str, Any]) -> list[Cause]:
    url, service = config.get("url"), config.get("service")
    if (url is None) == (service is None):
        return [_required(field, "exactly one of url or service is required")]
    if not isinstance(service, Mapping):
        if not str(url).startswith("https://"):
            return [_invalid(f"{field}.url", url, "'https' is the only allowed URL scheme")]
        return []
    path = service.get("path")
    if path is not None and not str(path).startswith("/"):
        return [_invalid(f"{field}.service.path", path, "must start with a '/'")]
    port = service.get("port", 443)
    if not 1 <= port <= 65535:
        return [_invalid(f"{field}.service.port", port, "port is not valid: must be between 1 and 65535")]
    return []


def _rules(field: str, rules: Any) -> list[Cause]:
    causes = []
    for index, rule in enumerate(rules or ()):
        where = f"{field}[{index}]"
        for key in ("operations", "apiGroups", "apiVersions", "resources"):
            if not rule.get(key):
                causes.append(_required(f"{where}.{key}"))
        for operation in rule.get("operations") or ():
            if operation not in _OPERATIONS:
                causes.append(_unsupported(f"{where}.operations", operation, sorted(_OPERATIONS)))
        if rule.get("scope", "*") not in _SCOPES:
            causes.append(_unsupported(f"{where}.scope", rule["scope"], sorted(_SCOPES)))
    return causes


def _webhook(field: str, webhook: Mapping[str, Any], mutating: bool) -> list[Cause]:
    causes = []
    name = webhook.get("name", "")
    if not name:
        causes.append(_required(f"{field}.name"))
    elif not _DNS_SUBDOMAIN.match(name) or name.count(".") < 2:
        causes.append(_invalid(f"{field}.name", name, "should be a domain with at least three segments separated "
                                                     "by dots"))
    if webhook.get("failurePolicy", "Fail") not in ("Fail", "Ignore"):
        causes.append(_unsupported(f"{field}.failurePolicy", webhook["failurePolicy"], ["Fail", "Ignore"]))
    if webhook.get("matchPolicy", "Equivalent") not in ("Exact", "Equivalent"):
        causes.append(_unsupported(f"{field}.matchPolicy", webhook["matchPolicy"], ["Equivalent", "Exact"]))
    side_effects = webhook.get("sideEffects")
    if side_effects not in ("None", "NoneOnDryRun"):
        causes.append(_unsupported(f"{field}.sideEffects", side_effects, ["None", "NoneOnDryRun"])
                      if side_effects else _required(f"{field}.sideEffects"))
    timeout = webhook.get("timeoutSeconds", 10)
    if not 1 <= timeout <= 30:
        causes.append(_invalid(f"{field}.timeoutSeconds", timeout, "the timeout value must be between 1 and 30 "
                                                                  "seconds"))
    versions = webhook.get("admissionReviewVersions") or []
    if not versions:
        causes.append(_required(f"{field}.admissionReviewVersions", "must specify one of v1, v1beta1"))
    elif not _REVIEW_VERSIONS & set(versions):
        causes.append(_invalid(f"{field}.admissionReviewVersions", versions, "must include at least one of v1, "
                                                                            "v1beta1"))
    if mutating and webhook.get("reinvocationPolicy", "Never") not in ("Never", "IfNeeded"):
        causes.append(_unsupported(f"{field}.reinvocationPolicy", webhook["reinvocationPolicy"],
                                   ["IfNeeded", "Never"]))
    for index, condition in enumerate(webhook.get("matchConditions") or ()):
        causes += _match_condition(f"{field}.matchConditions[{index}]", condition)
    causes += _client_config(f"{field}.clientConfig", webhook.get("clientConfig") or {})
    causes += _rules(f"{field}.rules", webhook.get("rules"))
    causes += _label_selector(f"{field}.namespaceSelector", webhook.get("namespaceSelector"))
    causes += _label_selector(f"{field}.objectSelector", webhook.get("objectSelector"))
    return causes


def _match_condition(field: str, condition: Mapping[str, Any]) -> list[Cause]:
    """Name and expression required; an expression that does not parse is refused as kube-apiserver
    refuses it (it also type-checks, which is not modelled: a wrong type shows when evaluated)."""
    causes = [_required(f"{field}.{key}") for key in ("name", "expression") if not condition.get(key)]
    expression = condition.get("expression")
    if isinstance(expression, str) and expression:
        try:
            compile_condition(expression)
        except ValueError as error:
            causes.append(_invalid(f"{field}.expression", expression, f"compilation failed: {error}"))
    return causes


def _webhooks(obj: Mapping[str, Any], *, mutating: bool) -> list[Cause]:
    causes = []
    seen: set[str] = set()
    for index, webhook in enumerate(obj.get("webhooks") or ()):
        field = f"webhooks[{index}]"
        name = webhook.get("name", "")
        if name in seen:
            causes.append({"reason": "FieldValueDuplicate", "field": f"{field}.name",
                           "message": f'Duplicate value: "{name}"'})
        seen.add(name)
        causes += _webhook(field, webhook, mutating)
    return causes


def _mutating_webhooks(obj: Mapping[str, Any]) -> list[Cause]:
    return _webhooks(obj, mutating=True)


def _validating_webhooks(obj: Mapping[str, Any]) -> list[Cause]:
    return _webhooks(obj, mutating=False)


CHECKS: dict[tuple[str, str], Check] = {
    ("coordination.k8s.io", "leases"): _lease,
    ("", "events"): _event,
    ("", "secrets"): _secret,
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"): _mutating_webhooks,
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations"): _validating_webhooks,
}


def builtin_causes(group: str, plural: str, obj: Mapping[str, Any]) -> list[Cause]:
    """The 422 causes kube-apiserver would find in a built-in object (none for kinds not checked here)."""
    check = CHECKS.get((group, plural))
    return check(obj) if check is not None else []

"""What nichotplug registers with Kubernetes, declared once.

The webhook names, paths and rules here are the single source of truth: the
HTTP layer serves these paths, the Helm chart's webhook configurations and RBAC
are checked against these declarations by tests/chart, and
:func:`webhook_configurations` builds the two configuration objects for the
self-managed certificate mode, the install tests and the demo.

``REQUIRED_RBAC`` lists, per API group and resource, exactly the verbs the
service's own account uses: the cache lists and watches, the controller gets
and patches VMs and writes Events, leader election and certificates. The
action API reads VMs, VMIs and NADs, patches VMs and creates migrations with
the caller's own token, so none of that is here (its failure Events are ours).
Permissions marked ``by_name`` are granted only for the one object the service owns (its Lease, its TLS Secret, its two
webhook configurations, its APIService); ``create`` can never be limited by name in
Kubernetes RBAC, so it is a separate entry. The subresource API also reads the
``kube-system/extension-apiserver-authentication`` ConfigMap, granted by binding the
``extension-apiserver-authentication-reader`` Role every cluster has (not listed here: no rule of ours).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from nichotplug.rules.vm_object import INTERFACES_PATH, OBSERVED_MACS_ANNOTATION

MUTATION_PATH = "/v1/webhook/mutation"
VALIDATION_PATH = "/v1/webhook/validation"

FailurePolicy = Literal["Fail", "Ignore"]
Operation = Literal["CREATE", "UPDATE", "DELETE", "CONNECT"]


@dataclass(frozen=True, slots=True)
class RuleDeclaration:
    """One entry of a webhook's ``rules``: which writes the API server sends us."""

    api_groups: tuple[str, ...]
    api_versions: tuple[str, ...]
    resources: tuple[str, ...]
    operations: tuple[Operation, ...]
    scope: Literal["Namespaced", "Cluster", "*"] = "Namespaced"

    def as_kubernetes(self) -> dict[str, Any]:
        return {
            "apiGroups": list(self.api_groups),
            "apiVersions": list(self.api_versions),
            "resources": list(self.resources),
            "operations": list(self.operations),
            "scope": self.scope,
        }


@dataclass(frozen=True, slots=True)
class WebhookDeclaration:
    """One admission webhook: its registered name, the path we serve it on and its rules."""

    name: str  # what `kubectl` prints in "admission webhook "<name>" denied the request"
    kind: Literal["mutating", "validating"]
    path: str
    rules: tuple[RuleDeclaration, ...]
    default_failure_policy: FailurePolicy
    match_conditions: tuple[Mapping[str, str], ...]  # all must hold for the API server to call us

    def as_webhook_rules(self) -> list[dict[str, Any]]:
        """The Kubernetes ``rules`` list for this webhook."""
        return [rule.as_kubernetes() for rule in self.rules]


# Only the VirtualMachine itself: the status subresource and VMIs carry nothing we decide on.
_VM_WRITES = RuleDeclaration(
    api_groups=("kubevirt.io",),
    api_versions=("v1",),
    resources=("virtualmachines",),
    operations=("CREATE", "UPDATE"),
)


# -- match conditions: which writes each webhook sees ---------------------------------------------
#
# kube-apiserver calls a webhook only when every one of its matchConditions (CEL, GA in Kubernetes 1.30)
# is true, so a write that fails one is neither slowed down by nichotplug nor refused while it is down.
# When one is false the webhook is skipped whatever the others give; when none is false but one fails to
# evaluate, the failurePolicy decides (validation: Fail, so the write is refused, never let through).
# Every field below is read behind has() guards: a missing field reads as its empty value (as the rules
# read it), never as an evaluation error and never as "unchanged" by accident.


@dataclass(frozen=True, slots=True)
class JudgedField:
    """A part of a VirtualMachine whose change on an UPDATE the validating webhook must see.

    ``path`` names the fields from the object's root; ``key`` (if any) is a key of the map at
    ``path`` (an annotation); ``absent`` is the CEL literal a missing field reads as, the same empty
    value the rules read it as. ``read_by`` says which validating rules read it (ARCHITECTURE.md).
    """

    path: tuple[str, ...]
    key: str | None
    absent: str
    read_by: str

    @property
    def dotted(self) -> str:
        return ".".join(self.path) + (f"[{self.key!r}]" if self.key else "")

    def cel_value(self, root: str) -> str:
        """CEL for this field's value in ``root`` (``object`` or ``oldObject``), ``absent`` when missing."""
        selections = [".".join((root, *self.path[:depth])) for depth in range(1, len(self.path) + 1)]
        present = [f"has({selection})" for selection in selections]
        value = selections[-1]
        if self.key is not None:
            present.append(f"{_cel_string(self.key)} in {value}")
            value = f"{value}[{_cel_string(self.key)}]"
        return f"(({' && '.join(present)}) ? {value} : {self.absent})"


def _cel_string(text: str) -> str:
    if "'" in text or "\\" in text:
        raise ValueError(f"field key {text!r} needs escaping in CEL; spell it differently")
    return f"'{text}'"



# What the validating rules read on an UPDATE, and nothing else: ARCHITECTURE.md ("What each validating
# rule reads") lists every rule with its fields; tests/webhook/test_match_conditions.py generates UPDATEs
# that change only fields outside this list and checks that the rules allow every one of them.
JUDGED_FIELDS: tuple[JudgedField, ...] = (
    JudgedField(INTERFACES_PATH, None, "[]",
                "MAC format, duplicate and collision rules; whether an UPDATE plugs or unplugs (hot-plug rules)"),
    JudgedField(("spec", "template", "spec", "networks"), None, "[]",
                "the collision rule's scope (the NAD behind an interface); the hot-plug rules' network checks"),
    JudgedField(("metadata", "annotations"), OBSERVED_MACS_ANNOTATION, "''",
                "the warning for an observed-MAC annotation that does not parse"),
)


def _judged_change_expression() -> str:
    changed = [f"{field.cel_value('object')} != {field.cel_value('oldObject')}" for field in JUDGED_FIELDS]
    return "\n|| ".join(["request.operation == 'CREATE'", *changed])  # a line each, as the chart shows it


def _interface_without_mac_expression() -> str:
    interfaces = JudgedField(INTERFACES_PATH, None, "[]", "").cel_value("object")
    return f"{interfaces}.exists(i, !has(i.macAddress) || i.macAddress == '')"


# Neither webhook is called for a VM that is being deleted: the rules leave such a VM as it is (mutation
# skips it, validation allows it), and virt-controller's removal of its finalizer must not wait for
# nichotplug, or an outage under failurePolicy Fail would keep every deleted VM Terminating.
NOT_BEING_DELETED: dict[str, str] = {"name": "not-being-deleted",
                                     "expression": "!has(object.metadata.deletionTimestamp)"}
# Validation judges a new VM whole, and an UPDATE only when it changes a judged field: a label, a
# finalizer, a start or stop (runStrategy) never waits for nichotplug nor fails while it is down.
JUDGED_CHANGE: dict[str, str] = {"name": "create-or-judged-field-changed",
                                 "expression": _judged_change_expression()}
# Mutation has work only when some interface has no MAC (a new VM, a hot-plugged NIC, a MAC that
# `kubectl apply` dropped); an empty macAddress is no MAC, as the rules read it.
INTERFACE_WITHOUT_MAC: dict[str, str] = {"name": "an-interface-without-mac",
                                         "expression": _interface_without_mac_expression()}


# Mutation only fills in missing MACs, so an outage must not block VM edits (Ignore);
# validation is what keeps MACs unique and hot-plug safe, so it fails closed (Fail).
MUTATING_WEBHOOK = WebhookDeclaration(
    name="mutate-vm.nichotplug.harvesterhci.io",
    kind="mutating",
    path=MUTATION_PATH,
    rules=(_VM_WRITES,),
    default_failure_policy="Ignore",
    match_conditions=(NOT_BEING_DELETED, INTERFACE_WITHOUT_MAC),
)
VALIDATING_WEBHOOK = WebhookDeclaration(
    name="validate-vm.nichotplug.harvesterhci.io",
    kind="validating",
    path=VALIDATION_PATH,
    rules=(_VM_WRITES,),
    default_failure_policy="Fail",
    match_conditions=(NOT_BEING_DELETED, JUDGED_CHANGE),
)
WEBHOOKS: tuple[WebhookDeclaration, ...] = (MUTATING_WEBHOOK, VALIDATING_WEBHOOK)


class Scope(Enum):
    """Where a permission is granted: cluster-wide (ClusterRole) or in the release namespace only (Role)."""

    CLUSTER = "cluster"
    OWN_NAMESPACE = "own-namespace"


class Needed(Enum):
    """When the service needs a permission."""

    ALWAYS = "always"
    SELF_MANAGED_CERTS = "self-managed-certs"  # only with `serve --self-managed-certs`


@dataclass(frozen=True, slots=True)
class Permission:
    """Verbs the service's own account uses on one resource, and why."""

    api_group: str
    resource: str
    verbs: frozenset[str]
    scope: Scope
    why: str
    by_name: bool = False  # granted only for the named object the service owns
    needed: Needed = Needed.ALWAYS
    subresources_only: bool = False  # only when the subresource API is served (``serve --apiservice``)


def _verbs(*names: str) -> frozenset[str]:
    return frozenset(names)


REQUIRED_RBAC: tuple[Permission, ...] = (
    Permission("kubevirt.io", "virtualmachines", _verbs("get", "list", "watch"), Scope.CLUSTER,
               "the cache of VMs behind the MAC index and the rules"),
    Permission("kubevirt.io", "virtualmachines", _verbs("patch"), Scope.CLUSTER,
               "the controller writes the observed-MAC annotation and backfills MACs (get: re-read on conflict)"),
    Permission("kubevirt.io", "virtualmachineinstances", _verbs("list", "watch"), Scope.CLUSTER,
               "the cache of VMI state for eligibility and observed MACs"),
    Permission("k8s.cni.cncf.io", "network-attachment-definitions", _verbs("list", "watch"), Scope.CLUSTER,
               "the cache of NADs: whether a network is hot-pluggable, its cluster network"),
    Permission("", "events", _verbs("create", "patch"), Scope.CLUSTER,
               "Events on VMs (patch bumps the count of a repeated Event)"),
    Permission("coordination.k8s.io", "leases", _verbs("create"), Scope.OWN_NAMESPACE,
               "the leader-election Lease, created by the first replica"),
    Permission("coordination.k8s.io", "leases", _verbs("get", "update"), Scope.OWN_NAMESPACE,
               "leader election renews the Lease", by_name=True),
    Permission("", "secrets", _verbs("create"), Scope.OWN_NAMESPACE,
               "the first replica creates the TLS Secret", needed=Needed.SELF_MANAGED_CERTS),
    Permission("", "secrets", _verbs("get", "update"), Scope.OWN_NAMESPACE,
               "every replica reads the TLS Secret; rotation updates it", by_name=True,
               needed=Needed.SELF_MANAGED_CERTS),
    Permission("admissionregistration.k8s.io", "mutatingwebhookconfigurations", _verbs("get", "patch"),
               Scope.CLUSTER, "keep the caBundle equal to our CA", by_name=True,
               needed=Needed.SELF_MANAGED_CERTS),
    Permission("admissionregistration.k8s.io", "validatingwebhookconfigurations", _verbs("get", "patch"),
               Scope.CLUSTER, "keep the caBundle equal to our CA", by_name=True,
               needed=Needed.SELF_MANAGED_CERTS),
    Permission("kubevirt.io", "virtualmachineinstances", _verbs("get"), Scope.CLUSTER,
               "the subresource API reads the VMI fresh before it judges a hot-plug", subresources_only=True),
    Permission("k8s.cni.cncf.io", "network-attachment-definitions", _verbs("get"), Scope.CLUSTER,
               "the subresource API reads the NADs a hot-plug names fresh", subresources_only=True),
    Permission("kubevirt.io", "virtualmachineinstancemigrations", _verbs("create"), Scope.CLUSTER,
               "the subresource API requests the live migration that applies a hot-plug", subresources_only=True),
    Permission("apiregistration.k8s.io", "apiservices", _verbs("get", "patch"),
               Scope.CLUSTER, "keep the subresource APIService's caBundle equal to our CA", by_name=True,
               needed=Needed.SELF_MANAGED_CERTS, subresources_only=True),
)


def required_permissions(*, self_managed_certs: bool, subresources: bool = True) -> tuple[Permission, ...]:
    """The permissions a deployment in the given certificate mode, with or without the subresource API, needs."""
    return tuple(
        perm for perm in REQUIRED_RBAC
        if (perm.needed is Needed.ALWAYS or self_managed_certs) and (subresources or not perm.subresources_only)
    )


@dataclass(frozen=True, slots=True)
class ServiceRef:
    """The in-cluster Service the API server calls the webhooks through."""

    namespace: str
    name: str
    port: int = 443


def _client_config(path: str, service: ServiceRef | None, url: str | None, ca_bundle: bytes) -> dict[str, Any]:
    config: dict[str, Any]
    if service is not None:
        config = {"service": {"namespace": service.namespace, "name": service.name,
                              "path": path, "port": service.port}}
    else:
        assert url is not None  # checked by the caller
        config = {"url": url.rstrip("/") + path}
    if ca_bundle:
        config["caBundle"] = base64.b64encode(ca_bundle).decode("ascii")
    return config


def _namespace_selector(excluded_namespaces: Sequence[str]) -> dict[str, Any]:
    """Every namespace but ``excluded_namespaces`` (the API server refuses ``NotIn`` with no values)."""
    if not excluded_namespaces:
        return {}
    return {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": list(excluded_namespaces)},
    ]}


def _webhook_entry(
    webhook: WebhookDeclaration,
    client_config: dict[str, Any],
    failure_policy: FailurePolicy,
    excluded_namespaces: Sequence[str],
    timeout_seconds: int,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": webhook.name,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "matchPolicy": "Equivalent",
        "timeoutSeconds": timeout_seconds,
        "failurePolicy": failure_policy,
        "clientConfig": client_config,
        "rules": webhook.as_webhook_rules(),
        "namespaceSelector": _namespace_selector(excluded_namespaces),
        "matchConditions": [dict(condition) for condition in webhook.match_conditions],
    }
    if webhook.kind == "mutating":
        entry["reinvocationPolicy"] = "Never"
    return entry


def webhook_configurations(
    name: str,
    *,
    ca_bundle: bytes = b"",
    service: ServiceRef | None = None,
    url: str | None = None,
    excluded_namespaces: Sequence[str] = ("kube-system",),
    failure_policies: Mapping[str, FailurePolicy] | None = None,
    timeout_seconds: int = 5,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The MutatingWebhookConfiguration and ValidatingWebhookConfiguration, both called ``name``.

    Give exactly one of ``service`` (in-cluster) or ``url`` (the base URL of a
    server outside the cluster, e.g. ``https://127.0.0.1:9443``; the webhook
    paths are appended). ``ca_bundle`` is the PEM the API server trusts for
    that endpoint. ``failure_policies`` maps "mutating"/"validating" to a
    policy, overriding each declaration's default.
    """
    if (service is None) == (url is None):
        raise ValueError("give exactly one of service= or url= for the webhooks' clientConfig")
    if url is not None and not url.startswith("https://"):
        raise ValueError(f"webhook URL must use https, got {url!r}")
    if not 1 <= timeout_seconds <= 30:
        raise ValueError(f"timeout_seconds must be between 1 and 30, got {timeout_seconds}")
    policies = dict(failure_policies or {})
    unknown = set(policies) - {"mutating", "validating"}
    if unknown:
        raise ValueError(f"failure_policies keys must be 'mutating' or 'validating', got {sorted(unknown)}")
    objects = []
    for webhook, kind in ((MUTATING_WEBHOOK, "MutatingWebhookConfiguration"),
                          (VALIDATING_WEBHOOK, "ValidatingWebhookConfiguration")):
        policy = policies.get(webhook.kind, webhook.default_failure_policy)
        if policy not in ("Fail", "Ignore"):
            raise ValueError(f"failure policy must be 'Fail' or 'Ignore', got {policy!r}")
        entry = _webhook_entry(webhook, _client_config(webhook.path, service, url, ca_bundle),
                               policy, excluded_namespaces, timeout_seconds)
        objects.append({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": kind,
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "nichotplug"}},
            "webhooks": [entry],
        })
    return objects[0], objects[1]

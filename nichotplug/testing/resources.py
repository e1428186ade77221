"""What the in-process API server serves: one :class:`ResourceInfo` per resource and version.

Built-in resources are declared here; custom resources come from CRD objects
(:func:`resources_from_crd`). Routing, discovery and OpenAPI all read the same
records, so a CRD created through the API is served everywhere at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceInfo:
    group: str  # "" for the core group
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    list_kind: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    subresources: frozenset[str] = frozenset()  # e.g. {"status"}
    schema: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)  # openAPIV3Schema
    storage: bool = True  # the storage version of its group/kind
    printer_columns: tuple[Mapping[str, Any], ...] = field(default=(), compare=False, hash=False)
    # Whether a PUT may leave out metadata.resourceVersion (the registry's AllowUnconditionalUpdate):
    # false for custom resources, CRDs, Leases and webhook configurations.
    unconditional_update: bool = True

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def api_version(self) -> str:
        return self.group_version

    @property
    def qualified_name(self) -> str:
        """``plural.group`` as in error messages (``virtualmachines.kubevirt.io``)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def effective_list_kind(self) -> str:
        return self.list_kind or f"{self.kind}List"


def _builtin(group: str, version: str, plural: str, kind: str, *, namespaced: bool,
             short_names: tuple[str, ...] = (), verbs: tuple[str, ...] = ALL_VERBS,
             subresources: frozenset[str] = frozenset(), unconditional_update: bool = True) -> ResourceInfo:
    return ResourceInfo(
        group=group, version=version, plural=plural, singular=kind.lower(), kind=kind,
        namespaced=namespaced, short_names=short_names, verbs=verbs, subresources=subresources,
        unconditional_update=unconditional_update,
    )


BUILTIN_RESOURCES: tuple[ResourceInfo, ...] = (
    _builtin("", "v1", "namespaces", "Namespace", namespaced=False, short_names=("ns",),
             subresources=frozenset({"status"})),
    _builtin("", "v1", "events", "Event", namespaced=True, short_names=("ev",)),
    _builtin("", "v1", "secrets", "Secret", namespaced=True),
    _builtin("", "v1", "configmaps", "ConfigMap", namespaced=True, short_names=("cm",)),
    _builtin("", "v1", "serviceaccounts", "ServiceAccount", namespaced=True, short_names=("sa",)),
    _builtin("events.k8s.io", "v1", "events", "Event", namespaced=True, short_names=("ev",)),
    _builtin("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True, unconditional_update=False),
    _builtin("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
             namespaced=False, short_names=("crd", "crds"), subresources=frozenset({"status"}),
             unconditional_update=False),
    _builtin("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations",
             "MutatingWebhookConfiguration", namespaced=False, unconditional_update=False),
    _builtin("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations",
             "ValidatingWebhookConfiguration", namespaced=False, unconditional_update=False),
    _builtin("rbac.authorization.k8s.io", "v1", "roles", "Role", namespaced=True),
    _builtin("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", namespaced=True),
    _builtin("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
    _builtin("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False),
)

# (group, plural) of the resources whose writes do more than store the object.
CRD_GR: Final = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACE_GR: Final = ("", "namespaces")
MUTATING_GR: Final = ("admissionregistration.k8s.io", "mutatingwebhookconfigurations")
VALIDATING_GR: Final = ("admissionregistration.k8s.io", "validatingwebhookconfigurations")

_BUILTIN_GROUP_RESOURCES = frozenset((info.group, info.plural) for info in BUILTIN_RESOURCES)


def is_custom(info: ResourceInfo) -> bool:
    """Whether ``info`` is a custom resource (served from a CRD), whose requests have their own rules."""
    # A set lookup, not a comparison of ResourceInfo dataclasses field by field: every write asks it.
    return (info.group, info.plural) not in _BUILTIN_GROUP_RESOURCES


def resources_from_crd(crd: Mapping[str, Any]) -> list[ResourceInfo]:
    """One ResourceInfo per served version of a CustomResourceDefinition object."""
    spec = crd["spec"]
    names = spec["names"]
    infos = []
    for version in spec.get("versions", []):
        if not version.get("served", False):
            continue
        subresources = frozenset((version.get("subresources") or {}).keys())
        infos.append(ResourceInfo(
            group=spec["group"],
            version=version["name"],
            plural=names["plural"],
            singular=names.get("singular") or names["kind"].lower(),
            kind=names["kind"],
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            list_kind=names.get("listKind") or f"{names['kind']}List",
            short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()),
            subresources=subresources,
            schema=(version.get("schema") or {}).get("openAPIV3Schema"),
            storage=bool(version.get("storage", False)),
            printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
            unconditional_update=False,
        ))
    return infos

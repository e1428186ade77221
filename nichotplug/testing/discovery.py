"""API discovery documents of the in-process API server, in their plain ``application/json`` forms.

kubectl first asks ``/api`` and ``/apis`` for aggregated discovery (``apidiscovery.k8s.io/v2``)
and falls back to these documents when the server answers plain JSON, so serving them is enough
(see ``fixtures/kubectl/get_api*.json``, recorded from kube-apiserver v1.36). Every function
reads the same :class:`ResourceInfo` records the router serves, so a CRD shows up here the
moment it is created.
"""

from __future__ import annotations

import base64
import hashlib
import platform
import re
from collections.abc import Iterable, Sequence
from typing import Any

from nichotplug.testing import openapi
from nichotplug.testing.resources import ALL_VERBS, BUILTIN_RESOURCES, ResourceInfo

# Verbs of a subresource such as "virtualmachines/status", as kube-apiserver lists them.
SUBRESOURCE_VERBS = ("get", "patch", "update")

# kube-apiserver lists a custom resource's verbs in this (unsorted) order; built-ins are sorted.
CUSTOM_RESOURCE_VERB_ORDER = ("delete", "deletecollection", "get", "list", "patch", "create", "update", "watch")

# The Kubernetes release this server imitates (the fixtures were recorded from v1.36.2).
SERVED_MAJOR = "1"
SERVED_MINOR = "36"

_VERSION_PATTERN = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version() -> dict[str, Any]:
    """``GET /version``: the same keys as kube-apiserver's answer, naming this server."""
    return {
        "major": SERVED_MAJOR,
        "minor": SERVED_MINOR,
        "emulationMajor": SERVED_MAJOR,
        "emulationMinor": SERVED_MINOR,
        "minCompatibilityMajor": SERVED_MAJOR,
        "minCompatibilityMinor": str(int(SERVED_MINOR) - 1),
        "gitVersion": f"v{SERVED_MAJOR}.{SERVED_MINOR}.0+nichotplug.testing",
        "gitCommit": "0" * 40,
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": f"python{platform.python_version()}",
        "compiler": "cpython",
        "platform": f"{platform.system().lower()}/{_machine_arch()}",
    }


def _machine_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def core_versions(*, server_address: str | None = None) -> dict[str, Any]:
    """``GET /api``: the APIVersions of the core group (only ``v1``).

    ``server_address`` (``host:port``) adds the ``serverAddressByClientCIDRs`` entry the real
    server sends; clients do not need it.
    """
    document: dict[str, Any] = {"kind": "APIVersions", "versions": ["v1"]}
    if server_address:
        document["serverAddressByClientCIDRs"] = [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]
    return document


def version_priority(version_name: str) -> tuple[int, int, int, str]:
    """Sort key putting versions in Kubernetes' priority order (v2 > v1 > v1beta2 > v1alpha1 > other).

    Smaller keys come first, so ``sorted(versions, key=version_priority)`` lists the most
    preferred version first, as discovery does.
    """
    match = _VERSION_PATTERN.match(version_name)
    if match is None:
        return (3, 0, 0, version_name)  # not Kubernetes-like: last, alphabetically
    major = int(match.group(1))
    stability = {None: 0, "beta": 1, "alpha": 2}[match.group(2)]
    minor = int(match.group(3) or 0)
    return (stability, -major, -minor, "")


def _groups_in_order(resources: Iterable[ResourceInfo]) -> list[str]:
    """Named groups (not the core group) in the order their first resource appears."""
    seen: dict[str, None] = {}
    for info in resources:
        if info.group:
            seen.setdefault(info.group, None)
    return list(seen)


def _group_document(resources: Sequence[ResourceInfo], group_name: str) -> dict[str, Any] | None:
    members = [info for info in resources if info.group == group_name]
    if not group_name or not members:
        return None
    version_names = sorted({info.version for info in members}, key=version_priority)
    storage_versions = [info.version for info in members if info.storage]
    preferred = storage_versions[0] if storage_versions else version_names[0]
    return {
        "name": group_name,
        "versions": [{"groupVersion": f"{group_name}/{name}", "version": name} for name in version_names],
        "preferredVersion": {"groupVersion": f"{group_name}/{preferred}", "version": preferred},
    }


def group_list(resources: Sequence[ResourceInfo]) -> dict[str, Any]:
    """``GET /apis``: every named group; preferredVersion is the storage version."""
    groups = [_group_document(resources, name) for name in _groups_in_order(resources)]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [doc for doc in groups if doc is not None]}


def group(resources: Sequence[ResourceInfo], group: str) -> dict[str, Any] | None:
    """``GET /apis/<group>``: the APIGroup, or None when no resource is served in that group."""
    document = _group_document(resources, group)
    if document is None:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **document}


def storage_version_hash(group: str, version: str, kind: str) -> str:
    """kube-apiserver's ``storageVersionHash``: base64 of the first 8 bytes of sha256("group/version/kind")."""
    digest = hashlib.sha256(f"{group}/{version}/{kind}".encode()).digest()
    return base64.b64encode(digest[:8]).decode()


def _storage_version_of(resources: Sequence[ResourceInfo], info: ResourceInfo) -> str:
    for candidate in resources:
        if candidate.group == info.group and candidate.plural == info.plural and candidate.storage:
            return candidate.version
    return info.version


def _is_builtin(info: ResourceInfo) -> bool:
    return info in BUILTIN_RESOURCES


def _listed_verbs(info: ResourceInfo) -> list[str]:
    if not _is_builtin(info) and set(info.verbs) == set(ALL_VERBS):
        return list(CUSTOM_RESOURCE_VERB_ORDER)
    return sorted(info.verbs)


def _resource_entries(resources: Sequence[ResourceInfo], info: ResourceInfo) -> list[dict[str, Any]]:
    entry: dict[str, Any] = {
        "name": info.plural,
        "singularName": info.singular,
        "namespaced": info.namespaced,
        "kind": info.kind,
        "verbs": _listed_verbs(info),
    }
    if info.short_names:
        entry["shortNames"] = list(info.short_names)
    if info.categories:
        entry["categories"] = list(info.categories)
    entry["storageVersionHash"] = storage_version_hash(
        info.group, _storage_version_of(resources, info), info.kind
    )
    entries = [entry]
    for subresource in sorted(info.subresources):
        entries.append({
            "name": f"{info.plural}/{subresource}",
            "singularName": "",
            "namespaced": info.namespaced,
            "kind": info.kind,
            "verbs": list(SUBRESOURCE_VERBS),
        })
    return entries


def resource_list(resources: Sequence[ResourceInfo], group: str, version: str) -> dict[str, Any] | None:
    """``GET /api/v1`` or ``GET /apis/<group>/<version>``: the APIResourceList, or None if not served.

    Entries are sorted by name, each main resource followed by its subresources
    (``virtualmachines``, ``virtualmachines/status``), as the real server lists them.
    """
    members = sorted(
        (info for info in resources if info.group == group and info.version == version),
        key=lambda info: info.plural,
    )
    if not members:
        return None
    entries = [entry for info in members for entry in _resource_entries(resources, info)]
    if not group:
        # The core group's list carries no apiVersion (fixtures/kubectl/get_api_v1.json).
        return {"kind": "APIResourceList", "groupVersion": version, "resources": entries}
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}", "resources": entries}


# ---------------------------------------------------------------------------- aggregated discovery

AGGREGATED_MEDIA_TYPE = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"


def wants_aggregated(accept: str | None) -> bool:
    """Whether an ``Accept`` header asks for ``apidiscovery.k8s.io/v2`` aggregated discovery (kubectl does)."""
    for media_range in (accept or "").split(","):
        parameters = {key.strip(): value.strip() for key, _, value in
                      (part.partition("=") for part in media_range.split(";")[1:])}
        if (parameters.get("g"), parameters.get("v"), parameters.get("as")) == (
                "apidiscovery.k8s.io", "v2", "APIGroupDiscoveryList"):
            return True
    return False


def _aggregated_resource(info: ResourceInfo) -> dict[str, Any]:
    response_kind = {"group": info.group, "version": info.version, "kind": info.kind}
    entry: dict[str, Any] = {
        "resource": info.plural,
        "responseKind": response_kind,
        "scope": "Namespaced" if info.namespaced else "Cluster",
        "singularResource": info.singular,
        "verbs": _listed_verbs(info),
    }
    if info.short_names:
        entry["shortNames"] = list(info.short_names)
    if info.categories:
        entry["categories"] = list(info.categories)
    if info.subresources:
        entry["subresources"] = [
            {"subresource": name, "responseKind": dict(response_kind), "verbs": list(SUBRESOURCE_VERBS)}
            for name in sorted(info.subresources)
        ]
    return entry


def _aggregated_group(resources: Sequence[ResourceInfo], group_name: str) -> dict[str, Any]:
    members = [info for info in resources if info.group == group_name]
    storage_versions = [info.version for info in members if info.storage]
    version_names = sorted({info.version for info in members}, key=version_priority)
    if storage_versions:  # the preferred (storage) version first, as its discovery entry says
        version_names.remove(storage_versions[0])
        version_names.insert(0, storage_versions[0])
    metadata: dict[str, Any] = {"creationTimestamp": None}
    if group_name:
        metadata["name"] = group_name
    versions = [{
        "version": name,
        "resources": [_aggregated_resource(info) for info in
                      sorted((info for info in members if info.version == name), key=lambda info: info.plural)],
        "freshness": "Current",
    } for name in version_names]
    return {"metadata": metadata, "versions": versions}


def aggregated(resources: Sequence[ResourceInfo], *, core: bool) -> dict[str, Any]:
    """``GET /api`` (``core=True``) or ``GET /apis`` as an ``apidiscovery.k8s.io/v2`` APIGroupDiscoveryList.

    Serve it with :data:`AGGREGATED_MEDIA_TYPE` as Content-Type when :func:`wants_aggregated`
    says the client asked for it: kubectl then learns every resource from these two answers
    instead of one request per group version.
    """
    names = [""] if core else _groups_in_order(resources)
    items = [_aggregated_group(resources, name) for name in names
             if any(info.group == name for info in resources)]
    return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {},
            "items": items}


def document(path: str, resources: Sequence[ResourceInfo], *, server_address: str) -> dict[str, Any] | None:
    """The plain discovery or OpenAPI v3 document a non-resource GET of ``path`` answers; None = 404.

    ``path`` has no trailing slash; ``server_address`` (host:port) is what ``/api`` reports.
    Each answer is a fresh top-level dict, so the caller may add to it.
    """
    parts = [p for p in path.split("/") if p]
    if path == "/version":
        return dict(version())
    if path == "/api":
        return dict(core_versions(server_address=server_address))
    if path == "/apis":
        return dict(group_list(resources))
    found: dict[str, Any] | None = None
    if parts[0] == "apis" and len(parts) == 2:
        found = group(resources, parts[1])
    elif parts[0] == "api" and len(parts) == 2:
        found = resource_list(resources, "", parts[1])
    elif parts[0] == "apis" and len(parts) == 3:
        found = resource_list(resources, parts[1], parts[2])
    elif parts[:2] == ["openapi", "v3"]:
        found = _openapi_document(resources, parts[2:])
    return dict(found) if found is not None else None


def _openapi_document(resources: Sequence[ResourceInfo], parts: Sequence[str]) -> dict[str, Any] | None:
    """``/openapi/v3`` (``parts`` empty) or one group-version's document under it."""
    if not parts:
        return dict(openapi.v3_index(resources))
    if parts[0] == "api" and len(parts) == 2:
        return openapi.v3_document(resources, "", parts[1])
    if parts[0] == "apis" and len(parts) == 3:
        return openapi.v3_document(resources, parts[1], parts[2])
    return None

"""What the subresource API says about itself: discovery and OpenAPI documents, as data.

kube-apiserver's aggregator asks an APIService's server for ``/apis/<group>/<version>`` to decide
whether it is Available, and for ``/openapi/v2`` and ``/openapi/v3`` (then the group document the v3
index points at) to merge into its own OpenAPI; kubectl reads the merged discovery. Everything here
is built once from :data:`SUBRESOURCES`, so discovery, the OpenAPI paths and the routes cannot
disagree.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final

GROUP: Final = "subresources.nichotplug.io"
VERSION: Final = "v1"
GROUP_VERSION: Final = f"{GROUP}/{VERSION}"
APISERVICE: Final = f"{VERSION}.{GROUP}"
RESOURCE: Final = "virtualmachines"
VM_PATH: Final = f"/apis/{GROUP_VERSION}/namespaces/{{namespace}}/{RESOURCE}/{{name}}"
OPENAPI_V3_GROUP_PATH: Final = f"/openapi/v3/apis/{GROUP_VERSION}"


@dataclass(frozen=True, slots=True)
class Subresource:
    """One subresource of ``virtualmachines``: its HTTP method, the RBAC verb kube-apiserver checks."""

    name: str
    method: str  # "POST" or "GET"
    summary: str

    @property
    def verb(self) -> str:
        return "create" if self.method == "POST" else "get"


ADD_NIC: Final = Subresource("addnic", "POST", "Hot-plug a virtio bridge interface on a multus network")
REMOVE_NIC: Final = Subresource("removenic", "POST", "Hot-unplug an interface (sets it state: absent)")
HOTUNPLUGGABLE_NICS: Final = Subresource("hotunpluggablenics", "GET", "The interfaces that can be unplugged now")
HOTPLUG_CHECK: Final = Subresource("hotplugcheck", "GET", "Whether the VM is eligible for NIC hot-plug, and why not")
SUBRESOURCES: Final = {item.name: item for item in (ADD_NIC, REMOVE_NIC, HOTUNPLUGGABLE_NICS, HOTPLUG_CHECK)}

_GROUP_VERSION_FOR_DISCOVERY: Final = {"groupVersion": GROUP_VERSION, "version": VERSION}


def api_group() -> dict[str, Any]:
    """``GET /apis/subresources.nichotplug.io``: the group and its one version."""
    return {"kind": "APIGroup", "apiVersion": "v1", "name": GROUP,
            "versions": [_GROUP_VERSION_FOR_DISCOVERY], "preferredVersion": _GROUP_VERSION_FOR_DISCOVERY}


def api_group_list() -> dict[str, Any]:
    """``GET /apis``: the groups this server serves (one)."""
    group = {key: value for key, value in api_group().items() if key not in ("kind", "apiVersion")}
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}


def api_resource_list() -> dict[str, Any]:
    """``GET /apis/subresources.nichotplug.io/v1``: the four subresources of ``virtualmachines``."""
    resources = [{"name": f"{RESOURCE}/{item.name}", "singularName": "", "namespaced": True,
                  "kind": "VirtualMachine", "verbs": [item.verb]} for item in SUBRESOURCES.values()]
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION, "resources": resources}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_PATH_PARAMETERS: Final = [
    {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in ("namespace", "name")
]
_STRING: Final = {"type": "string"}
_BODIES: Final = {
    ADD_NIC.name: {"type": "object", "required": ["networkName"],
                   "properties": {"interfaceName": _STRING, "networkName": _STRING, "macAddress": _STRING}},
    REMOVE_NIC.name: {"type": "object", "required": ["interfaceName"], "properties": {"interfaceName": _STRING}},
}


def _operation(item: Subresource) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": f"{item.name}NamespacedVirtualMachine",
        "summary": item.summary,
        "responses": {"200": {"description": "OK", "content": _json_content({"type": "object"})}},
    }
    body = _BODIES.get(item.name)
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json_content(body)}
    return operation


def openapi_v3_group() -> dict[str, Any]:
    """The OpenAPI v3 document of ``subresources.nichotplug.io/v1`` (the four operations)."""
    paths = {
        f"{VM_PATH}/{item.name}": {"parameters": _PATH_PARAMETERS, item.method.lower(): _operation(item)}
        for item in SUBRESOURCES.values()
    }
    return {"openapi": "3.0.0", "info": {"title": "nichotplug NIC hot-plug subresources", "version": VERSION},
            "paths": paths}


def openapi_v3_index() -> dict[str, Any]:
    """``GET /openapi/v3``: where the group document is; the hash changes when the document does."""
    digest = hashlib.sha256(json.dumps(openapi_v3_group(), sort_keys=True).encode()).hexdigest().upper()
    relative = OPENAPI_V3_GROUP_PATH.lstrip("/").removeprefix("openapi/v3/")
    return {"paths": {relative: {"serverRelativeURL": f"{OPENAPI_V3_GROUP_PATH}?hash={digest}"}}}


def openapi_v2() -> dict[str, Any]:
    """``GET /openapi/v2``: a valid Swagger 2.0 document with no paths.

    The aggregator merges every APIService's v2 document into kube-apiserver's; ours adds nothing a
    v2 client could use (kubectl reads v3), so it only has to be valid.
    """
    return {"swagger": "2.0", "info": {"title": "nichotplug NIC hot-plug subresources", "version": VERSION},
            "paths": {}}

"""Putting VMs, VMIs and NADs into the in-process API server the way KubeVirt and Harvester leave them.

The object shapes come from the rule tests' builders (``tests/rules/rules_support.py``); this module
only writes them through the API: a VM's status goes through its ``/status`` subresource (the main
resource ignores it, as the real API server does), a VMI's status is part of the object (its CRD has
no status subresource).
"""

from __future__ import annotations

import asyncio
from typing import Any

from kubernetes_asyncio.client import ApiClient, CoreV1Api, CustomObjectsApi, RbacAuthorizationV1Api
from kubernetes_asyncio.client.exceptions import ApiException
from rules.rules_support import KUBE_OVN_CONFIG, iface, multus_net, nad, pod_net, vm, vmi

__all__ = [
    "KUBE_OVN_CONFIG", "NETWORK_GONE", "create_nad", "create_running_vm", "events_about", "grant", "iface",
    "migrations", "multus_net", "nad", "pod_net", "read_vm", "spec_interfaces", "spec_networks",
    "take_network_away", "vm", "vmi",
]

MERGE = "application/merge-patch+json"


async def create_nad(api: ApiClient, obj: dict[str, Any]) -> dict[str, Any]:
    namespace = obj["metadata"]["namespace"]
    created: dict[str, Any] = await CustomObjectsApi(api).create_namespaced_custom_object(
        "k8s.cni.cncf.io", "v1", namespace, "network-attachment-definitions", obj)
    return created


async def create_running_vm(
    api: ApiClient, vm_obj: dict[str, Any], vmi_obj: dict[str, Any] | None,
) -> dict[str, Any]:
    """Create the VM (and set its status), and its VMI when given; returns the VM as stored."""
    custom = CustomObjectsApi(api)
    namespace, name = vm_obj["metadata"]["namespace"], vm_obj["metadata"]["name"]
    body = {key: value for key, value in vm_obj.items() if key != "status"}
    body["metadata"] = {key: value for key, value in vm_obj["metadata"].items()
                        if key not in ("resourceVersion", "uid", "deletionTimestamp")}
    await custom.create_namespaced_custom_object("kubevirt.io", "v1", namespace, "virtualmachines", body)
    if "status" in vm_obj:
        await custom.patch_namespaced_custom_object_status(
            "kubevirt.io", "v1", namespace, "virtualmachines", name, {"status": vm_obj["status"]},
            _content_type=MERGE)
    if vmi_obj is not None:
        vmi_body = dict(vmi_obj)
        vmi_body["metadata"] = {key: value for key, value in vmi_obj["metadata"].items()
                                if key != "deletionTimestamp"}
        vmi_body["spec"] = {"domain": {"devices": {}}}
        await custom.create_namespaced_custom_object(
            "kubevirt.io", "v1", namespace, "virtualmachineinstances", vmi_body)
    return await read_vm(api, namespace, name)


async def read_vm(api: ApiClient, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = await CustomObjectsApi(api).get_namespaced_custom_object(
        "kubevirt.io", "v1", namespace, "virtualmachines", name)
    return obj


def spec_interfaces(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list(obj["spec"]["template"]["spec"]["domain"]["devices"].get("interfaces", []))


def spec_networks(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list(obj["spec"]["template"]["spec"].get("networks", []))


async def migrations(api: ApiClient, namespace: str) -> list[dict[str, Any]]:
    listed: dict[str, Any] = await CustomObjectsApi(api).list_namespaced_custom_object(
        "kubevirt.io", "v1", namespace, "virtualmachineinstancemigrations")
    return list(listed["items"])


async def events_about(api: ApiClient, namespace: str, name: str) -> list[Any]:
    listed = await CoreV1Api(api).list_namespaced_event(namespace)
    return [event for event in listed.items if event.involved_object.name == name]


async def grant(api: ApiClient, namespace: str, username: str, rules: list[dict[str, Any]]) -> None:
    """A Role with ``rules`` bound to ``username`` in ``namespace`` (real RBAC objects)."""
    rbac = RbacAuthorizationV1Api(api)
    role = f"{username}-role"
    await rbac.create_namespaced_role(namespace, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": role, "namespace": namespace}, "rules": rules})
    await rbac.create_namespaced_role_binding(namespace, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": f"{username}-binding", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": username}]})


async def wait_for(predicate: Any, *, attempts: int = 200) -> None:
    """Poll ``predicate()`` (sync) until true; fails the test after ``attempts`` polls."""
    for _ in range(attempts):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def ensure_namespace(api: ApiClient, name: str) -> None:
    """Create a namespace unless it exists (a real API server keeps them for the whole session)."""
    try:
        await CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    except ApiException as error:
        if error.status != 409:
            raise


NAD_API = ("k8s.cni.cncf.io", "v1")
# How the network of a NIC can go away under a running VM (harvester#8293); see take_network_away.
NETWORK_GONE = ("deleted", "being-deleted", "no-longer-a-bridge")


async def take_network_away(api: ApiClient, how: str, namespace: str = "default", name: str = "vlan1") -> None:
    """Delete the NAD, or leave it being deleted (held by a finalizer), or make it a kube-ovn network."""
    custom = CustomObjectsApi(api)
    plural = "network-attachment-definitions"
    if how == "no-longer-a-bridge":
        await custom.patch_namespaced_custom_object(*NAD_API, namespace, plural, name,
                                                    {"spec": {"config": KUBE_OVN_CONFIG}}, _content_type=MERGE)
        return
    if how == "being-deleted":
        await custom.patch_namespaced_custom_object(*NAD_API, namespace, plural, name,
                                                    {"metadata": {"finalizers": ["example.com/hold"]}},
                                                    _content_type=MERGE)
    await custom.delete_namespaced_custom_object(*NAD_API, namespace, plural, name)

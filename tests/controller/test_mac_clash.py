"""The backfill meets a MAC another VM holds (issue 14): the exact sequence users report, on both servers.

Before nichotplug runs, VM ``old-owner`` (stopped) has ``nic-1`` with spec MAC 02:12:34:56:78:9c on
``ns/vlan1``; VM ``old-clash`` (stopped, no spec MACs) records that MAC for its own ``nic-1`` in its
observed-MAC annotation. The controller must not copy it (two VMs on one L2 with one MAC at the next
start), must still write the free MAC, and must say so on both VMs. No webhook is registered here:
the controller holds the line by itself (it may run before the webhook configurations exist).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import REGISTRY

from .conftest import running_controller, wait_for

pytestmark = pytest.mark.both_servers

NS = "ns"
CLASH_MAC = "02:12:34:56:78:9c"
CLASH_FREE_MAC = "52:54:00:00:03:01"
ANNOTATION = "harvesterhci.io/mac-address"


def stopped_vm(name: str, macs: dict[str, str | None], nic1_network: str,
               annotation: dict[str, str] | None = None) -> dict[str, Any]:
    interfaces: list[dict[str, Any]] = [{"name": "default", "masquerade": {}, "model": "virtio"},
                                        {"name": "nic-1", "bridge": {}, "model": "virtio"}]
    for interface in interfaces:
        if macs.get(interface["name"]):
            interface["macAddress"] = macs[interface["name"]]
    metadata: dict[str, Any] = {"name": name, "namespace": NS}
    if annotation is not None:
        metadata["annotations"] = {ANNOTATION: json.dumps(annotation)}  # spelled as a person writes it
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": metadata,
            "spec": {"runStrategy": "Halted", "template": {"spec": {
                "domain": {"devices": {"interfaces": interfaces}, "memory": {"guest": "1Gi"}},
                "networks": [{"name": "default", "pod": {}},
                             {"name": "nic-1", "multus": {"networkName": nic1_network}}]}}}}


def bridge_nad(name: str, cluster_network: str) -> dict[str, Any]:
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": NS,
                         "labels": {"network.harvesterhci.io/clusternetwork": cluster_network}},
            "spec": {"config": json.dumps({"cniVersion": "0.3.1", "name": name, "type": "bridge", "bridge": "br"})}}


async def ensure_namespace(api: ApiClient, name: str) -> None:
    try:
        await CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    except ApiException as error:
        if error.status != 409:  # a real API server keeps namespaces for the whole session
            raise


async def before_nichotplug(api: ApiClient, owner_nic1_network: str, owner_namespace: str = NS) -> None:
    """The cluster as it was before nichotplug was installed: two networks, the two VMs."""
    for namespace in {NS, owner_namespace}:
        await ensure_namespace(api, namespace)
    custom = CustomObjectsApi(api)
    for nad in (bridge_nad("vlan1", "mgmt"), bridge_nad("vlan2", "data")):
        await custom.create_namespaced_custom_object("k8s.cni.cncf.io", "v1", NS, "network-attachment-definitions", nad)
    owner = stopped_vm("old-owner", {"default": "52:54:00:00:02:01", "nic-1": CLASH_MAC}, owner_nic1_network)
    owner["metadata"]["namespace"] = owner_namespace
    await custom.create_namespaced_custom_object("kubevirt.io", "v1", owner_namespace, "virtualmachines", owner)
    clash = stopped_vm("old-clash", {}, "ns/vlan1", annotation={"default": CLASH_FREE_MAC, "nic-1": CLASH_MAC})
    await custom.create_namespaced_custom_object("kubevirt.io", "v1", NS, "virtualmachines", clash)


async def spec_macs(api: ApiClient, name: str) -> dict[str, str | None]:
    vm = await CustomObjectsApi(api).get_namespaced_custom_object("kubevirt.io", "v1", NS, "virtualmachines", name)
    return {i["name"]: i.get("macAddress") for i in vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]}


async def events(api: ApiClient, name: str, reason: str, namespace: str = NS) -> list[str]:
    listed = await CoreV1Api(api).list_namespaced_event(namespace)
    return [event.message for event in listed.items
            if event.involved_object.name == name and event.reason == reason]


def duplicate_macs() -> float:
    return REGISTRY.get_sample_value("nichotplug_duplicate_macs") or 0.0


async def test_a_recorded_mac_another_vm_holds_on_the_network_is_not_backfilled(api_client: ApiClient) -> None:
    await before_nichotplug(api_client, "ns/vlan1")
    async with running_controller(api_client):
        async def default_backfilled() -> bool:
            return (await spec_macs(api_client, "old-clash"))["default"] == CLASH_FREE_MAC
        await wait_for(default_backfilled)
        clash_events = await wait_for(lambda: events(api_client, "old-clash", "MacNotBackfilled"))
        owner_events = await wait_for(lambda: events(api_client, "old-owner", "MacNotBackfilled"))

        async def audited() -> bool:
            return duplicate_macs() == 1
        await wait_for(audited)

    assert await spec_macs(api_client, "old-clash") == {"default": CLASH_FREE_MAC, "nic-1": None}
    assert await spec_macs(api_client, "old-owner") == {"default": "52:54:00:00:02:01", "nic-1": CLASH_MAC}
    assert clash_events == [
        f"interface nic-1 keeps no MAC in the spec: its observed MAC {CLASH_MAC} is held by VM ns/old-owner "
        "interface nic-1 on cluster network mgmt; it gets a new MAC at the VM's next write (its start at the latest)"]
    assert owner_events == [
        f"MAC {CLASH_MAC} of interface nic-1 is also recorded for VM ns/old-clash interface nic-1 on cluster "
        "network mgmt; it was not written into that VM's spec, which gets a new MAC at its next write (its start at "
        "the latest)"]


async def test_a_recorded_mac_another_vm_holds_on_another_cluster_network_is_backfilled(
        api_client: ApiClient) -> None:
    await before_nichotplug(api_client, "ns/vlan2")  # old-owner's nic-1 on cluster network data: another L2
    async with running_controller(api_client):
        async def backfilled() -> bool:
            return await spec_macs(api_client, "old-clash") == {"default": CLASH_FREE_MAC, "nic-1": CLASH_MAC}
        await wait_for(backfilled)
    assert await events(api_client, "old-clash", "MacNotBackfilled") == []
    assert await events(api_client, "old-owner", "MacNotBackfilled") == []


async def test_a_scoped_controller_writes_no_event_on_the_other_vm_outside_its_scope(api_client: ApiClient) -> None:
    from nichotplug.controller.scope import ControllerScope

    await before_nichotplug(api_client, "ns/vlan1", owner_namespace="ns-other")
    async with running_controller(api_client, scope=ControllerScope.of([NS])):
        clash_events = await wait_for(lambda: events(api_client, "old-clash", "MacNotBackfilled"))
        assert await spec_macs(api_client, "old-clash") == {"default": CLASH_FREE_MAC, "nic-1": None}
    assert "held by VM ns-other/old-owner interface nic-1 on cluster network mgmt" in clash_events[0]
    assert await events(api_client, "old-owner", "MacNotBackfilled", namespace="ns-other") == []

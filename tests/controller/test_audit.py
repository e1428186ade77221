"""The duplicate-MAC audit: pure detection over a StaticCluster, and Events + gauge over the API server."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient, CustomObjectsApi
from prometheus_client import REGISTRY

from nichotplug.controller.audit import find_duplicate_macs
from nichotplug.rules.cluster import StaticCluster
from nichotplug.rules.views import VmView

from .conftest import MAC_A, MAC_B, NS, Cluster, running_controller, vm_body, wait_for

# Cluster-level behaviour holds on the real kube-apiserver too (tests naming `apiserver` use its fault injection).
pytestmark = pytest.mark.both_servers


def nad(name: str, cluster_network: str | None) -> dict[str, Any]:
    labels = {"network.harvesterhci.io/clusternetwork": cluster_network} if cluster_network else {}
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"config": '{"cniVersion":"0.3.1","type":"bridge","bridge":"mgmt-br"}'}}


def on_nad(body: dict[str, Any], nad_name: str) -> dict[str, Any]:
    """``body`` with its second interface's network pointed at NAD ``nad_name``."""
    body["spec"]["template"]["spec"]["networks"][1]["multus"]["networkName"] = f"{NS}/{nad_name}"
    return body


def views(*bodies: dict[str, Any]) -> list[VmView]:
    return [VmView.from_dict(body) for body in bodies]


def test_the_same_mac_twice_in_one_scope_is_one_duplicate_naming_both_vms() -> None:
    vms = views(vm_body("a", macs={"default": None, "nic": MAC_A}), vm_body("b", macs={"default": None, "nic": MAC_A}))
    found = find_duplicate_macs(vms, StaticCluster(vms=vms, nads=[nad("vlan1", "mgmt")]))
    assert len(found) == 1
    assert found[0].mac == MAC_A
    assert found[0].scope == "mgmt"
    assert {(o.vm, o.interface) for o in found[0].owners} == {("a", "nic"), ("b", "nic")}
    assert "default/a interface nic" in found[0].describe()
    assert "cluster network mgmt" in found[0].describe()


def test_the_same_mac_on_two_cluster_networks_is_not_a_duplicate() -> None:
    vms = views(on_nad(vm_body("a", macs={"default": None, "nic": MAC_A}), "net-a"),
                on_nad(vm_body("b", macs={"default": None, "nic": MAC_A}), "net-b"))
    cluster = StaticCluster(vms=vms, nads=[nad("net-a", "red"), nad("net-b", "blue")])
    assert find_duplicate_macs(vms, cluster) == []


def test_spellings_of_one_mac_collide_and_recorded_macs_count() -> None:
    vms = views(vm_body("a", macs={"default": MAC_B.upper().replace(":", "-")}),
                vm_body("b", macs={"default": None}, annotation={"default": MAC_B}))
    found = find_duplicate_macs(vms, StaticCluster(vms=vms))
    assert [(d.mac, d.scope) for d in found] == [(MAC_B, "")]


def test_two_interfaces_of_one_vm_sharing_a_mac_is_a_duplicate() -> None:
    vms = views(vm_body("a", macs={"default": MAC_A, "nic": MAC_A}))
    cluster = StaticCluster(vms=vms)  # NAD vlan1 missing: both interfaces in the empty scope
    assert [len(d.owners) for d in find_duplicate_macs(vms, cluster)] == [2]


def test_unique_macs_are_no_duplicate() -> None:
    vms = views(vm_body("a", macs={"default": MAC_A}), vm_body("b", macs={"default": MAC_B}))
    assert find_duplicate_macs(vms, StaticCluster(vms=vms)) == []


async def test_a_duplicate_that_slipped_past_admission_is_an_event_on_both_vms_and_a_gauge(
    api_client: ApiClient, cluster: Cluster,
) -> None:
    await CustomObjectsApi(api_client).create_namespaced_custom_object(
        "k8s.cni.cncf.io", "v1", NS, "network-attachment-definitions", nad("vlan1", "mgmt"))
    await cluster.create_vm(vm_body("a", macs={"default": None, "nic": MAC_A}, run_strategy="Always"))
    await cluster.create_vm(vm_body("b", macs={"default": None, "nic": MAC_A}, run_strategy="Always"))
    async with running_controller(api_client, audit_period=0.2) as controller:
        async def both_told() -> bool:
            reasons_a = {e[1] for e in await cluster.events("a")}
            reasons_b = {e[1] for e in await cluster.events("b")}
            return "DuplicateMac" in reasons_a and "DuplicateMac" in reasons_b
        await wait_for(both_told)
        assert REGISTRY.get_sample_value("nichotplug_duplicate_macs") == 1
        found = await controller.auditor.audit()  # a second pass reports nothing new
        assert len(found) == 1
        events = [e for e in await cluster.events("a") if e[1] == "DuplicateMac"]
        assert len(events) == 1
        assert events[0][3] == 1
        assert "default/b interface nic" in events[0][2]

        await cluster.merge_vm("b", {"spec": {"template": {"spec": {"domain": {"devices": {"interfaces": [
            {"name": "default", "model": "virtio", "masquerade": {}},
            {"name": "nic", "model": "virtio", "bridge": {}, "macAddress": MAC_B}]}}}}}})

        async def fixed() -> bool:
            return REGISTRY.get_sample_value("nichotplug_duplicate_macs") == 0
        await wait_for(fixed)

"""VM eligibility (every reason, in SPEC order) and interface hot-unpluggability."""

from __future__ import annotations

from typing import Any

import pytest

from nichotplug.rules.cluster import StaticCluster
from nichotplug.rules.eligibility import (
    eligibility_findings,
    eligibility_problems,
    hotunpluggable_interfaces,
    unplug_finding,
    unplug_network_note,
    unplug_problem,
)
from nichotplug.rules.views import VmiView, VmView

from .rules_support import KUBE_OVN_CONFIG, iface, multus_net, nad, pod_net, vm, vmi


def problems(vm_kwargs: dict[str, Any] | None = None, vmi_kwargs: dict[str, Any] | None = None,
             with_vmi: bool = True) -> tuple[str, ...]:
    vmi_view = VmiView.from_dict(vmi(**(vmi_kwargs or {}))) if with_vmi else None
    return eligibility_problems(VmView.from_dict(vm(**(vm_kwargs or {}))), vmi_view)


def test_a_running_stable_vm_is_eligible() -> None:
    assert problems() == ()


@pytest.mark.parametrize(
    ("vm_kwargs", "vmi_kwargs", "message"),
    [
        ({"labels": {"harvesterhci.io/creator": "docker-machine-driver-harvester"}}, {},
         "VM default/vm1 belongs to a guest cluster (label harvesterhci.io/creator=docker-machine-driver-harvester)"
         "; its NICs are managed by that cluster's machine driver, not by hot-plug"),
        ({}, {"deleting": True}, "VM default/vm1 is stopping (its VirtualMachineInstance is being deleted)"),
        ({}, {"phase": "Scheduling"},
         "VM default/vm1 is not running: its VirtualMachineInstance is in phase Scheduling; wait until it is Running"),
        ({}, {"ready": False},
         "VM default/vm1 is not ready (VirtualMachineInstance condition Ready is not True); wait until it is ready"),
        ({}, {"migration": {"targetNode": "node2"}},
         "VM default/vm1 is being live-migrated; wait until the migration completes"),
        ({"printable_status": "Starting"}, {}, "VM default/vm1 status is Starting, not Running"),
        ({}, {"live_migratable": "False", "migratable_reason": "DisksNotLiveMigratable"},
         "VM default/vm1 cannot be live-migrated (DisksNotLiveMigratable); hot-plug applies the change through a "
         "live migration"),
        ({"node_selector": {"kubernetes.io/hostname": "node1"}}, {},
         "VM default/vm1 is pinned to node node1 by nodeSelector kubernetes.io/hostname, so it cannot be "
         "live-migrated; remove that selector first"),
        ({"host_devices": True}, {},
         "VM default/vm1 has host devices or GPUs, so it cannot be live-migrated; hot-plug needs live migration"),
        ({"interfaces": [iface("default", binding="masquerade"), iface("nic-1", mac="02:00:00:00:00:02")]}, {},
         "VM default/vm1 interface(s) default have no macAddress in the spec; stop the VM once so its observed "
         "MACs are written into the spec, then start it again"),
    ],
)
def test_each_eligibility_reason_has_its_message(vm_kwargs: dict[str, Any], vmi_kwargs: dict[str, Any],
                                                 message: str) -> None:
    assert problems(vm_kwargs, vmi_kwargs) == (message,)


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_a_guest_that_shut_down_is_stopped_and_must_be_started(phase: str) -> None:
    assert problems({"printable_status": "Stopped"}, {"phase": phase, "ready": False}) == (
        f"VM default/vm1 is stopped: its VirtualMachineInstance is in phase {phase}; start the VM and wait until "
        "it is Running",
        "VM default/vm1 is not ready (VirtualMachineInstance condition Ready is not True); wait until it is ready",
        "VM default/vm1 status is Stopped, not Running",
    )


def test_gpus_make_a_vm_not_migratable() -> None:
    obj = vm()
    gpu = {"name": "gpu1", "deviceName": "nvidia.com/TU104GL"}
    obj["spec"]["template"]["spec"]["domain"]["devices"]["gpus"] = [gpu]
    assert eligibility_problems(VmView.from_dict(obj), VmiView.from_dict(vmi())) == (
        "VM default/vm1 has host devices or GPUs, so it cannot be live-migrated; hot-plug needs live migration",)


def test_no_vmi_is_not_running() -> None:
    assert problems({"printable_status": "Stopped"}, with_vmi=False) == (
        "VM default/vm1 is not running (it has no VirtualMachineInstance); start it and wait until it is Running",
        "VM default/vm1 status is Stopped, not Running",
    )


def test_live_migratable_unknown_is_not_a_problem() -> None:
    assert problems(vmi_kwargs={"live_migratable": None}) == ()


def test_every_failure_is_reported_in_spec_order() -> None:
    findings = eligibility_findings(
        VmView.from_dict(vm(labels={"harvesterhci.io/creator": "docker-machine-driver-harvester"},
                            host_devices=True, interfaces=[iface("nic-1")], networks=[pod_net("nic-1")])),
        VmiView.from_dict(vmi(ready=False)),
    )
    assert [finding.reason for finding in findings] == [
        "vm-guest-cluster", "vm-not-running", "vm-not-migratable", "vm-missing-macs"]


def cluster_with(*nads: dict[str, Any]) -> StaticCluster:
    return StaticCluster(nads=list(nads) or [nad()])


def unplug_reason(interfaces: list[dict[str, Any]], networks: list[dict[str, Any]], name: str) -> str | None:
    finding = unplug_finding(VmView.from_dict(vm(interfaces=interfaces, networks=networks)), name)
    return finding.reason if finding else None


BASE_IFACES = [iface("default", binding="masquerade", mac="02:00:00:00:00:01"), iface("nic-1", mac="02:00:00:00:00:02")]
BASE_NETS = [pod_net(), multus_net("nic-1", "default/vlan1")]


def test_bridge_virtio_interface_on_a_multus_network_is_hotunpluggable() -> None:
    assert unplug_reason(BASE_IFACES, BASE_NETS, "nic-1") is None


def test_interface_without_model_is_hotunpluggable() -> None:
    assert unplug_reason([BASE_IFACES[0], iface("nic-1", model=None, mac="02:00:00:00:00:02")], BASE_NETS,
                         "nic-1") is None


@pytest.mark.parametrize(
    ("interfaces", "networks", "name", "reason"),
    [
        (BASE_IFACES, BASE_NETS, "nic-9", "unplug-unknown-interface"),
        ([BASE_IFACES[0], iface("nic-1", state="absent")], BASE_NETS, "nic-1", "unplug-already-absent"),
        ([iface("nic-1", mac="02:00:00:00:00:02")], BASE_NETS[1:], "nic-1", "unplug-last-interface"),
        (BASE_IFACES, BASE_NETS, "default", "unplug-not-bridge"),
        ([BASE_IFACES[0], iface("nic-1", model="e1000")], BASE_NETS, "nic-1", "unplug-not-virtio"),
        (BASE_IFACES, [pod_net(), pod_net("nic-1")], "nic-1", "unplug-not-multus"),
        (BASE_IFACES, [pod_net()], "nic-1", "unplug-not-multus"),
    ],
)
def test_unplug_refusals(interfaces: list[dict[str, Any]], networks: list[dict[str, Any]], name: str,
                         reason: str) -> None:
    assert unplug_reason(interfaces, networks, name) == reason


def test_every_reason_an_interface_cannot_be_unplugged_is_named() -> None:
    view = VmView.from_dict(vm(interfaces=[BASE_IFACES[0], iface("nic-1", binding="sriov", model="e1000")],
                               networks=[pod_net(), pod_net("nic-1")]))
    assert unplug_problem(view, "nic-1") == (
        "interface nic-1 of VM default/vm1 uses sriov binding; only bridge interfaces can be hot-unplugged; "
        "interface nic-1 of VM default/vm1 has model e1000; only virtio interfaces can be hot-unplugged; "
        "interface nic-1 of VM default/vm1 is not on a multus network; only interfaces on multus networks can be "
        "hot-unplugged")


# harvester#8293: a NIC whose network was deleted (or changed) must stay removable.
GONE_NETWORKS = {
    "deleted": (),
    "being-deleted": (nad(deleting=True),),
    "no-longer-a-bridge": (nad(config=KUBE_OVN_CONFIG),),
}


@pytest.mark.parametrize("nads", GONE_NETWORKS.values(), ids=GONE_NETWORKS.keys())
def test_an_interface_whose_network_is_gone_is_still_hotunpluggable(nads: tuple[dict[str, Any], ...]) -> None:
    view = VmView.from_dict(vm())
    assert (unplug_problem(view, "nic-1"), hotunpluggable_interfaces(view)) == (None, ["nic-1"])
    note = unplug_network_note(view, "nic-1", StaticCluster(nads=list(nads)))
    assert note is not None
    assert note.startswith("interface nic-1 of VM default/vm1 is on network default/vlan1, which is gone or not a "
                           "bridge network any more (")


def test_an_interface_on_a_bridge_network_gets_no_note() -> None:
    assert unplug_network_note(VmView.from_dict(vm()), "nic-1", cluster_with()) is None


def test_unplug_of_the_pod_network_interface_says_bridge_and_multus_only() -> None:
    assert unplug_problem(VmView.from_dict(vm()), "default") == (
        "interface default of VM default/vm1 uses masquerade binding; only bridge interfaces can be hot-unplugged; "
        "interface default of VM default/vm1 is not on a multus network; only interfaces on multus networks can be "
        "hot-unplugged")


def test_hotunpluggable_interfaces_lists_only_bridge_nics() -> None:
    view = VmView.from_dict(vm(interfaces=[*BASE_IFACES, iface("nic-2", mac="02:00:00:00:00:03")],
                               networks=[*BASE_NETS, multus_net("nic-2", "vlan1")]))
    assert hotunpluggable_interfaces(view) == ["nic-1", "nic-2"]


def test_a_vm_with_one_interface_offers_no_unplug() -> None:
    view = VmView.from_dict(vm(interfaces=[iface("nic-1", mac="02:00:00:00:00:02")], networks=BASE_NETS[1:]))
    assert hotunpluggable_interfaces(view) == []

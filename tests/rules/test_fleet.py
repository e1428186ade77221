"""The fleet readiness states and the duplicate-MAC audit (pure rules)."""

from __future__ import annotations

from typing import Any

import pytest

from nichotplug.rules.cluster import StaticCluster
from nichotplug.rules.eligibility import ELIGIBILITY_REASONS
from nichotplug.rules.fleet import classify_vm, duplicate_macs, fleet_exit_ok, unreadable_vm
from nichotplug.rules.guestconfig import guest_nics, netplan_config
from nichotplug.rules.views import VmiView, VmView

from .rules_support import iface, multus_net, nad, pod_net, vm, vmi

GUEST = {"harvesterhci.io/creator": "docker-machine-driver-harvester"}
NO_MAC = [iface("default", binding="masquerade"), iface("nic-1", mac="02:00:00:00:00:02")]


def judged(vm_obj: dict[str, Any], vmi_obj: dict[str, Any] | None) -> tuple[str, str, list[str]]:
    row = classify_vm(VmView.from_dict(vm_obj), VmiView.from_dict(vmi_obj) if vmi_obj is not None else None)
    return row.hotplug, row.next_step, [finding.reason for finding in row.findings]


@pytest.mark.parametrize(("vm_obj", "vmi_obj", "state", "codes"), [
    (vm(), vmi(), "ready", []),
    (vm(interfaces=NO_MAC), vmi(), "after-restart", ["vm-missing-macs"]),
    (vm(run_strategy="Halted", printable_status="Stopped"), None, "stopped", ["vm-not-running", "vm-not-running"]),
    (vm(run_strategy="Halted", printable_status="Stopped", interfaces=NO_MAC), None, "stopped",
     ["vm-not-running", "vm-not-running", "vm-missing-macs"]),
    (vm(printable_status="Starting"), None, "wait", ["vm-not-running", "vm-not-running"]),
    (vm(printable_status="Migrating"), vmi(migration={"completed": False}), "wait", ["vm-migrating", "vm-not-running"]),
    (vm(labels=GUEST), vmi(), "never", ["vm-guest-cluster"]),
    (vm(host_devices=True), vmi(), "never", ["vm-not-migratable"]),
    (vm(node_selector={"kubernetes.io/hostname": "n1"}, run_strategy="Halted", printable_status="Stopped"), None,
     "never", ["vm-not-running", "vm-not-running", "vm-not-migratable"]),
    (vm(interfaces=NO_MAC), vmi(live_migratable="False", migratable_reason="DisksNotLiveMigratable"), "never",
     ["vm-not-migratable", "vm-missing-macs"]),
], ids=["ready", "no-macs", "stopped", "stopped-no-macs", "starting", "migrating", "guest", "host-devices",
        "pinned-stopped", "rwo-disk"])
def test_each_vm_gets_its_state_and_the_webhooks_codes(vm_obj: dict[str, Any], vmi_obj: dict[str, Any] | None,
                                                        state: str, codes: list[str]) -> None:
    found_state, _, found_codes = judged(vm_obj, vmi_obj)
    assert (found_state, found_codes) == (state, codes)
    assert set(found_codes) <= set(ELIGIBILITY_REASONS)


def test_next_steps_say_what_to_do() -> None:
    assert judged(vm(interfaces=NO_MAC), vmi())[1] == "stop and start the VM"
    assert judged(vm(run_strategy="Halted", printable_status="Stopped"), None)[1] == "start the VM"
    assert "guest cluster" in judged(vm(labels=GUEST), vmi())[1]
    assert judged(vm(host_devices=True), vmi())[1] == "make it live-migratable"


def test_ports_left_follow_kubevirts_budget_and_memory() -> None:
    small = classify_vm(VmView.from_dict(vm()), VmiView.from_dict(vmi()))
    big = classify_vm(VmView.from_dict(vm(memory="4Gi")), VmiView.from_dict(vmi()))
    never = classify_vm(VmView.from_dict(vm(labels=GUEST)), VmiView.from_dict(vmi()))
    assert (small.ports_left, big.ports_left, never.ports_left) == (6, 14, None)


def test_the_structured_verdict_carries_codes_and_messages() -> None:
    verdict = classify_vm(VmView.from_dict(vm(interfaces=NO_MAC)), VmiView.from_dict(vmi())).to_dict()
    assert verdict["hotplug"] == "after-restart"
    assert verdict["eligible"] is False
    assert verdict["reasons"][0]["code"] == "vm-missing-macs"
    assert "default/vm1" in verdict["reasons"][0]["message"]


def test_exit_is_ok_only_when_every_vm_is_ready_or_stopped() -> None:
    ready = classify_vm(VmView.from_dict(vm()), VmiView.from_dict(vmi()))
    stopped = classify_vm(VmView.from_dict(vm(run_strategy="Halted", printable_status="Stopped")), None)
    waiting = classify_vm(VmView.from_dict(vm(printable_status="Starting")), None)
    assert fleet_exit_ok([ready, stopped])
    assert fleet_exit_ok([])
    assert not fleet_exit_ok([ready, waiting])
    assert not fleet_exit_ok([ready, unreadable_vm("team", "", "Forbidden", "no")])


def _on(name: str, namespace: str, mac: str, network: str) -> VmView:
    return VmView.from_dict(vm(name, namespace, interfaces=[iface("default", binding="masquerade"),
                                                             iface("nic-1", mac=mac)],
                               networks=[pod_net(), multus_net("nic-1", network)]))


def test_duplicate_macs_are_per_cluster_network_with_every_owner() -> None:
    nads = StaticCluster(nads=[nad("vlan1", cluster_network="mgmt"), nad("vlan2", cluster_network="mgmt"),
                               nad("other", cluster_network="storage")])
    vms = [_on("a", "default", "02:00:00:00:00:aa", "default/vlan1"),
           _on("b", "team", "02-00-00-00-00-AA", "default/vlan2"),   # same MAC, same cluster network
           _on("c", "default", "02:00:00:00:00:bb", "default/vlan1"),
           _on("d", "default", "02:00:00:00:00:bb", "default/other")]  # same MAC, another cluster network
    found = duplicate_macs(vms, nads)
    assert [(dup.mac, dup.cluster_network, [(o.namespace, o.vm, o.interface) for o in dup.owners]) for dup in found] \
        == [("02:00:00:00:00:aa", "mgmt", [("default", "a", "nic-1"), ("team", "b", "nic-1")])]


def test_observed_macs_count_in_the_audit() -> None:
    claimed = VmView.from_dict(vm("e", interfaces=[iface("default", binding="masquerade")],
                                  annotations={"harvesterhci.io/mac-address": '{"default":"02:00:00:00:00:01"}'}))
    found = duplicate_macs([VmView.from_dict(vm()), claimed], StaticCluster())
    assert [(dup.mac, dup.cluster_network, len(dup.owners)) for dup in found] == [("02:00:00:00:00:01", "", 2)]


def test_guest_config_matches_each_nic_by_mac() -> None:
    machine = vm(interfaces=[iface("default", binding="masquerade", mac="02:00:00:00:00:01"),
                             iface("nic-1"), iface("a-very-long-interface-name", mac="02:00:00:00:00:03"),
                             iface("gone", mac="02:00:00:00:00:04", state="absent"), iface("nic-9")],
                 networks=[pod_net(), multus_net("nic-1", "vlan1"), multus_net("a-very-long-interface-name", "x/y"),
                           multus_net("gone", "vlan1"), multus_net("nic-9", "vlan1")])
    nics = guest_nics(VmView.from_dict(machine), VmiView.from_dict(vmi(interface_macs={"nic-1": "02:00:00:00:00:02"})))
    assert [(nic.interface, nic.mac, nic.network, nic.guest_name) for nic in nics] == [
        ("default", "02:00:00:00:00:01", "pod", "default"),
        ("nic-1", "02:00:00:00:00:02", "default/vlan1", "nic-1"),
        ("a-very-long-interface-name", "02:00:00:00:00:03", "x/y", "nic2"),
        ("nic-9", "", "default/vlan1", "nic-9"),
    ]
    ethernets = netplan_config(nics)["network"]["ethernets"]
    assert list(ethernets) == ["default", "nic-1", "nic2"]
    assert ethernets["nic2"] == {"match": {"macaddress": "02:00:00:00:00:03"}, "set-name": "nic2", "dhcp4": True}

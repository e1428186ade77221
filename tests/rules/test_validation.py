"""validate_vm: MAC rules, scopes, hot-plug and hot-unplug edits, cold edits, warnings, garbage."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nichotplug.rules.admission import AdmissionInput, hotplug_port_budget, validate_vm
from nichotplug.rules.cluster import StaticCluster
from nichotplug.rules.decision import Decision

from .rules_support import KUBE_OVN_CONFIG, iface, multus_net, nad, pod_net, vm, vmi

NADS = [nad("vlan1", cluster_network="mgmt"), nad("vlan2", cluster_network="data"),
        nad("plain", cluster_network=None, network_type=None),
        nad("ovn1", config=KUBE_OVN_CONFIG, cluster_network=None),
        nad("storage", namespace="harvester-system")]


def validate(obj: Any, old: Any = None, *, cluster: StaticCluster | None = None, operation: str | None = None,
             name: str = "vm1") -> Decision:
    op = operation if operation is not None else ("CREATE" if old is None else "UPDATE")
    return validate_vm(AdmissionInput(op, "default", name, obj, old), cluster or StaticCluster(nads=NADS))


def one_nic_vm(name: str, mac: str | None, network: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return vm(name, interfaces=[iface("nic-1", mac=mac)], networks=[{**network, "name": "nic-1"}], **kwargs)


# -- MAC format ---------------------------------------------------------------------------------


def test_a_vm_with_valid_macs_is_allowed() -> None:
    assert validate(vm()) == Decision.allow()


@pytest.mark.parametrize(
    ("mac", "message"),
    [
        ("02:00:00:00:00", "VM default/vm1 interface nic-1: '02:00:00:00:00' is not a MAC address"),
        ("01:00:5e:00:00:01", "VM default/vm1 interface nic-1: 01:00:5e:00:00:01 is a multicast MAC address"),
        ("00:00:00:00:00:00", "VM default/vm1 interface nic-1: 00:00:00:00:00:00 is the all-zero MAC address"),
    ],
)
def test_bad_macs_are_denied_with_403(mac: str, message: str) -> None:
    decision = validate(one_nic_vm("vm1", mac, multus_net("", "vlan1")))
    assert (decision.allowed, decision.code, decision.reason, decision.message.startswith(message)) == (
        False, 403, "invalid-mac", True)


# -- duplicates within a VM ---------------------------------------------------------------------------


def test_two_interfaces_of_one_vm_sharing_a_mac_are_denied() -> None:
    obj = vm(interfaces=[iface("nic-1", mac="02:00:00:00:00:05"), iface("nic-2", mac="02-00-00-00-00-05")],
             networks=[multus_net("nic-1", "vlan1"), multus_net("nic-2", "vlan2")])
    assert validate(obj) == Decision.deny(409, "VM default/vm1: interfaces nic-1 and nic-2 both use mac address "
                                               "02:00:00:00:00:05; give each interface its own MAC", "duplicate-mac")


# -- collisions -------------------------------------------------------------------------------------


def cluster_with_vm(other: dict[str, Any], **kwargs: Any) -> StaticCluster:
    return StaticCluster(vms=[other], nads=NADS, **kwargs)


def test_mac_used_on_the_same_cluster_network_is_denied_naming_both_vms() -> None:
    cluster = cluster_with_vm(one_nic_vm("vm-a", "02:00:00:00:00:07", multus_net("", "vlan1")))
    assert validate(one_nic_vm("vm-b", "02:00:00:00:00:07", multus_net("", "default/vlan1")), cluster=cluster,
                    name="vm-b") == Decision.deny(
        409, "VM default/vm-b: mac address 02:00:00:00:00:07 of interface nic-1 is already used by default/vm-a "
             "interface nic-1 on cluster network mgmt", "mac-collision")


def test_collision_is_found_across_spellings() -> None:
    cluster = cluster_with_vm(one_nic_vm("vm-a", "02:00:00:AB:CD:EF", multus_net("", "vlan1")))
    assert validate(one_nic_vm("vm-b", "02-00-00-ab-cd-ef", multus_net("", "vlan1")), cluster=cluster).code == 409


def test_collision_is_found_across_namespaces() -> None:
    other = vm("vm-a", "team-x", interfaces=[iface("nic-1", mac="02:00:00:00:00:07")],
               networks=[multus_net("nic-1", "default/vlan1")])
    decision = validate(one_nic_vm("vm-b", "02:00:00:00:00:07", multus_net("", "vlan1")),
                        cluster=cluster_with_vm(other))
    assert "already used by team-x/vm-a interface nic-1" in decision.message


def test_same_mac_on_two_different_cluster_networks_is_allowed() -> None:
    cluster = cluster_with_vm(one_nic_vm("vm-a", "02:00:00:00:00:07", multus_net("", "vlan1")))
    assert validate(one_nic_vm("vm-b", "02:00:00:00:00:07", multus_net("", "vlan2")), cluster=cluster).allowed


def test_pod_network_and_unlabelled_nads_share_one_scope() -> None:
    cluster = cluster_with_vm(one_nic_vm("vm-a", "02:00:00:00:00:07", pod_net()))
    decision = validate(one_nic_vm("vm-b", "02:00:00:00:00:07", multus_net("", "plain")), cluster=cluster)
    assert decision.message.endswith("is already used by default/vm-a interface nic-1 on the pod network or "
                                     "unlabelled networks")


def test_scope_follows_a_relabelled_nad() -> None:
    other = one_nic_vm("vm-a", "02:00:00:00:00:07", multus_net("", "vlan1"))
    relabelled = StaticCluster(vms=[other], nads=[nad("vlan1", cluster_network="data"), *NADS[1:]])
    assert validate(one_nic_vm("vm-b", "02:00:00:00:00:07", multus_net("", "vlan2")), cluster=relabelled).code == 409


def test_the_same_vm_and_interface_may_keep_its_own_mac() -> None:
    mine = vm()
    assert validate(mine, mine, cluster=cluster_with_vm(mine)).allowed


def test_own_mac_moved_to_another_interface_of_the_same_vm_is_allowed() -> None:
    old = vm(interfaces=[iface("nic-1", mac="02:00:00:00:00:07")], networks=[multus_net("nic-1", "vlan1")],
             run_strategy="Halted")
    new = vm(interfaces=[iface("nic-2", mac="02:00:00:00:00:07")], networks=[multus_net("nic-2", "vlan1")],
             run_strategy="Halted")
    assert validate(new, old, cluster=cluster_with_vm(old)).allowed


def test_observed_annotation_macs_of_other_vms_count() -> None:
    other = vm("vm-a", interfaces=[iface("nic-1")], networks=[multus_net("nic-1", "vlan1")],
               annotations={"harvesterhci.io/mac-address": '{"nic-1":"02:00:00:00:00:07"}'})
    decision = validate(one_nic_vm("vm-b", "02:00:00:00:00:07", multus_net("", "vlan1")),
                        cluster=cluster_with_vm(other))
    assert (decision.code, decision.reason) == (409, "mac-collision")


def test_a_collision_older_than_the_request_does_not_block_unrelated_updates() -> None:
    mine = one_nic_vm("vm-b", "02:00:00:00:00:07", multus_net("", "vlan1"))
    relabelled = copy.deepcopy(mine)
    relabelled["metadata"]["labels"]["team"] = "blue"
    cluster = cluster_with_vm(one_nic_vm("vm-a", "02:00:00:00:00:07", multus_net("", "vlan1")))
    assert validate(relabelled, mine, cluster=cluster, name="vm-b").allowed


def test_moving_an_interface_onto_a_network_where_its_mac_is_taken_is_denied() -> None:
    old = one_nic_vm("vm-b", "02:00:00:00:00:07", multus_net("", "vlan2"), run_strategy="Halted")
    new = one_nic_vm("vm-b", "02:00:00:00:00:07", multus_net("", "vlan1"), run_strategy="Halted")
    cluster = cluster_with_vm(one_nic_vm("vm-a", "02:00:00:00:00:07", multus_net("", "vlan1")))
    assert validate(new, old, cluster=cluster, name="vm-b").reason == "mac-collision"


# -- hot-plug ---------------------------------------------------------------------------------------

RUNNING = StaticCluster(vmis=[vmi()], nads=NADS)
BASE_IFACES = [iface("default", binding="masquerade", mac="02:00:00:00:00:01"), iface("nic-1", mac="02:00:00:00:00:02")]
BASE_NETS = [pod_net(), multus_net("nic-1", "default/vlan1")]


def with_added(new_iface: dict[str, Any], network: dict[str, Any] | None, **kwargs: Any) -> dict[str, Any]:
    networks = [*BASE_NETS, network] if network is not None else BASE_NETS
    return vm(interfaces=[*BASE_IFACES, new_iface], networks=networks, **kwargs)


def hotplug(new_iface: dict[str, Any], network: dict[str, Any] | None,
            cluster: StaticCluster = RUNNING, **kwargs: Any) -> Decision:
    return validate(with_added(new_iface, network, **kwargs), vm(**kwargs), cluster=cluster)


def test_hotplug_of_a_bridge_virtio_nic_on_a_bridge_nad_is_allowed() -> None:
    assert hotplug(iface("nic-2", mac="02:00:00:00:00:03"), multus_net("nic-2", "default/vlan2")) == \
        Decision.allow(reason="hotplug-allowed")


def test_hotplug_on_a_nad_named_without_namespace_uses_the_vm_namespace() -> None:
    assert hotplug(iface("nic-2", mac="02:00:00:00:00:03"), multus_net("nic-2", "vlan2")).allowed


@pytest.mark.parametrize(
    ("new_iface", "network", "reason", "message"),
    [
        (iface("nic-2", binding="masquerade", mac="02:00:00:00:00:03"), multus_net("nic-2", "vlan2"),
         "hotplug-not-bridge", "cannot hot-plug interface nic-2 into running VM default/vm1: it uses masquerade "
                               "binding; hot-plugged interfaces must use bridge binding (bridge: {})"),
        (iface("nic-2", model="e1000", mac="02:00:00:00:00:03"), multus_net("nic-2", "vlan2"),
         "hotplug-not-virtio", "cannot hot-plug interface nic-2 into running VM default/vm1: its model is e1000; "
                               "hot-plugged interfaces must use model virtio (or leave model unset)"),
        (iface("nic-2", mac="02:00:00:00:00:03"), pod_net("nic-2"),
         "hotplug-pod-network", "cannot hot-plug interface nic-2 into running VM default/vm1: its network is not "
                                "multus; hot-plugged interfaces must use a multus network pointing at a bridge "
                                "NetworkAttachmentDefinition"),
        (iface("nic-2", mac="02:00:00:00:00:03"), None,
         "hotplug-missing-network", "cannot hot-plug interface nic-2 into running VM default/vm1: "
                                    "spec.template.spec.networks has no entry named nic-2; add a multus network "
                                    "with that name"),
        (iface("nic-2", mac="02:00:00:00:00:03"), multus_net("nic-2", "default/gone"),
         "hotplug-nad-missing", "cannot hot-plug interface nic-2 into running VM default/vm1: network attachment "
                                "definition default/gone does not exist; create it first or fix "
                                "multus.networkName"),
        (iface("nic-2", mac="02:00:00:00:00:03"), multus_net("nic-2", "ovn1"),
         "hotplug-network-not-hotpluggable", "cannot hot-plug interface nic-2 into running VM default/vm1: network "
                                             "attachment definition default/ovn1 is a kube-ovn network; only bridge "
                                             "networks (untagged, VLAN, VLAN trunk) can be hot-plugged"),
    ],
)
def test_hotplug_refusals(new_iface: dict[str, Any], network: dict[str, Any] | None, reason: str,
                          message: str) -> None:
    assert hotplug(new_iface, network) == Decision.deny(403, f"NIC hot-plug refused: {message}", reason)


def test_a_hotplug_refusal_names_every_problem_of_every_interface_at_once() -> None:
    # issue 19: a user fixing the model should not then learn about the binding, then the network.
    old = vm(interfaces=[*BASE_IFACES, iface("nic-3", binding="sriov", mac="02:00:00:00:00:04")],
             networks=[*BASE_NETS, multus_net("nic-3", "vlan2")])
    new = vm(interfaces=[*BASE_IFACES, iface("nic-3", binding="sriov", mac="02:00:00:00:00:04", state="absent"),
                         iface("nic-2", binding="masquerade", model="e1000", mac="02:00:00:00:00:03")],
             networks=[*BASE_NETS, multus_net("nic-3", "vlan2"), multus_net("nic-2", "gone")])
    where = "cannot hot-plug interface nic-2 into running VM default/vm1"
    assert validate(new, old, cluster=RUNNING) == Decision.deny(
        403, f"NIC hot-plug refused: {where}: its model is e1000; hot-plugged interfaces must use model virtio (or "
             f"leave model unset); {where}: it uses masquerade binding; hot-plugged interfaces must use bridge "
             f"binding (bridge: {{}}); {where}: network attachment definition default/gone does not exist; create "
             "it first or fix multus.networkName; cannot hot-unplug: interface nic-3 of VM default/vm1 uses sriov "
             "binding; only bridge interfaces can be hot-unplugged", "hotplug-not-virtio")


def test_an_ineligible_vm_and_a_bad_interface_are_refused_together() -> None:
    cluster = StaticCluster(vmis=[vmi(ready=False)], nads=NADS)
    decision = hotplug(iface("nic-2", binding="masquerade", mac="02:00:00:00:00:03"), multus_net("nic-2", "vlan2"),
                       cluster=cluster)
    assert (decision.code, decision.reason) == (403, "vm-not-running")
    assert decision.message.startswith("NIC hot-plug refused: VM default/vm1 is not ready")
    assert decision.message.endswith("cannot hot-plug interface nic-2 into running VM default/vm1: it uses "
                                     "masquerade binding; hot-plugged interfaces must use bridge binding (bridge: {})")


def test_hotplug_onto_harvester_system_is_refused() -> None:
    decision = hotplug(iface("nic-2", mac="02:00:00:00:00:03"), multus_net("nic-2", "harvester-system/storage"))
    assert (decision.code, decision.reason) == (403, "hotplug-network-not-hotpluggable")


def test_hotplug_onto_a_deleting_nad_is_refused() -> None:
    cluster = StaticCluster(vmis=[vmi()], nads=[*NADS, nad("going", deleting=True)])
    decision = hotplug(iface("nic-2", mac="02:00:00:00:00:03"), multus_net("nic-2", "going"), cluster=cluster)
    assert decision.message.endswith("network attachment definition default/going is being deleted")


def test_hotplug_onto_an_unparsable_nad_names_the_error() -> None:
    cluster = StaticCluster(vmis=[vmi()], nads=[*NADS, nad("broken", config="{oops")])
    decision = hotplug(iface("nic-2", mac="02:00:00:00:00:03"), multus_net("nic-2", "broken"), cluster=cluster)
    assert "network attachment definition default/broken cannot be read: its CNI config is not valid JSON" \
        in decision.message


def test_hotplug_into_an_ineligible_vm_lists_every_reason() -> None:
    cluster = StaticCluster(vmis=[vmi(ready=False)], nads=NADS)
    decision = hotplug(iface("nic-2", mac="02:00:00:00:00:03"), multus_net("nic-2", "vlan2"), cluster=cluster,
                       host_devices=True)
    assert decision == Decision.deny(
        403, "NIC hot-plug refused: VM default/vm1 is not ready (VirtualMachineInstance condition Ready is not "
             "True); wait until it is ready; VM default/vm1 has host devices or GPUs, so it cannot be live-migrated; "
             "hot-plug needs live migration", "vm-not-running")


def test_hotplug_into_a_guest_cluster_vm_is_refused() -> None:
    decision = hotplug(iface("nic-2", mac="02:00:00:00:00:03"), multus_net("nic-2", "vlan2"),
                       labels={"harvesterhci.io/creator": "docker-machine-driver-harvester"})
    assert decision.reason == "vm-guest-cluster"


def test_hotplug_while_the_vm_starts_is_refused() -> None:
    decision = hotplug(iface("nic-2", mac="02:00:00:00:00:03"), multus_net("nic-2", "vlan2"),
                       cluster=StaticCluster(nads=NADS), printable_status="Starting")
    assert decision.message.startswith("NIC hot-plug refused: VM default/vm1 is not running (it has no "
                                       "VirtualMachineInstance)")


def test_hotplug_of_a_vm_with_interfaces_lacking_macs_says_to_restart_once() -> None:
    old = vm(interfaces=[iface("default", binding="masquerade"), BASE_IFACES[1]])
    new = vm(interfaces=[iface("default", binding="masquerade"), BASE_IFACES[1],
                         iface("nic-2", mac="02:00:00:00:00:03")],
             networks=[*BASE_NETS, multus_net("nic-2", "vlan2")])
    decision = validate(new, old, cluster=RUNNING)
    assert decision.message.endswith("stop the VM once so its observed MACs are written into the spec, then start "
                                     "it again")


GUEST_CLUSTER = {"harvesterhci.io/creator": "docker-machine-driver-harvester"}
PINNED = {"kubernetes.io/hostname": "node1"}


@pytest.mark.parametrize(("old_kwargs", "reason", "words"), [
    ({"labels": GUEST_CLUSTER}, "vm-guest-cluster", "belongs to a guest cluster"),
    ({"node_selector": PINNED}, "vm-not-migratable", "is pinned to node node1"),
    ({"host_devices": True}, "vm-not-migratable", "has host devices or GPUs"),
], ids=["guest-cluster-label", "hostname-selector", "host-devices"])
def test_an_edit_that_also_drops_what_made_the_vm_ineligible_cannot_hotplug(
        old_kwargs: dict[str, Any], reason: str, words: str) -> None:
    # The running VMI keeps what the old spec gave it until a restart: one `kubectl edit` that drops it
    # and adds a NIC is still a hot-plug into an ineligible VM.
    new = with_added(iface("nic-2", mac="02:00:00:00:00:03"), multus_net("nic-2", "vlan2"))
    decision = validate(new, vm(**old_kwargs), cluster=RUNNING)
    assert (decision.allowed, decision.code, decision.reason) == (False, 403, reason)
    assert words in decision.message


def test_an_edit_that_makes_the_vm_ineligible_cannot_hotplug_either() -> None:
    new = with_added(iface("nic-2", mac="02:00:00:00:00:03"), multus_net("nic-2", "vlan2"), node_selector=PINNED)
    assert validate(new, vm(), cluster=RUNNING).reason == "vm-not-migratable"


def test_a_condition_failed_before_and_after_the_edit_is_named_once() -> None:
    new = with_added(iface("nic-2", mac="02:00:00:00:00:03"), multus_net("nic-2", "vlan2"), node_selector=PINNED)
    decision = validate(new, vm(node_selector=PINNED), cluster=RUNNING)
    assert decision.message.count("is pinned to node node1") == 1


def test_a_hotplugged_interface_without_a_mac_points_at_the_mutating_webhook() -> None:
    # What arrives when the mutating webhook (failure policy Ignore) was down.
    decision = hotplug(iface("nic-2"), multus_net("nic-2", "vlan2"))
    assert decision == Decision.deny(
        403, "NIC hot-plug refused: VM default/vm1 interface(s) nic-2 are hot-plugged without a macAddress; "
             "nichotplug's mutating webhook gives every new interface one, so check that it is running, or write "
             "a macAddress yourself", "vm-missing-macs")


def test_writing_a_mac_into_a_running_interface_that_had_none_still_says_to_restart_once() -> None:
    old = vm(interfaces=[iface("default", binding="masquerade"), BASE_IFACES[1]])
    new = vm(interfaces=[*BASE_IFACES, iface("nic-2", mac="02:00:00:00:00:03")],
             networks=[*BASE_NETS, multus_net("nic-2", "vlan2")])
    decision = validate(new, old, cluster=RUNNING)
    assert decision.reason == "vm-missing-macs"
    assert "interface(s) default have no macAddress in the spec; stop the VM once" in decision.message


def unplug(name: str, cluster: StaticCluster = RUNNING, extra: list[dict[str, Any]] | None = None) -> Decision:
    interfaces = [*BASE_IFACES, *(extra or [])]
    networks = [*BASE_NETS, *([multus_net(i["name"], "vlan2") for i in extra] if extra else [])]
    new_interfaces = [{**item, "state": "absent"} if item["name"] == name else item for item in interfaces]
    return validate(vm(interfaces=new_interfaces, networks=networks), vm(interfaces=interfaces, networks=networks),
                    cluster=cluster)


def test_unplug_of_a_bridge_nic_is_allowed() -> None:
    assert unplug("nic-1") == Decision.allow(reason="hotplug-allowed")


def test_unplug_of_the_masquerade_interface_is_refused() -> None:
    assert unplug("default") == Decision.deny(
        403, "NIC hot-plug refused: cannot hot-unplug: interface default of VM default/vm1 uses masquerade binding; "
             "only bridge interfaces can be hot-unplugged; cannot hot-unplug: interface default of VM default/vm1 is "
             "not on a multus network; only interfaces on multus networks can be hot-unplugged", "unplug-not-bridge")


# harvester#8293: the NAD of the interface was deleted, is being deleted, or is no longer a bridge.
GONE_VLAN1 = {
    "deleted": NADS[1:],
    "being-deleted": [nad("vlan1", cluster_network="mgmt", deleting=True), *NADS[1:]],
    "no-longer-a-bridge": [nad("vlan1", config=KUBE_OVN_CONFIG), *NADS[1:]],
}


@pytest.mark.parametrize("nads", GONE_VLAN1.values(), ids=GONE_VLAN1.keys())
def test_unplug_from_a_network_that_is_gone_is_allowed_with_a_warning(nads: list[dict[str, Any]]) -> None:
    decision = unplug("nic-1", cluster=StaticCluster(vmis=[vmi()], nads=nads))
    assert (decision.allowed, decision.reason, len(decision.warnings)) == (True, "hotplug-allowed", 1)
    assert decision.warnings[0].startswith("interface nic-1 of VM default/vm1 is on network default/vlan1, which is "
                                           "gone or not a bridge network any more (")
    assert decision.warnings[0].endswith("); the interface can still be unplugged")


def test_removing_the_interface_of_a_deleted_network_from_a_stopped_vm_is_allowed() -> None:
    old = vm(run_strategy="Halted", printable_status="Stopped")
    new = vm(run_strategy="Halted", printable_status="Stopped", interfaces=BASE_IFACES[:1], networks=BASE_NETS[:1])
    assert validate(new, old, cluster=StaticCluster(nads=NADS[1:])) == Decision.allow()


def test_unplug_of_an_ineligible_vm_is_refused() -> None:
    assert unplug("nic-1", cluster=StaticCluster(vmis=[vmi(phase="Pending")], nads=NADS)).reason == "vm-not-running"


def test_unplugging_every_interface_is_refused() -> None:
    interfaces = [iface("nic-1", mac="02:00:00:00:00:02"), iface("nic-2", mac="02:00:00:00:00:03")]
    networks = [multus_net("nic-1", "vlan1"), multus_net("nic-2", "vlan2")]
    gone = [{**item, "state": "absent"} for item in interfaces]
    decision = validate(vm(interfaces=gone, networks=networks), vm(interfaces=interfaces, networks=networks),
                        cluster=RUNNING)
    assert decision.reason == "unplug-last-interface"


# -- cold edits --------------------------------------------------------------------------------------

STOPPED = StaticCluster(nads=NADS)


def test_cold_edit_of_a_stopped_vm_may_add_any_interface() -> None:
    old = vm(run_strategy="Halted", printable_status="Stopped")
    new = with_added(iface("nic-2", binding="masquerade", model="e1000", mac="02:00:00:00:00:03"), pod_net("nic-2"),
                     run_strategy="Halted", printable_status="Stopped")
    assert validate(new, old, cluster=STOPPED) == Decision.allow()


def test_cold_edit_may_remove_the_masquerade_interface() -> None:
    old = vm(run_strategy="Halted")
    new = vm(run_strategy="Halted", interfaces=BASE_IFACES[1:], networks=BASE_NETS[1:])
    assert validate(new, old, cluster=STOPPED).allowed


def test_cold_edit_still_checks_macs() -> None:
    old = vm(run_strategy="Halted")
    new = with_added(iface("nic-2", mac="ff:ff:ff:ff:ff:ff"), pod_net("nic-2"), run_strategy="Halted")
    assert validate(new, old, cluster=STOPPED).reason == "invalid-mac"


def test_a_vm_started_by_this_very_edit_is_a_cold_edit() -> None:
    old = vm(run_strategy="Halted")
    new = with_added(iface("nic-2", binding="masquerade", mac="02:00:00:00:00:03"), pod_net("nic-2"))
    assert validate(new, old, cluster=STOPPED).allowed


def test_cold_edit_of_a_vm_stopped_by_running_false() -> None:
    def stopped(obj: dict[str, Any]) -> dict[str, Any]:
        del obj["spec"]["runStrategy"]
        obj["spec"]["running"] = False
        return obj

    old = stopped(vm(printable_status="Stopped"))
    new = stopped(with_added(iface("nic-2", binding="masquerade", model="e1000", mac="02:00:00:00:00:03"),
                             pod_net("nic-2"), printable_status="Stopped"))
    assert validate(new, old, cluster=STOPPED) == Decision.allow()


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_cold_edit_of_a_vm_whose_guest_shut_down(phase: str) -> None:
    # runStrategy RerunOnFailure (Harvester's default) keeps the finished VMI after a shutdown from inside
    # the guest; the next start boots a new VMI from the spec.
    cluster = StaticCluster(vmis=[vmi(phase=phase, ready=False)], nads=NADS)
    old = vm(run_strategy="RerunOnFailure", printable_status="Stopped")
    new = with_added(iface("nic-2", binding="masquerade", model="e1000", mac="02:00:00:00:00:03"), pod_net("nic-2"),
                     run_strategy="RerunOnFailure", printable_status="Stopped")
    assert validate(new, old, cluster=cluster) == Decision.allow()
    clash = with_added(iface("nic-2", mac="02:00:00:00:00:02"), pod_net("nic-2"), run_strategy="RerunOnFailure")
    assert validate(clash, old, cluster=cluster).reason == "duplicate-mac"


def test_hot_rules_apply_when_a_vmi_exists_even_if_the_spec_says_halted() -> None:
    old = vm(run_strategy="Halted")
    new = with_added(iface("nic-2", binding="masquerade", mac="02:00:00:00:00:03"), pod_net("nic-2"),
                     run_strategy="Halted")
    assert validate(new, old, cluster=RUNNING).reason == "hotplug-not-bridge"


# -- warnings ----------------------------------------------------------------------------------------


def added_nics(count: int, memory: str = "1Gi") -> Decision:
    extra = [iface(f"hp-{i}", mac=f"02:00:00:00:01:{i:02x}") for i in range(count)]
    new = vm(interfaces=[*BASE_IFACES, *extra], networks=[*BASE_NETS, *(multus_net(i["name"], "vlan2") for i in extra)],
             memory=memory)
    return validate(new, vm(memory=memory), cluster=RUNNING)


@pytest.mark.parametrize(("ports_in_use", "memory", "budget"),
                         [(2, 2**30, 6), (6, 2**30, 3), (0, None, 8), (2, 2**31, 6), (2, 2**31 + 1, 14),
                          (12, 4 * 2**30, 6)])
def test_hotplug_port_budget(ports_in_use: int, memory: int | None, budget: int) -> None:
    assert hotplug_port_budget(ports_in_use, memory) == budget


def test_hotplugging_more_nics_than_the_port_budget_warns() -> None:
    assert added_nics(7).warnings == (
        "VM default/vm1: 7 interfaces hot-plugged at once, but KubeVirt reserves 6 hot-plug ports for a VM with 2 "
        "interfaces; the others may not attach until the VM restarts",)


def test_hotplugging_within_the_port_budget_does_not_warn() -> None:
    assert added_nics(6).warnings == ()


def test_more_guest_memory_gives_a_bigger_port_budget() -> None:
    assert added_nics(7, memory="4Gi").warnings == ()


def test_an_unparsable_mac_annotation_warns() -> None:
    decision = validate(vm(annotations={"harvesterhci.io/mac-address": "{nope"}))
    assert (decision.allowed, decision.warnings[0].startswith(
        "VM default/vm1: annotation harvesterhci.io/mac-address is not valid JSON")) == (True, True)


def test_an_annotation_nested_too_deep_warns_on_every_write_instead_of_a_500() -> None:
    deep = {"harvesterhci.io/mac-address": '{"default": ' + "[" * 100_000 + "]" * 100_000 + "}"}
    created = validate(vm(annotations=deep))
    relabelled = vm(annotations=deep, labels={"team": "a"})
    for decision in (created, validate(relabelled, vm(annotations=deep))):
        assert (decision.allowed, "is not valid JSON (maximum recursion depth exceeded" in decision.warnings[0]) == (
            True, True)


# -- what is not judged, and garbage ---------------------------------------------------------------------


def test_a_deleting_vm_is_allowed_as_it_is() -> None:
    cluster = cluster_with_vm(one_nic_vm("vm-a", "02:00:00:00:00:07", multus_net("", "vlan1")))
    doomed = one_nic_vm("vm-b", "02:00:00:00:00:07", multus_net("", "vlan1"), deleting=True)
    assert validate(doomed, doomed, cluster=cluster) == Decision.allow(reason="deleting")


@pytest.mark.parametrize("operation", ["DELETE", "CONNECT"])
def test_other_operations_are_allowed(operation: str) -> None:
    assert validate(None, vm(), operation=operation) == Decision.allow(reason="not-judged")


@pytest.mark.parametrize(
    ("garbage", "detail"),
    [
        (None, "a VirtualMachine must be a JSON object, found null"),
        ([1], "a VirtualMachine must be a JSON object, found an array"),
        ({"spec": "x"}, "spec must be an object, found a string"),
        ({"spec": {"template": {"spec": {"networks": [{"name": "n", "multus": []}]}}}},
         "spec.template.spec.networks[0].multus must be an object, found an array"),
    ],
)
def test_unreadable_objects_are_denied_with_403_and_the_field(garbage: object, detail: str) -> None:
    assert validate(garbage) == Decision.deny(403, f"VirtualMachine default/vm1 cannot be read: {detail}",
                                              "invalid-object")


def test_an_unreadable_old_object_still_gets_the_mac_rules() -> None:
    cluster = cluster_with_vm(one_nic_vm("vm-a", "02:00:00:00:00:07", multus_net("", "vlan1")))
    new = one_nic_vm("vm-b", "02:00:00:00:00:07", multus_net("", "vlan1"))
    assert validate(new, {"spec": 1}, cluster=cluster, name="vm-b").reason == "mac-collision"


def test_a_collision_older_than_the_request_does_not_block_other_spec_edits() -> None:
    mine = one_nic_vm("vm-b", "02:00:00:00:00:07", multus_net("", "vlan1"), run_strategy="Halted")
    resized = copy.deepcopy(mine)
    resized["spec"]["template"]["spec"]["domain"]["cpu"]["cores"] = 4
    cluster = cluster_with_vm(one_nic_vm("vm-a", "02:00:00:00:00:07", multus_net("", "vlan1")))
    assert validate(resized, mine, cluster=cluster, name="vm-b").allowed


# -- writes that leave the spec as it was ----------------------------------------------------------------


def test_a_metadata_write_with_an_unparsable_annotation_warns() -> None:
    old = vm()
    new = vm(annotations={"harvesterhci.io/mac-address": '"just a string"'})
    assert validate(new, old).warnings == (
        "VM default/vm1: annotation harvesterhci.io/mac-address must be a JSON object of interface name to MAC; "
        "the MACs it records are not protected from reuse",)


def test_a_metadata_write_with_garbage_metadata_is_denied() -> None:
    old = vm()
    new = copy.deepcopy(old)
    new["metadata"]["annotations"] = ["not", "a", "map"]
    assert validate(new, old).reason == "invalid-object"


def test_a_metadata_write_keeps_a_mac_the_spec_had_before_the_webhook() -> None:
    old = vm(interfaces=[iface("nic-1", mac="01:00:5e:00:00:01")], networks=[pod_net("nic-1")])
    new = copy.deepcopy(old)
    new["metadata"]["labels"]["team"] = "blue"
    assert validate(new, old) == Decision.allow()


def test_a_spec_edit_judges_only_the_macs_it_writes() -> None:
    """A MAC the spec had before the webhook blocks no edit that keeps it (the validating webhook's
    match conditions do not even send an edit that leaves the interfaces alone); a MAC written anew is
    judged."""
    old = vm(interfaces=[iface("nic-1", mac="01:00:5e:00:00:01")], networks=[pod_net("nic-1")], run_strategy="Halted")
    cpu_edit = copy.deepcopy(old)
    cpu_edit["spec"]["template"]["spec"]["domain"]["cpu"]["cores"] = 2
    assert validate(cpu_edit, old).allowed
    added = copy.deepcopy(old)
    added["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"].append(iface("nic-2", mac="02:00:00:00:00:42"))
    assert validate(added, old).allowed
    rewritten = copy.deepcopy(old)
    rewritten["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0]["macAddress"] = "01:00:5e:00:00:02"
    assert validate(rewritten, old).reason == "invalid-mac"


# -- a spec MAC outranks an annotation claim (issue 14, harvester#9788) ----------------------------

CLASH_MAC = "02:12:34:56:78:9c"
CLASH_NADS = [nad("vlan1", namespace="ns", cluster_network="mgmt"),
              nad("vlan2", namespace="ns", cluster_network="data")]


def stopped_vm(name: str, macs: dict[str, str | None], nic1_network: str = "ns/vlan1",
               annotation: str | None = None, **kwargs: Any) -> dict[str, Any]:
    return vm(name, "ns", interfaces=[iface("default", binding="masquerade", mac=macs["default"]),
                                      iface("nic-1", mac=macs["nic-1"])],
              networks=[pod_net(), multus_net("nic-1", nic1_network)], run_strategy="Halted",
              printable_status="Stopped",
              annotations={"harvesterhci.io/mac-address": annotation} if annotation else None, **kwargs)


CLASH_ANNOTATION = f'{{"default": "52:54:00:00:03:01", "nic-1": "{CLASH_MAC}"}}'
OLD_CLASH = stopped_vm("old-clash", {"default": None, "nic-1": None}, annotation=CLASH_ANNOTATION)


def validate_clash(new: Any, old: Any, nic1_network_of_owner: str = "ns/vlan1") -> Decision:
    owner = stopped_vm("old-owner", {"default": "52:54:00:00:02:01", "nic-1": CLASH_MAC}, nic1_network_of_owner)
    cluster = StaticCluster(vms=[owner, old], nads=CLASH_NADS)
    return validate_vm(AdmissionInput("UPDATE", "ns", "old-clash", new, old), cluster)


def test_writing_a_mac_another_vm_holds_in_its_spec_is_denied_whatever_the_writers_annotation_says() -> None:
    backfilled = stopped_vm("old-clash", {"default": "52:54:00:00:03:01", "nic-1": CLASH_MAC},
                            annotation=CLASH_ANNOTATION)
    assert validate_clash(backfilled, OLD_CLASH) == Decision.deny(
        409, f"VM ns/old-clash: mac address {CLASH_MAC} of interface nic-1 is already used by ns/old-owner interface "
             "nic-1 on cluster network mgmt", "mac-collision")


def test_the_same_mac_on_another_cluster_network_may_be_written() -> None:
    backfilled = stopped_vm("old-clash", {"default": "52:54:00:00:03:01", "nic-1": CLASH_MAC},
                            annotation=CLASH_ANNOTATION)
    assert validate_clash(backfilled, OLD_CLASH, nic1_network_of_owner="ns/vlan2").allowed


def test_the_vm_whose_recorded_mac_is_taken_is_not_stuck() -> None:
    relabelled = stopped_vm("old-clash", {"default": None, "nic-1": None}, annotation=CLASH_ANNOTATION,
                            labels={"team": "blue"})
    partly_backfilled = stopped_vm("old-clash", {"default": "52:54:00:00:03:01", "nic-1": None},
                                   annotation=CLASH_ANNOTATION)
    started = copy.deepcopy(partly_backfilled)
    started["spec"]["runStrategy"] = "Always"
    started["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][1]["macAddress"] = "02:aa:bb:cc:dd:01"
    assert [validate_clash(new, old).allowed for new, old in [
        (relabelled, OLD_CLASH), (partly_backfilled, OLD_CLASH), (started, partly_backfilled)]] == [True, True, True]


def test_unplugging_the_only_interface_is_refused_once() -> None:
    only = [iface("nic-1", mac="02:00:00:00:00:02")]
    networks = [multus_net("nic-1", "vlan1")]
    decision = validate(vm(interfaces=[{**only[0], "state": "absent"}], networks=networks),
                        vm(interfaces=only, networks=networks), cluster=RUNNING)
    assert decision == Decision.deny(
        403, "NIC hot-plug refused: cannot hot-unplug: interface nic-1 of VM default/vm1 is the VM's only interface; "
             "a VM keeps at least one", "unplug-last-interface")

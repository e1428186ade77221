"""mutate_vm: which MACs are added on CREATE, UPDATE of a running VM and UPDATE of a stopped VM."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import jsonpatch
import pytest

from nichotplug.rules.admission import AdmissionInput, mutate_vm, validate_vm
from nichotplug.rules.cluster import StaticCluster
from nichotplug.rules.decision import Decision

from .rules_support import iface, multus_net, nad, pod_net, vm, vmi

MAC_PATH = "/spec/template/spec/domain/devices/interfaces/{}/macAddress"
NO_MACS = [iface("default", binding="masquerade"), iface("nic-1")]
NETS = [pod_net(), multus_net("nic-1", "default/vlan1")]


def counting_bytes() -> Callable[[int], bytes]:
    """A deterministic random source: 0a:00:00:00:00:01, 0a:...:02, ..."""
    counter = iter(range(1, 1000))
    return lambda _n: bytes([0x0A, 0, 0, 0, 0, next(counter)])


def mutate(obj: Any, old: Any = None, *, operation: str | None = None, cluster: StaticCluster | None = None,
           random_bytes: Callable[[int], bytes] | None = None) -> Decision:
    op = operation if operation is not None else ("CREATE" if old is None else "UPDATE")
    req = AdmissionInput(op, "default", "vm1", obj, old)
    return mutate_vm(req, cluster or StaticCluster(), random_bytes or counting_bytes())


def added_macs(decision: Decision) -> dict[str, str]:
    return {op["path"]: op["value"] for op in decision.patch}


def test_create_gives_every_interface_without_mac_one() -> None:
    decision = mutate(vm(interfaces=NO_MACS, networks=NETS))
    assert decision.patch == (
        {"op": "add", "path": MAC_PATH.format(0), "value": "0a:00:00:00:00:01"},
        {"op": "add", "path": MAC_PATH.format(1), "value": "0a:00:00:00:00:02"},
    )


def test_create_patch_applies_as_real_json_patch() -> None:
    obj = vm(interfaces=NO_MACS, networks=NETS)
    patched = jsonpatch.apply_patch(obj, list(mutate(obj).patch))
    assert [item["macAddress"] for item in patched["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]] \
        == ["0a:00:00:00:00:01", "0a:00:00:00:00:02"]


def test_create_reason_is_macs_assigned() -> None:
    assert mutate(vm(interfaces=NO_MACS, networks=NETS)).reason == "macs-assigned"


def test_create_keeps_user_macs() -> None:
    decision = mutate(vm(interfaces=[iface("default", binding="masquerade", mac="02:00:00:00:00:01"),
                                     iface("nic-1")], networks=NETS))
    assert added_macs(decision) == {MAC_PATH.format(1): "0a:00:00:00:00:01"}


def test_create_with_every_mac_set_has_no_patch() -> None:
    assert mutate(vm()) == Decision.allow(reason="no-change")


def test_create_uses_the_observed_mac_annotation() -> None:
    decision = mutate(vm(interfaces=NO_MACS, networks=NETS,
                         annotations={"harvesterhci.io/mac-address": '{"nic-1":"BE:40:C3:88:75:7C"}'}))
    assert added_macs(decision) == {MAC_PATH.format(0): "0a:00:00:00:00:01", MAC_PATH.format(1): "be:40:c3:88:75:7c"}


def clone_of_source(source_network: str, clone_network: str) -> tuple[Decision, Decision, StaticCluster]:
    """A VM created from a copy of another VM's manifest: spec MACs removed, its annotation kept."""
    source = vm("source", interfaces=[iface("nic-1", mac="be:40:c3:88:75:7c")],
                networks=[multus_net("nic-1", source_network)])
    cluster = StaticCluster(vms=[source], nads=[nad("vlan1", cluster_network="mgmt"),
                                                nad("vlan2", cluster_network="data")])
    clone = vm("clone", interfaces=[iface("nic-1")], networks=[multus_net("nic-1", clone_network)],
               annotations={"harvesterhci.io/mac-address": '{"nic-1":"be:40:c3:88:75:7c"}'})
    decision = mutate_vm(AdmissionInput("CREATE", "default", "clone", clone), cluster, counting_bytes())
    patched = jsonpatch.apply_patch(clone, list(decision.patch))
    return decision, validate_vm(AdmissionInput("CREATE", "default", "clone", patched), cluster), cluster


def test_a_recorded_mac_another_vm_uses_on_the_same_network_is_not_copied_but_replaced_with_a_warning() -> None:
    decision, validation, _ = clone_of_source("vlan1", "vlan1")
    assert added_macs(decision) == {MAC_PATH.format(0): "0a:00:00:00:00:01"}
    assert decision.warnings == (
        "VM default/clone interface nic-1: the MAC its annotation harvesterhci.io/mac-address records, "
        "be:40:c3:88:75:7c, is used by default/source interface nic-1 on the same network; the interface gets the "
        "new MAC 0a:00:00:00:00:01 instead",)
    assert validation.allowed  # copying it would have been refused as a collision


def test_a_recorded_mac_used_only_on_another_network_is_kept() -> None:
    decision, validation, _ = clone_of_source("vlan2", "vlan1")
    assert (added_macs(decision), decision.warnings) == ({MAC_PATH.format(0): "be:40:c3:88:75:7c"}, ())
    assert validation.allowed


def test_a_stopped_vm_gets_back_the_mac_the_index_holds_for_itself() -> None:
    annotation = {"harvesterhci.io/mac-address": '{"nic-1":"be:40:c3:88:75:7c"}'}
    stopped = vm(interfaces=[iface("nic-1")], networks=[pod_net("nic-1")], annotations=annotation,
                 run_strategy="Halted")
    decision = mutate(stopped, stopped, cluster=StaticCluster(vms=[stopped]))  # indexed by its annotation
    assert (added_macs(decision), decision.warnings) == ({MAC_PATH.format(0): "be:40:c3:88:75:7c"}, ())


def test_observed_mac_already_used_in_the_request_is_not_reused() -> None:
    decision = mutate(vm(interfaces=[iface("default", binding="masquerade", mac="be:40:c3:88:75:7c"), iface("nic-1")],
                         networks=NETS, annotations={"harvesterhci.io/mac-address": '{"nic-1":"be:40:c3:88:75:7c"}'}))
    assert added_macs(decision) == {MAC_PATH.format(1): "0a:00:00:00:00:01"}


def test_generated_mac_taken_by_another_vm_is_drawn_again() -> None:
    other = vm("other", interfaces=[iface("nic-1", mac="0a:00:00:00:00:01")], networks=[pod_net("nic-1")])
    decision = mutate(vm(interfaces=[iface("nic-1")], networks=[pod_net("nic-1")]),
                      cluster=StaticCluster(vms=[other]))
    assert added_macs(decision) == {MAC_PATH.format(0): "0a:00:00:00:00:02"}


def test_generated_mac_used_by_another_interface_of_the_request_is_drawn_again() -> None:
    decision = mutate(vm(interfaces=[iface("default", binding="masquerade", mac="0A-00-00-00-00-01"),
                                     iface("nic-1")], networks=NETS))
    assert added_macs(decision) == {MAC_PATH.format(1): "0a:00:00:00:00:02"}


def test_two_generated_macs_in_one_request_differ() -> None:
    draws: Iterator[bytes] = iter([bytes.fromhex("0a0000000001")] * 2 + [bytes.fromhex("0a0000000002")])
    decision = mutate(vm(interfaces=NO_MACS, networks=NETS), random_bytes=lambda _n: next(draws))
    assert sorted(added_macs(decision).values()) == ["0a:00:00:00:00:01", "0a:00:00:00:00:02"]


def test_generated_macs_are_local_unicast_with_the_real_random_source() -> None:
    decision = mutate_vm(AdmissionInput("CREATE", "default", "vm1", vm(interfaces=NO_MACS, networks=NETS)),
                         StaticCluster())
    assert all(int(op["value"][:2], 16) & 3 == 2 for op in decision.patch)


def test_a_broken_random_source_is_an_internal_error_not_a_crash() -> None:
    other = vm("other", interfaces=[iface("nic-1", mac="0a:00:00:00:00:01")], networks=[pod_net("nic-1")])
    decision = mutate(vm(interfaces=[iface("nic-1")], networks=[pod_net("nic-1")]),
                      cluster=StaticCluster(vms=[other]), random_bytes=lambda _n: bytes.fromhex("0a0000000001"))
    assert (decision.allowed, decision.code, decision.reason) == (False, 500, "internal-error")


RUNNING_OLD = vm(interfaces=[iface("default", binding="masquerade"), iface("nic-1")], networks=NETS)
HOTPLUG_NEW = vm(interfaces=[iface("default", binding="masquerade"), iface("nic-1"), iface("nic-2")],
                 networks=[*NETS, multus_net("nic-2", "vlan1")])


def test_update_of_running_vm_only_gives_new_interfaces_a_mac() -> None:
    decision = mutate(HOTPLUG_NEW, RUNNING_OLD, cluster=StaticCluster(vmis=[vmi()]))
    assert added_macs(decision) == {MAC_PATH.format(2): "0a:00:00:00:00:01"}


def test_update_of_vm_whose_old_spec_asks_to_run_counts_as_running() -> None:
    decision = mutate(HOTPLUG_NEW, RUNNING_OLD)
    assert list(added_macs(decision)) == [MAC_PATH.format(2)]


def test_update_of_stopped_vm_is_like_create() -> None:
    old = copy.deepcopy(RUNNING_OLD)
    old["spec"]["runStrategy"] = "Halted"
    decision = mutate(HOTPLUG_NEW, old)
    assert list(added_macs(decision)) == [MAC_PATH.format(i) for i in range(3)]


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_update_of_vm_whose_guest_shut_down_is_like_create(phase: str) -> None:
    # runStrategy RerunOnFailure (Harvester's default): the VMI stays after a shutdown from inside the
    # guest, and the spec still asks to run; the next start boots a new VMI from the spec.
    old = copy.deepcopy(RUNNING_OLD)
    old["spec"]["runStrategy"] = "RerunOnFailure"
    new = copy.deepcopy(HOTPLUG_NEW)
    new["spec"]["runStrategy"] = "RerunOnFailure"
    decision = mutate(new, old, cluster=StaticCluster(vmis=[vmi(phase=phase, ready=False)]))
    assert list(added_macs(decision)) == [MAC_PATH.format(i) for i in range(3)]


def test_update_of_running_vm_without_new_interfaces_has_no_patch() -> None:
    assert mutate(RUNNING_OLD, RUNNING_OLD).patch == ()


def test_update_restores_a_mac_the_request_drops() -> None:
    decision = mutate(vm(interfaces=NO_MACS, networks=NETS), vm(), cluster=StaticCluster(vmis=[vmi()]))
    assert added_macs(decision) == {MAC_PATH.format(0): "02:00:00:00:00:01", MAC_PATH.format(1): "02:00:00:00:00:02"}


def test_deleting_vm_is_not_patched() -> None:
    assert mutate(vm(interfaces=NO_MACS, networks=NETS, deleting=True)) == Decision.allow(reason="deleting")


@pytest.mark.parametrize("operation", ["DELETE", "CONNECT", ""])
def test_other_operations_are_not_judged(operation: str) -> None:
    assert mutate(None, vm(), operation=operation) == Decision.allow(reason="not-judged")


@pytest.mark.parametrize(
    "garbage",
    [None, [], "vm", 3, {"spec": []}, {"metadata": "x"},
     {"spec": {"template": {"spec": {"domain": {"devices": {"interfaces": [{"name": 1}]}}}}}}],
)
def test_unreadable_objects_are_left_to_the_schema_check(garbage: object) -> None:
    assert mutate(garbage) == Decision.allow(reason="unreadable-object")


def test_update_with_unreadable_old_object_is_left_alone() -> None:
    assert mutate(vm(interfaces=NO_MACS, networks=NETS), {"spec": 5}) == Decision.allow(reason="unreadable-object")

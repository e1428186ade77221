"""Backfill planning: observed MACs, the annotation patch, and the backfill of a halted VM."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest

from nichotplug.rules.backfill import (
    MacMismatch,
    WithheldMac,
    annotation_patch,
    is_halted,
    observed_macs,
    plan_backfill,
)
from nichotplug.rules.cluster import MacOwner, StaticCluster, other_holder_of
from nichotplug.rules.observed_macs import parse_observed_macs
from nichotplug.rules.views import VmView
from nichotplug.rules.vm_object import OBSERVED_MACS_ANNOTATION as MAC_ANNOTATION

MAC_A = "be:40:c3:88:75:7c"
MAC_B = "02:00:00:00:00:0b"


def vm(*interfaces: dict[str, Any], annotation: str | None = None, run_strategy: str | None = "Halted",
       running: bool | None = None, rv: str = "17") -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "vm1", "namespace": "default", "resourceVersion": rv}
    if annotation is not None:
        metadata["annotations"] = {MAC_ANNOTATION: annotation}
    spec: dict[str, Any] = {"template": {"spec": {"domain": {"devices": {"interfaces": list(interfaces)}}}}}
    if run_strategy is not None:
        spec["runStrategy"] = run_strategy
    if running is not None:
        spec["running"] = running
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": metadata, "spec": spec}


def iface(name: str, mac: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "bridge": {}}
    if mac is not None:
        entry["macAddress"] = mac
    return entry


def apply(obj: dict[str, Any], ops: Any) -> dict[str, Any]:
    return jsonpatch.JsonPatch(list(ops)).apply(copy.deepcopy(obj))


def spec_macs(obj: dict[str, Any]) -> dict[str, str | None]:
    interfaces = obj["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]
    return {i["name"]: i.get("macAddress") for i in interfaces}


# --- observed_macs -------------------------------------------------------------------------------

def test_observed_macs_keeps_interfaces_with_name_and_mac_normalised() -> None:
    vmi = {"status": {"interfaces": [
        {"name": "default", "mac": "BE-40-C3-88-75-7C"},
        {"name": "nic2"},                                   # no MAC yet
        {"mac": MAC_B},                                     # guest-only interface without a name
        {"name": "bad", "mac": "not-a-mac"},
        "garbage",
    ]}}
    assert observed_macs(vmi) == {"default": MAC_A}


def test_observed_macs_of_a_vmi_without_status_is_empty() -> None:
    assert observed_macs({"metadata": {"name": "x"}}) == {}


def test_observed_macs_reads_a_view_with_interface_macs() -> None:
    class View:
        interface_macs = (("default", MAC_A.upper()), ("nic2", None))

    assert observed_macs(View()) == {"default": MAC_A}


# --- annotation_patch ----------------------------------------------------------------------------

def test_annotation_is_created_as_compact_json_when_the_vm_has_no_annotations() -> None:
    obj = vm(iface("default"), run_strategy="Always")
    ops = annotation_patch(obj, {"default": MAC_A})
    assert ops is not None
    assert ops[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "17"}
    patched = apply(obj, ops)
    assert patched["metadata"]["annotations"][MAC_ANNOTATION] == '{"default":"be:40:c3:88:75:7c"}'


def test_annotation_key_is_escaped_in_the_json_pointer_and_other_annotations_survive() -> None:
    obj = vm(iface("default"), run_strategy="Always")
    obj["metadata"]["annotations"] = {"team": "a"}
    ops = annotation_patch(obj, {"default": MAC_A})
    assert ops is not None
    assert ops[1]["path"] == "/metadata/annotations/harvesterhci.io~1mac-address"
    assert apply(obj, ops)["metadata"]["annotations"] == {"team": "a", MAC_ANNOTATION: json.dumps(
        {"default": MAC_A}, separators=(",", ":"))}


def test_no_patch_when_the_annotation_already_records_the_same_macs() -> None:
    obj = vm(iface("default"), annotation='{"default":"BE:40:C3:88:75:7C"}', run_strategy="Always")
    assert annotation_patch(obj, {"default": MAC_A}) is None


def test_no_patch_when_nothing_was_observed() -> None:
    assert annotation_patch(vm(iface("default")), {}) is None


def test_a_changed_mac_is_rewritten() -> None:
    obj = vm(iface("default"), annotation=f'{{"default":"{MAC_B}"}}', run_strategy="Always")
    ops = annotation_patch(obj, {"default": MAC_A})
    assert ops is not None
    assert parse_observed_macs(apply(obj, ops)["metadata"]["annotations"][MAC_ANNOTATION]) == ({"default": MAC_A}, "")


def test_recorded_names_missing_from_a_partial_status_are_kept_while_in_the_spec() -> None:
    obj = vm(iface("default"), iface("nic2"), annotation=f'{{"gone":"{MAC_B}","nic2":"{MAC_B}"}}',
             run_strategy="Always")
    ops = annotation_patch(obj, {"default": MAC_A})
    assert ops is not None
    recorded, _error = parse_observed_macs(apply(obj, ops)["metadata"]["annotations"][MAC_ANNOTATION])
    assert recorded == {"default": MAC_A, "nic2": MAC_B}  # "gone" left the spec, so it is dropped


def test_an_unparsable_annotation_is_replaced_by_what_was_observed() -> None:
    obj = vm(iface("default"), annotation="{not json", run_strategy="Always")
    ops = annotation_patch(obj, {"default": MAC_A})
    assert ops is not None
    assert apply(obj, ops)["metadata"]["annotations"][MAC_ANNOTATION] == f'{{"default":"{MAC_A}"}}'


def test_a_partly_bad_annotation_keeps_its_valid_entries_and_drops_the_bad_ones() -> None:
    obj = vm(iface("default"), iface("nic2"), annotation=f'{{"nic2":"{MAC_B}","default":"zz"}}',
             run_strategy="Always")
    ops = annotation_patch(obj, {"default": MAC_A})
    assert ops is not None
    assert apply(obj, ops)["metadata"]["annotations"][MAC_ANNOTATION] == f'{{"default":"{MAC_A}","nic2":"{MAC_B}"}}'


def test_a_bad_entry_is_dropped_even_when_the_valid_ones_are_unchanged() -> None:
    obj = vm(iface("default"), iface("nic2"), annotation=f'{{"default":"{MAC_A}","nic2":5}}', run_strategy="Always")
    ops = annotation_patch(obj, {"default": MAC_A})
    assert ops is not None
    assert apply(obj, ops)["metadata"]["annotations"][MAC_ANNOTATION] == f'{{"default":"{MAC_A}"}}'


def test_a_stale_resource_version_makes_the_annotation_patch_fail() -> None:
    obj = vm(iface("default"), run_strategy="Always")
    ops = annotation_patch(obj, {"default": MAC_A})
    obj["metadata"]["resourceVersion"] = "18"  # someone wrote in between
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        apply(obj, ops)


# --- is_halted and plan_backfill -----------------------------------------------------------------

@pytest.mark.parametrize(("run_strategy", "running", "halted"), [
    ("Halted", None, True), (None, False, True), ("Always", None, False), ("RerunOnFailure", None, False),
    ("Manual", None, False), (None, True, False), (None, None, False),
])
def test_halted_means_run_strategy_halted_or_running_false(
    run_strategy: str | None, running: bool | None, halted: bool,
) -> None:
    assert is_halted(vm(run_strategy=run_strategy, running=running)) is halted


def test_backfill_writes_recorded_macs_into_interfaces_that_lack_one() -> None:
    obj = vm(iface("default"), iface("nic2"), annotation=f'{{"default":"{MAC_A}","nic2":"{MAC_B}"}}')
    plan = plan_backfill(obj)
    assert plan.ops[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "17"}
    assert spec_macs(apply(obj, plan.ops)) == {"default": MAC_A, "nic2": MAC_B}
    assert plan.backfilled == (("default", MAC_A), ("nic2", MAC_B))
    assert (plan.kept_mismatches, plan.not_observed, plan.annotation_error) == ((), (), None)


def test_backfill_uses_add_ops_not_replace() -> None:
    plan = plan_backfill(vm(iface("default"), annotation=f'{{"default":"{MAC_A}"}}'))
    assert [op["op"] for op in plan.ops] == ["test", "test", "add"]


def test_running_false_is_backfilled_like_halted() -> None:
    obj = vm(iface("default"), annotation=f'{{"default":"{MAC_A}"}}', run_strategy=None, running=False)
    assert spec_macs(apply(obj, plan_backfill(obj).ops)) == {"default": MAC_A}


def test_a_started_vm_is_not_backfilled() -> None:
    plan = plan_backfill(vm(iface("default"), annotation=f'{{"default":"{MAC_A}"}}', run_strategy="Always"))
    assert plan.ops == ()
    assert plan.backfilled == ()


def test_a_spec_mac_is_never_overwritten_and_a_different_record_is_a_mismatch() -> None:
    obj = vm(iface("default", MAC_B), iface("nic2"), annotation=f'{{"default":"{MAC_A}","nic2":"{MAC_A}"}}')
    plan = plan_backfill(obj)
    assert spec_macs(apply(obj, plan.ops)) == {"default": MAC_B, "nic2": MAC_A}
    assert plan.kept_mismatches == (MacMismatch("default", MAC_B, MAC_A),)


def test_a_spec_mac_spelled_differently_is_not_a_mismatch() -> None:
    plan = plan_backfill(vm(iface("default", MAC_A.upper().replace(":", "-")),
                            annotation=f'{{"default":"{MAC_A}"}}'))
    assert plan.kept_mismatches == ()
    assert plan.ops == ()


def test_names_the_annotation_lacks_are_reported_and_left_alone() -> None:
    obj = vm(iface("default"), iface("nic2"), annotation=f'{{"default":"{MAC_A}"}}')
    plan = plan_backfill(obj)
    assert plan.not_observed == ("nic2",)
    assert spec_macs(apply(obj, plan.ops)) == {"default": MAC_A, "nic2": None}


def test_a_vm_without_annotation_gets_no_ops_and_every_name_is_not_observed() -> None:
    plan = plan_backfill(vm(iface("default"), iface("nic2")))
    assert plan.ops == ()
    assert plan.not_observed == ("default", "nic2")


def test_an_unparsable_annotation_is_reported_and_nothing_is_written() -> None:
    plan = plan_backfill(vm(iface("default"), annotation='{"default":'))
    assert plan.ops == ()
    assert plan.annotation_error is not None
    assert "is not valid JSON" in plan.annotation_error


@pytest.mark.parametrize("bad_entry", ['"zz:zz"', "5", "null", '""'])
def test_a_partly_bad_annotation_backfills_its_valid_entries_and_reports_the_rest(bad_entry: str) -> None:
    obj = vm(iface("default"), iface("nic2"), annotation=f'{{"default":"{MAC_A}","nic2":{bad_entry}}}')
    plan = plan_backfill(obj)
    assert plan.backfilled == (("default", MAC_A),)
    assert plan.annotation_error is not None
    assert "has no valid MAC for interface(s) nic2" in plan.annotation_error
    assert plan.not_observed == ("nic2",)
    assert spec_macs(apply(obj, plan.ops)) == {"default": MAC_A, "nic2": None}


def test_nothing_to_backfill_gives_no_ops() -> None:
    assert plan_backfill(vm(iface("default", MAC_A), annotation=f'{{"default":"{MAC_A}"}}')).ops == ()


def test_backfill_guards_each_index_with_the_interface_name() -> None:
    obj = vm(iface("default"), iface("nic2"), annotation=f'{{"nic2":"{MAC_B}"}}')
    plan = plan_backfill(obj)
    # Someone reorders the interfaces but the resourceVersion is (wrongly) unchanged: the name test
    # still stops the MAC from landing on the wrong interface.
    reordered = copy.deepcopy(obj)
    interfaces = reordered["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]
    interfaces.reverse()
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        apply(reordered, plan.ops)


def test_a_vm_without_resource_version_is_never_written() -> None:
    assert plan_backfill(vm(iface("default"), annotation=f'{{"default":"{MAC_A}"}}', rv="")).ops == ()


@pytest.mark.parametrize("garbage", [{}, {"spec": "x"}, {"spec": {"template": {"spec": {"domain": []}}}},
                                     {"metadata": None, "spec": {"runStrategy": "Halted"}}])
def test_malformed_vms_plan_nothing_and_do_not_crash(garbage: dict[str, Any]) -> None:
    assert plan_backfill(garbage).ops == ()
    assert annotation_patch(garbage, {"default": MAC_A}) is None


# --- the same planning from rules.views.VmView ----------------------------------------------------

@pytest.mark.parametrize(("run_strategy", "running", "halted"), [
    ("Halted", None, True), (None, False, True), ("Manual", None, False), (None, None, False),
    ("Always", None, False),
])
def test_views_are_halted_exactly_like_dicts(run_strategy: str | None, running: bool | None, halted: bool) -> None:

    assert is_halted(VmView.from_dict(vm(run_strategy=run_strategy, running=running))) is halted


def test_a_view_plans_the_same_ops_as_its_dict() -> None:

    obj = vm(iface("default"), iface("nic2", MAC_A), iface("nic3"),
             annotation=f'{{"default":"{MAC_A}","nic2":"{MAC_B}"}}')
    assert plan_backfill(VmView.from_dict(obj)) == plan_backfill(obj)
    running = vm(iface("default"), annotation=f'{{"default":"{MAC_B}"}}', run_strategy="Always")
    observed = {"default": MAC_A}
    assert annotation_patch(VmView.from_dict(running), observed) == annotation_patch(running, observed)


def test_a_view_without_our_annotation_never_replaces_the_whole_annotation_map() -> None:

    # A cached view keeps only the annotations nichotplug reads, so it cannot tell whether others
    # exist: the op must add our key, never replace /metadata/annotations.
    obj = vm(iface("default"), run_strategy="Always")
    obj["metadata"]["annotations"] = {"team": "a"}
    view = VmView.from_dict({**obj, "metadata": {**obj["metadata"], "annotations": {}}})
    ops = annotation_patch(view, {"default": MAC_A})
    assert ops is not None
    assert apply(obj, ops)["metadata"]["annotations"]["team"] == "a"


# --- a recorded MAC another VM holds (the clash predates nichotplug) ------------------------------

CLASH_MAC = "02:12:34:56:78:9c"


def halted_vm(name: str, macs: dict[str, str | None], nic1_network: str, annotation: str | None = None,
              ) -> dict[str, Any]:
    """A halted VM in namespace ns: ``default`` on the pod network, ``nic-1`` on ``nic1_network``."""
    obj = vm(*(iface(iface_name, mac) for iface_name, mac in macs.items()), annotation=annotation)
    obj["metadata"].update(name=name, namespace="ns")
    obj["spec"]["template"]["spec"]["networks"] = [
        {"name": "default", "pod": {}}, {"name": "nic-1", "multus": {"networkName": nic1_network}}]
    return obj


def bridge_nad(name: str, cluster_network: str) -> dict[str, Any]:
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": "ns",
                         "labels": {"network.harvesterhci.io/clusternetwork": cluster_network}},
            "spec": {"config": '{"cniVersion":"0.3.1","type":"bridge","bridge":"br","vlan":1}'}}


OLD_CLASH = halted_vm("old-clash", {"default": None, "nic-1": None}, "ns/vlan1",
                      annotation=f'{{"default": "52:54:00:00:03:01", "nic-1": "{CLASH_MAC}"}}')


def clash_plan(owner_nic1_network: str, *, owner_has_spec_mac: bool = True) -> Any:
    owner_nic1 = CLASH_MAC if owner_has_spec_mac else None
    owner_annotation = None if owner_has_spec_mac else f'{{"nic-1":"{CLASH_MAC}"}}'
    owner = halted_vm("old-owner", {"default": "52:54:00:00:02:01", "nic-1": owner_nic1}, owner_nic1_network,
                      annotation=owner_annotation)
    cluster = StaticCluster(vms=[owner, OLD_CLASH], nads=[bridge_nad("vlan1", "mgmt"), bridge_nad("vlan2", "data")])
    return plan_backfill(OLD_CLASH, other_holder_of(VmView.from_dict(OLD_CLASH), cluster))


@pytest.mark.parametrize("owner_has_spec_mac", [True, False], ids=["owner-spec-mac", "owner-annotation"])
def test_a_recorded_mac_another_vm_holds_on_the_network_is_withheld_and_the_free_ones_written(
        owner_has_spec_mac: bool) -> None:
    plan = clash_plan("ns/vlan1", owner_has_spec_mac=owner_has_spec_mac)
    assert spec_macs(apply(OLD_CLASH, plan.ops)) == {"default": "52:54:00:00:03:01", "nic-1": None}
    assert plan.backfilled == (("default", "52:54:00:00:03:01"),)
    assert plan.withheld == (WithheldMac("nic-1", CLASH_MAC, MacOwner("ns", "old-owner", "nic-1", ("ns", "vlan1"))),)


def test_a_recorded_mac_another_vm_holds_on_another_cluster_network_is_copied() -> None:
    plan = clash_plan("ns/vlan2")  # cluster network data: another L2
    assert spec_macs(apply(OLD_CLASH, plan.ops)) == {"default": "52:54:00:00:03:01", "nic-1": CLASH_MAC}
    assert plan.withheld == ()


def test_only_withheld_macs_means_no_write() -> None:
    obj = halted_vm("old-clash", {"default": "52:54:00:00:03:01", "nic-1": None}, "ns/vlan1",
                    annotation=f'{{"nic-1":"{CLASH_MAC}"}}')
    plan = plan_backfill(obj, lambda _name, _mac: MacOwner("ns", "old-owner", "nic-1", ("ns", "vlan1")))
    assert (plan.ops, plan.backfilled, len(plan.withheld)) == ((), (), 1)

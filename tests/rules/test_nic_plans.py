"""Planning of addNic / removeNic / findHotunpluggableNics: the patches (applied with real JSON Patch)
and every refusal, with its status and code."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nichotplug.rules import nic_plans
from nichotplug.rules.cluster import ClusterState, StaticCluster
from nichotplug.rules.nic_plans import ActionRefusal, NicPlan, VmState, parse_add_nic, parse_remove_nic, vm_state

from .rules_support import KUBE_OVN_CONFIG, iface, multus_net, nad, pod_net, vm, vmi

INTERFACES = ("spec", "template", "spec", "domain", "devices", "interfaces")


def cluster(vm_obj: dict[str, Any], *nads: dict[str, Any], others: tuple[dict[str, Any], ...] = ()) -> StaticCluster:
    return StaticCluster(vms=[vm_obj, *others], vmis=[vmi()], nads=list(nads) or [nad()])


def interfaces_of(obj: dict[str, Any]) -> list[dict[str, Any]]:
    node: Any = obj
    for key in INTERFACES:
        node = node[key]
    return list(node)


def networks_of(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return list(obj["spec"]["template"]["spec"]["networks"])


def refusal(result: object) -> ActionRefusal:
    assert isinstance(result, ActionRefusal), f"expected a refusal, got {result!r}"
    return result


def ops(result: object) -> list[dict[str, Any]]:
    assert isinstance(result, NicPlan), f"expected a plan, got {result!r}"
    return list(result.ops)


def state_of(vm_obj: dict[str, Any], vmi_obj: dict[str, Any] | None,
             cluster_state: ClusterState | None = None) -> VmState:
    state = vm_state(vm_obj, vmi_obj, cluster_state)
    assert isinstance(state, VmState), f"expected a readable VM, got {state!r}"
    return state


def add_nic(vm_obj: dict[str, Any], vmi_obj: dict[str, Any] | None, body: dict[str, Any],
            cluster_state: ClusterState, *, name_optional: bool = False,
            random_bytes: Callable[[int], bytes] | None = None) -> NicPlan | ActionRefusal:
    """Read, parse and plan as the flow does: an unreadable VM first, then the body, then the plan."""
    state = vm_state(vm_obj, vmi_obj, cluster_state)
    if isinstance(state, ActionRefusal):
        return state
    request = parse_add_nic(body, state.view.namespace, name_optional=name_optional)
    if isinstance(request, ActionRefusal):
        return request
    if random_bytes is None:
        return nic_plans.plan_add_nic(request, state)
    return nic_plans.plan_add_nic(request, state, random_bytes=random_bytes)


def remove_nic(vm_obj: dict[str, Any], vmi_obj: dict[str, Any] | None, body: dict[str, Any]) -> NicPlan | ActionRefusal:
    state = vm_state(vm_obj, vmi_obj)
    if isinstance(state, ActionRefusal):
        return state
    name = parse_remove_nic(body)
    return name if isinstance(name, ActionRefusal) else nic_plans.plan_remove_nic(name, state)


def bytes_from(*chunks: bytes) -> Iterator[bytes]:
    yield from chunks


# -- addNic ---------------------------------------------------------------------------------------


def test_add_nic_patch_adds_virtio_bridge_interface_and_multus_network() -> None:
    machine = vm()
    body = {"interfaceName": "dynif1", "networkName": "default/vlan1", "macAddress": "02:aa:bb:cc:dd:ee"}
    patch = ops(add_nic(machine, vmi(), body, cluster(machine)))
    assert patch[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "100"}
    patched = jsonpatch.apply_patch(machine, patch)
    assert interfaces_of(patched)[-1] == {"name": "dynif1", "model": "virtio", "bridge": {},
                                          "macAddress": "02:aa:bb:cc:dd:ee"}
    assert networks_of(patched)[-1] == {"name": "dynif1", "multus": {"networkName": "default/vlan1"}}
    assert interfaces_of(patched)[:-1] == interfaces_of(machine)  # nothing else touched


def test_add_nic_patch_fails_against_a_newer_resource_version() -> None:
    machine = vm()
    patch = ops(add_nic(machine, vmi(), {"interfaceName": "dynif1", "networkName": "vlan1"}, cluster(machine)))
    newer = vm(resource_version="101")
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(newer, patch)


def test_network_name_without_namespace_means_the_vm_namespace() -> None:
    machine = vm(namespace="tenant", networks=[pod_net("default"), multus_net("nic-1", "tenant/vlan1")])
    body = {"interfaceName": "dynif1", "networkName": "vlan1"}
    patched = jsonpatch.apply_patch(machine, ops(add_nic(
        machine, vmi(namespace="tenant"), body,
        StaticCluster(vms=[machine], vmis=[vmi(namespace="tenant")], nads=[nad(namespace="tenant")]))))
    assert networks_of(patched)[-1]["multus"]["networkName"] == "tenant/vlan1"


def test_add_nic_generates_a_locally_administered_unicast_mac_not_in_use() -> None:
    machine = vm()  # uses 02:00:00:00:00:01 and 02:00:00:00:00:02
    draws = bytes_from(bytes([0x02, 0, 0, 0, 0, 0x02]), bytes([0xF1, 0x10, 0x20, 0x30, 0x40, 0x50]))
    patch = ops(add_nic(machine, vmi(), {"interfaceName": "dynif1", "networkName": "default/vlan1"},
                             cluster(machine), random_bytes=lambda _n: next(draws)))
    mac = interfaces_of(jsonpatch.apply_patch(machine, patch))[-1]["macAddress"]
    assert mac == "f2:10:20:30:40:50"  # the taken first draw was drawn again; bits fixed to 0x02 / unicast


@pytest.mark.parametrize("given", ["", None])
def test_empty_or_missing_mac_is_generated(given: str | None) -> None:
    machine = vm()
    body: dict[str, Any] = {"interfaceName": "dynif1", "networkName": "default/vlan1"}
    if given is not None:
        body["macAddress"] = given
    mac = interfaces_of(jsonpatch.apply_patch(machine, ops(add_nic(machine, vmi(), body, cluster(machine)))))
    assert int(mac[-1]["macAddress"][:2], 16) & 0x03 == 0x02


def test_given_mac_is_normalised() -> None:
    machine = vm()
    body = {"interfaceName": "dynif1", "networkName": "default/vlan1", "macAddress": "02-AB-CD-EF-00-11"}
    patched = jsonpatch.apply_patch(machine, ops(add_nic(machine, vmi(), body, cluster(machine))))
    assert interfaces_of(patched)[-1]["macAddress"] == "02:ab:cd:ef:00:11"


def test_unknown_body_fields_are_ignored() -> None:
    machine = vm()
    body = {"interfaceName": "dynif1", "networkName": "default/vlan1", "model": "e1000", "extra": [1]}
    patched = jsonpatch.apply_patch(machine, ops(add_nic(machine, vmi(), body, cluster(machine))))
    assert interfaces_of(patched)[-1]["model"] == "virtio"


def test_vm_without_interfaces_or_networks_gets_the_lists_created() -> None:
    machine = vm(interfaces=[], networks=[])
    del machine["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]
    del machine["spec"]["template"]["spec"]["networks"]
    patched = jsonpatch.apply_patch(machine, ops(add_nic(
        machine, vmi(), {"interfaceName": "dynif1", "networkName": "default/vlan1"}, cluster(machine))))
    assert [i["name"] for i in interfaces_of(patched)] == ["dynif1"]
    assert [n["name"] for n in networks_of(patched)] == ["dynif1"]


def test_optional_name_picks_the_first_free_nic_number() -> None:
    machine = vm(interfaces=[*vm_interfaces(), iface("nic-2", mac="02:00:00:00:00:03")],
                 networks=[pod_net("default"), multus_net("nic-1", "default/vlan1"), multus_net("nic-2", "vlan1")])
    patch = ops(add_nic(machine, vmi(), {"networkName": "vlan1"}, cluster(machine), name_optional=True))
    assert interfaces_of(jsonpatch.apply_patch(machine, patch))[-1]["name"] == "nic-3"


def vm_interfaces() -> list[dict[str, Any]]:
    return [iface("default", binding="masquerade", mac="02:00:00:00:00:01"), iface("nic-1", mac="02:00:00:00:00:02")]


@pytest.mark.parametrize(("body", "code", "words"), [
    ({"networkName": "vlan1"}, nic_plans.MISSING_REQUIRED, "interfaceName"),
    ({"interfaceName": "", "networkName": "vlan1"}, nic_plans.MISSING_REQUIRED, "interfaceName"),
    ({"interfaceName": "dynif1"}, nic_plans.MISSING_REQUIRED, "networkName"),
    ({"interfaceName": 7, "networkName": "vlan1"}, nic_plans.INVALID_FORMAT, "must be a string"),
    ({"interfaceName": "DynIf", "networkName": "vlan1"}, nic_plans.INVALID_FORMAT, "not a valid name"),
    ({"interfaceName": "a" * 64, "networkName": "vlan1"}, nic_plans.INVALID_FORMAT, "not a valid name"),
    ({"interfaceName": "-x", "networkName": "vlan1"}, nic_plans.INVALID_FORMAT, "not a valid name"),
    ({"interfaceName": "dynif1", "networkName": "a/b/c"}, nic_plans.INVALID_FORMAT, "networkName"),
    ({"interfaceName": "dynif1", "networkName": "Bad_Name"}, nic_plans.INVALID_FORMAT, "networkName"),
    ({"interfaceName": "dynif1", "networkName": "/vlan1"}, nic_plans.INVALID_FORMAT, "networkName"),
    ({"interfaceName": "dynif1", "networkName": ["vlan1"]}, nic_plans.INVALID_FORMAT, "must be a string"),
    ({"interfaceName": "dynif1", "networkName": "vlan1", "macAddress": "zz:00:00:00:00:00"},
     nic_plans.INVALID_FORMAT, "not a MAC address"),
    ({"interfaceName": "dynif1", "networkName": "vlan1", "macAddress": "03:00:00:00:00:01"},
     nic_plans.INVALID_FORMAT, "multicast"),
    ({"interfaceName": "dynif1", "networkName": "vlan1", "macAddress": "00:00:00:00:00:00"},
     nic_plans.INVALID_FORMAT, "all-zero"),
    ({"interfaceName": "dynif1", "networkName": "vlan1", "macAddress": 12}, nic_plans.INVALID_FORMAT, "string"),
])
def test_bad_add_nic_body_is_422(body: dict[str, Any], code: str, words: str) -> None:
    machine = vm()
    result = refusal(add_nic(machine, vmi(), body, cluster(machine)))
    assert (result.status, result.code) == (422, code)
    assert words in result.message


@pytest.mark.parametrize("name", ["nic-1", "default"])
def test_interface_name_used_by_an_interface_is_409(name: str) -> None:
    machine = vm()
    result = refusal(add_nic(machine, vmi(), {"interfaceName": name, "networkName": "vlan1"}, cluster(machine)))
    assert (result.status, result.code) == (409, nic_plans.NAME_IN_USE)
    assert repr(name) in result.message


def test_interface_name_used_only_by_a_network_is_409() -> None:
    machine = vm(networks=[pod_net("default"), multus_net("nic-1", "default/vlan1"), multus_net("spare", "vlan1")])
    result = refusal(add_nic(machine, vmi(), {"interfaceName": "spare", "networkName": "vlan1"},
                                  cluster(machine)))
    assert (result.status, result.code) == (409, nic_plans.NAME_IN_USE)


def test_missing_nad_is_404() -> None:
    machine = vm()
    result = refusal(add_nic(machine, vmi(), {"interfaceName": "dynif1", "networkName": "default/nope"},
                                  cluster(machine)))
    assert (result.status, result.code) == (404, nic_plans.NOT_FOUND)
    assert "default/nope" in result.message


@pytest.mark.parametrize(("target", "words"), [
    (nad("ovn1", config=KUBE_OVN_CONFIG), "kube-ovn"),
    (nad("mignet", namespace="harvester-system"), "harvester-system"),
    (nad("gone", deleting=True), "being deleted"),
    (nad("broken", config="{not json"), "not valid JSON"),
])
def test_nad_that_is_not_hotpluggable_is_409(target: dict[str, Any], words: str) -> None:
    machine = vm()
    network = f"{target['metadata']['namespace']}/{target['metadata']['name']}"
    result = refusal(add_nic(machine, vmi(), {"interfaceName": "dynif1", "networkName": network},
                                  cluster(machine, nad(), target)))
    assert (result.status, result.code) == (409, nic_plans.NETWORK_NOT_HOTPLUGGABLE)
    assert words in result.message


def test_mac_of_another_interface_of_the_vm_is_409() -> None:
    machine = vm()
    body = {"interfaceName": "dynif1", "networkName": "vlan1", "macAddress": "02:00:00:00:00:01"}
    result = refusal(add_nic(machine, vmi(), body, cluster(machine)))
    assert (result.status, result.code) == (409, nic_plans.MAC_IN_USE)
    assert "interface default of this VM" in result.message


def test_mac_of_another_vm_on_the_same_cluster_network_is_409_but_other_networks_are_fine() -> None:
    machine = vm()
    other = vm("vm2", interfaces=[iface("nic-1", mac="02:00:00:00:99:99")],
               networks=[multus_net("nic-1", "default/vlan1")])
    body = {"interfaceName": "dynif1", "networkName": "vlan1", "macAddress": "02:00:00:00:99:99"}
    result = refusal(add_nic(machine, vmi(), body, cluster(machine, others=(other,))))
    assert (result.status, result.code) == (409, nic_plans.MAC_IN_USE)
    assert "default/vm2 interface nic-1 on cluster network mgmt" in result.message
    elsewhere = nad("vlan9", cluster_network="data")
    body["networkName"] = "vlan9"
    assert isinstance(add_nic(machine, vmi(), body, cluster(machine, nad(), elsewhere, others=(other,))), NicPlan)


# -- eligibility (both writes) ----------------------------------------------------------------------

INELIGIBLE: list[tuple[str, dict[str, Any], dict[str, Any] | None, str]] = [
    ("guest cluster", vm(labels={"harvesterhci.io/creator": "docker-machine-driver-harvester"}), vmi(),
     "guest cluster"),
    ("no VMI", vm(), None, "no VirtualMachineInstance"),
    ("VMI deleting", vm(), vmi(deleting=True), "stopping"),
    ("VMI not running", vm(), vmi(phase="Scheduling"), "phase Scheduling"),
    ("VMI not ready", vm(), vmi(ready=False), "not ready"),
    ("migrating", vm(), vmi(migration={"completed": False}), "being live-migrated"),
    ("VM status not Running", vm(printable_status="Starting"), vmi(), "status is Starting"),
    ("not live-migratable", vm(), vmi(live_migratable="False", migratable_reason="DisksNotLiveMigratable"),
     "DisksNotLiveMigratable"),
    ("pinned to a node", vm(node_selector={"kubernetes.io/hostname": "node1"}), vmi(), "pinned to node node1"),
    ("host devices", vm(host_devices=True), vmi(), "host devices"),
    ("missing MAC", vm(interfaces=[iface("default", binding="masquerade"), iface("nic-1", mac="02:00:00:00:00:02")]),
     vmi(), "stop the VM once"),
]


@pytest.mark.parametrize(("machine", "instance", "words"), [case[1:] for case in INELIGIBLE],
                         ids=[case[0] for case in INELIGIBLE])
def test_ineligible_vm_refuses_both_writes_with_409(machine: dict[str, Any], instance: dict[str, Any] | None,
                                                     words: str) -> None:
    state = StaticCluster(vms=[machine], vmis=[instance] if instance else [], nads=[nad()])
    added = refusal(add_nic(machine, instance, {"interfaceName": "dynif1", "networkName": "vlan1"}, state))
    removed = refusal(remove_nic(machine, instance, {"interfaceName": "nic-1"}))
    for result in (added, removed):
        assert (result.status, result.code) == (409, nic_plans.NOT_ELIGIBLE)
        assert words in result.message
        assert "default/vm1" in result.message
    assert nic_plans.find_hotunpluggable(state_of(machine, instance)) == []


def test_every_ineligibility_reason_is_reported_at_once() -> None:
    machine = vm(labels={"harvesterhci.io/creator": "docker-machine-driver-harvester"}, host_devices=True)
    result = refusal(add_nic(machine, vmi(ready=False), {"interfaceName": "x", "networkName": "vlan1"},
                                  cluster(machine)))
    for words in ("guest cluster", "not ready", "host devices"):
        assert words in result.message


def test_bad_body_is_reported_before_ineligibility() -> None:
    machine = vm(host_devices=True)
    result = refusal(add_nic(machine, vmi(), {"interfaceName": "BAD"}, cluster(machine)))
    assert result.status == 422


# -- removeNic ------------------------------------------------------------------------------------


def test_remove_nic_adds_state_absent() -> None:
    machine = vm()
    patch = ops(remove_nic(machine, vmi(), {"interfaceName": "nic-1"}))
    assert patch[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "100"}
    patched = jsonpatch.apply_patch(machine, patch)
    assert interfaces_of(patched)[1] == {**interfaces_of(machine)[1], "state": "absent"}
    assert interfaces_of(patched)[0] == interfaces_of(machine)[0]
    assert networks_of(patched) == networks_of(machine)  # KubeVirt removes the network after unplug


def test_remove_nic_replaces_an_existing_state() -> None:
    machine = vm(interfaces=[*vm_interfaces()[:1], iface("nic-1", mac="02:00:00:00:00:02", state="up")])
    patch = ops(remove_nic(machine, vmi(), {"interfaceName": "nic-1"}))
    assert patch[1]["op"] == "replace"
    assert interfaces_of(jsonpatch.apply_patch(machine, patch))[1]["state"] == "absent"


def test_remove_unknown_interface_is_404() -> None:
    machine = vm()
    result = refusal(remove_nic(machine, vmi(), {"interfaceName": "nic-9"}))
    assert (result.status, result.code) == (404, nic_plans.NOT_FOUND)


@pytest.mark.parametrize(("body", "code"), [
    ({}, nic_plans.MISSING_REQUIRED), ({"interfaceName": None}, nic_plans.MISSING_REQUIRED),
    ({"interfaceName": 3}, nic_plans.INVALID_FORMAT), ({"interfaceName": "Nic_1"}, nic_plans.INVALID_FORMAT),
])
def test_bad_remove_nic_body_is_422(body: dict[str, Any], code: str) -> None:
    machine = vm()
    result = refusal(remove_nic(machine, vmi(), body))
    assert (result.status, result.code) == (422, code)


def shapes_vm() -> dict[str, Any]:
    """One interface of every shape SPEC names, each with a MAC so the VM is eligible."""
    interfaces = [
        iface("default", binding="masquerade", mac="02:00:00:00:00:01"),
        iface("br-virtio", mac="02:00:00:00:00:02"),
        iface("br-nomodel", model=None, mac="02:00:00:00:00:03"),
        iface("sriov1", binding="sriov", mac="02:00:00:00:00:04"),
        iface("e1000", model="e1000", mac="02:00:00:00:00:05"),
        iface("gone", mac="02:00:00:00:00:06", state="absent"),
        iface("podbr", mac="02:00:00:00:00:07"),
        iface("overlay", mac="02:00:00:00:00:08"),
        iface("nonad", mac="02:00:00:00:00:09"),
    ]
    networks = [
        pod_net("default"), multus_net("br-virtio", "default/vlan1"), multus_net("br-nomodel", "vlan1"),
        multus_net("sriov1", "default/vlan1"), multus_net("e1000", "default/vlan1"),
        multus_net("gone", "default/vlan1"), pod_net("podbr"), multus_net("overlay", "default/ovn1"),
        multus_net("nonad", "default/missing"),
    ]
    return vm(interfaces=interfaces, networks=networks)


def shapes_cluster(machine: dict[str, Any]) -> StaticCluster:
    return StaticCluster(vms=[machine], vmis=[vmi()], nads=[nad(), nad("ovn1", config=KUBE_OVN_CONFIG)])


def test_find_hotunpluggable_lists_bridge_virtio_multus_nics_whatever_their_network_became() -> None:
    # overlay (its NAD is now kube-ovn) and nonad (its NAD was deleted) stay removable: harvester#8293.
    machine = shapes_vm()
    assert nic_plans.find_hotunpluggable(state_of(machine, vmi())) == ["br-virtio", "br-nomodel", "overlay", "nonad"]


@pytest.mark.parametrize("name", ["overlay", "nonad"])
def test_remove_nic_of_an_interface_whose_network_is_gone_or_changed_is_planned(name: str) -> None:
    machine = shapes_vm()
    patch = ops(remove_nic(machine, vmi(), {"interfaceName": name}))
    interfaces = machine["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]
    index = [item["name"] for item in interfaces].index(name)
    assert patch[1:] == [{"op": "add", "path": f"/spec/template/spec/domain/devices/interfaces/{index}/state",
                        "value": "absent"}]


@pytest.mark.parametrize(("name", "words"), [
    ("default", "masquerade binding"), ("sriov1", "sriov binding"), ("e1000", "model e1000"),
    ("gone", "already being unplugged"), ("podbr", "not on a multus network"),
])
def test_remove_nic_refuses_what_is_not_hotunpluggable_with_409(name: str, words: str) -> None:
    machine = shapes_vm()
    result = refusal(remove_nic(machine, vmi(), {"interfaceName": name}))
    assert (result.status, result.code) == (409, nic_plans.NOT_HOTUNPLUGGABLE)
    assert words in result.message


def test_one_nic_vm_cannot_unplug_its_last_interface() -> None:
    machine = vm(interfaces=[iface("nic-1", mac="02:00:00:00:00:02")], networks=[multus_net("nic-1", "vlan1")])
    assert nic_plans.find_hotunpluggable(state_of(machine, vmi())) == []
    result = refusal(remove_nic(machine, vmi(), {"interfaceName": "nic-1"}))
    assert (result.status, result.code) == (409, nic_plans.NOT_HOTUNPLUGGABLE)
    assert "only interface" in result.message


def test_next_interface_name_skips_names_of_interfaces_and_networks() -> None:
    machine = vm(networks=[pod_net("default"), multus_net("nic-1", "vlan1"), multus_net("nic-2", "vlan1")])
    assert nic_plans.next_interface_name(machine) == "nic-3"
    assert nic_plans.next_interface_name(vm(interfaces=[], networks=[])) == "nic-1"


def test_unreadable_vm_is_refused_not_crashed() -> None:
    machine = vm()
    machine["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"] = "oops"
    result = refusal(add_nic(machine, vmi(), {"interfaceName": "x", "networkName": "vlan1"},
                                  StaticCluster(nads=[nad()])))
    assert result.status == 409
    assert "interfaces must be an array" in result.message


# -- arbitrary bodies -------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
BODIES = st.dictionaries(
    st.sampled_from(["interfaceName", "networkName", "macAddress", "other"]),
    JSON_VALUES | st.sampled_from(["dynif1", "vlan1", "default/vlan1", "nic-1", "02:00:00:00:00:09", ""]),
)


@settings(max_examples=300, deadline=None)
@given(body=BODIES)
def test_any_body_gives_a_patch_or_a_clear_refusal(body: dict[str, Any]) -> None:
    machine = vm()
    state = cluster(machine)
    for result in (add_nic(machine, vmi(), body, state), remove_nic(machine, vmi(), body)):
        if isinstance(result, ActionRefusal):
            assert result.status in (404, 409, 422)
            assert result.message
        else:
            jsonpatch.apply_patch(machine, list(result.ops))  # every patch applies to the VM it was planned for


# -- a stopped VM: nothing to hot-plug, the spec is edited ---------------------------------------


@pytest.mark.parametrize(("run_strategy", "instance"), [("Halted", None), ("Always", vmi(phase="Succeeded"))],
                         ids=["halted, no VMI", "VMI finished"])
def test_add_nic_on_a_stopped_vm_adds_to_the_spec_without_eligibility(
    run_strategy: str, instance: dict[str, Any] | None,
) -> None:
    machine = vm(run_strategy=run_strategy, printable_status="Stopped", host_devices=True)  # ineligible if running
    state = StaticCluster(vms=[machine], vmis=[instance] if instance else [], nads=[nad()])
    assert state_of(machine, instance).stopped
    patched = jsonpatch.apply_patch(machine, ops(add_nic(
        machine, instance, {"interfaceName": "dynif1", "networkName": "vlan1", "macAddress": "02:aa:bb:cc:dd:ee"},
        state)))
    assert interfaces_of(patched)[-1] == {"name": "dynif1", "model": "virtio", "bridge": {},
                                          "macAddress": "02:aa:bb:cc:dd:ee"}
    assert networks_of(patched)[-1] == {"name": "dynif1", "multus": {"networkName": "default/vlan1"}}


def test_add_nic_on_a_vm_starting_without_a_vmi_yet_is_not_a_cold_edit() -> None:
    machine = vm(run_strategy="Always", printable_status="Starting")
    assert not state_of(machine, None).stopped
    result = refusal(add_nic(machine, None, {"interfaceName": "x", "networkName": "vlan1"}, cluster(machine)))
    assert (result.status, result.code) == (409, nic_plans.NOT_ELIGIBLE)


def test_remove_nic_on_a_stopped_vm_deletes_the_interface_and_its_network() -> None:
    machine = vm(run_strategy="Halted", printable_status="Stopped")
    patch = ops(remove_nic(machine, None, {"interfaceName": "nic-1"}))
    assert patch[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "100"}
    patched = jsonpatch.apply_patch(machine, patch)
    assert [item["name"] for item in interfaces_of(patched)] == ["default"]
    assert [item["name"] for item in networks_of(patched)] == ["default"]


def test_remove_nic_on_a_stopped_vm_keeps_its_last_interface() -> None:
    machine = vm(run_strategy="Halted", interfaces=vm_interfaces()[:1], networks=[pod_net()])
    result = refusal(remove_nic(machine, None, {"interfaceName": "default"}))
    assert (result.status, result.code) == (409, nic_plans.NOT_HOTUNPLUGGABLE)
    assert result.message == "'default' is the only interface of VM default/vm1; a VM keeps at least one"


def test_remove_of_an_unknown_interface_names_those_the_vm_has() -> None:
    machine = vm()
    result = refusal(remove_nic(machine, vmi(), {"interfaceName": "nosuch"}))
    assert result.message == "VM default/vm1 has no interface named 'nosuch'; its interfaces: default, nic-1"


# -- what a plan says it does (the flow reports it as is) -------------------------------------------


def test_an_add_nic_plan_names_the_interface_mac_and_network_it_adds() -> None:
    machine = vm(networks=[pod_net("default"), multus_net("nic-1", "vlan1")])
    plan = add_nic(machine, vmi(), {"networkName": "vlan1", "macAddress": "02:AA:BB:CC:DD:EE"}, cluster(machine),
                   name_optional=True)
    assert isinstance(plan, NicPlan)
    assert (plan.interface, plan.mac, plan.network) == ("nic-2", "02:aa:bb:cc:dd:ee", "default/vlan1")
    added = interfaces_of(jsonpatch.apply_patch(machine, list(plan.ops)))[-1]
    assert (added["name"], added["macAddress"]) == (plan.interface, plan.mac)


@pytest.mark.parametrize("instance", [vmi(), None])
def test_a_remove_nic_plan_names_the_interface_its_mac_and_network_running_or_stopped(
        instance: dict[str, Any] | None) -> None:
    machine = vm() if instance is not None else vm(run_strategy="Halted", printable_status="Stopped")
    target = next(item for item in interfaces_of(machine) if item["name"] == "nic-1")
    plan = remove_nic(machine, instance, {"interfaceName": "nic-1"})
    assert isinstance(plan, NicPlan)
    assert (plan.interface, plan.mac, plan.network) == ("nic-1", target.get("macAddress", ""), "default/vlan1")


# -- hotplug_check (the subresource API's hotplugcheck) ------------------------------------------------


@pytest.mark.parametrize(("memory", "interfaces", "ports_left"), [
    ("1Gi", [iface("default", binding="masquerade", mac="02:00:00:00:00:01")], 7),  # max(8 - 1, 3)
    ("1Gi", [iface(f"nic-{n}", mac=f"02:00:00:00:00:{n:02x}") for n in range(7)], 3),  # never below 3
    ("4Gi", [iface("default", binding="masquerade", mac="02:00:00:00:00:01")], 15),  # above 2 GiB: max(16 - 1, 6)
    ("4Gi", [iface("default", binding="masquerade", mac="02:00:00:00:00:01"),
             iface("gone", mac="02:00:00:00:00:02", state="absent")], 15),  # an unplugged interface is no port
])
def test_hotplug_check_gives_kubevirts_port_room(memory: str, interfaces: list[dict[str, Any]],
                                                 ports_left: int) -> None:
    checked = nic_plans.hotplug_check(state_of(vm(interfaces=interfaces, memory=memory), vmi()))
    assert checked == nic_plans.HotplugCheck(eligible=True, reasons=(), ports_left=ports_left)


def test_hotplug_check_of_a_stopped_vm_says_why_with_codes() -> None:
    checked = nic_plans.hotplug_check(state_of(vm(run_strategy="Halted", printable_status="Stopped"), None))
    assert isinstance(checked, nic_plans.HotplugCheck)
    assert checked.eligible is False
    assert {reason.reason for reason in checked.reasons} == {"vm-not-running"}  # no VMI, and not Running
    assert all("default/vm1" in reason.message for reason in checked.reasons)


def test_hotplug_check_of_an_unreadable_vm_is_a_refusal() -> None:
    broken = vm()
    broken["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"] = "not a list"
    assert isinstance(vm_state(broken, vmi()), ActionRefusal)

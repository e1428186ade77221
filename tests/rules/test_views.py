"""Views over VM / VMI / NAD dicts: what they read, and clear errors for garbage."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nichotplug.rules.observed_macs import observed_macs_error, parse_observed_macs
from nichotplug.rules.views import (
    InterfaceView,
    InvalidObject,
    NadView,
    NetworkView,
    VmiView,
    VmView,
    parse_quantity,
)

from .rules_support import iface, multus_net, nad, pod_net, vm, vmi


def test_vm_interfaces_are_read_in_order() -> None:
    assert VmView.from_dict(vm()).interfaces == (
        InterfaceView("default", "virtio", "02:00:00:00:00:01", "masquerade", ""),
        InterfaceView("nic-1", "virtio", "02:00:00:00:00:02", "bridge", ""),
    )


def test_interface_without_model_or_mac_reads_empty() -> None:
    view = VmView.from_dict(vm(interfaces=[iface("a", model=None, state="absent")]))
    assert view.interfaces == (InterfaceView("a", "", "", "bridge", "absent"),)


def test_multus_network_with_namespace() -> None:
    assert VmView.from_dict(vm()).networks[1] == NetworkView("nic-1", "multus", "default", "vlan1")


def test_multus_network_without_namespace_means_the_vm_namespace() -> None:
    view = VmView.from_dict(vm(namespace="team-a", networks=[multus_net("nic-1", "vlan1")]))
    assert view.networks[0].nad == ("team-a", "vlan1")


def test_pod_network_has_no_nad() -> None:
    assert VmView.from_dict(vm(networks=[pod_net()])).networks[0].nad is None


def test_namespace_falls_back_to_the_request_namespace() -> None:
    obj = vm()
    del obj["metadata"]["namespace"]
    assert VmView.from_dict(obj, namespace="ns-from-request").namespace == "ns-from-request"


@pytest.mark.parametrize(
    ("spec", "running", "strategy"),
    [({"runStrategy": "Always"}, True, "Always"), ({"runStrategy": "RerunOnFailure"}, True, "RerunOnFailure"),
     ({"runStrategy": "Once"}, True, "Once"), ({"runStrategy": "Manual"}, False, "Manual"),
     ({"runStrategy": "Halted"}, False, "Halted"), ({"running": True}, True, "Always"),
     ({"running": False}, False, "Halted"), ({}, False, "")],
)
def test_run_strategy_and_running(spec: dict[str, Any], running: bool, strategy: str) -> None:
    obj = vm(run_strategy=None)
    obj["spec"].update(spec)
    view = VmView.from_dict(obj)
    assert (view.running, view.run_strategy) == (running, strategy)


def test_vm_facts_for_eligibility() -> None:
    view = VmView.from_dict(vm(node_selector={"kubernetes.io/hostname": "node1"}, host_devices=True,
                               memory="4Gi", deleting=True, printable_status="Migrating"))
    assert (view.node_selector, view.has_host_devices, view.guest_memory_bytes, view.deleting,
            view.printable_status) == ({"kubernetes.io/hostname": "node1"}, True, 4 * 2**30, True, "Migrating")


def test_guest_memory_falls_back_to_resource_requests() -> None:
    obj = vm(memory=None)
    obj["spec"]["template"]["spec"]["domain"]["resources"] = {"requests": {"memory": "3G"}}
    assert VmView.from_dict(obj).guest_memory_bytes == 3 * 10**9


def test_observed_macs_are_normalised() -> None:
    view = VmView.from_dict(vm(annotations={"harvesterhci.io/mac-address": '{"default":"BE-40-C3-88-75-7C"}'}))
    assert (view.observed_macs, view.observed_macs_error) == ({"default": "be:40:c3:88:75:7c"}, "")


def test_a_vm_without_template_has_no_interfaces() -> None:
    view = VmView.from_dict({"metadata": {"name": "shape-bad", "namespace": "default"},
                             "spec": {"runStrategy": "Halted"}})
    assert (view.interfaces, view.networks) == ((), ())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: o["spec"]["template"]["spec"]["domain"]["devices"].__setitem__("interfaces", "eth0"),
         "spec.template.spec.domain.devices.interfaces must be an array, found a string"),
        (lambda o: o["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"].append(7),
         r"spec.template.spec.domain.devices.interfaces\[2\] must be an object, found a number"),
        (lambda o: o["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0].__setitem__("macAddress", 1),
         r"interfaces\[0\].macAddress must be a string, found a number"),
        (lambda o: o["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0].pop("name"),
         r"interfaces\[0\] has no name"),
        (lambda o: o["spec"]["template"]["spec"]["networks"][1]["multus"].__setitem__("networkName", ["x"]),
         r"networks\[1\].multus.networkName must be a string, found an array"),
        (lambda o: o["metadata"].__setitem__("labels", {"a": 1}), r"metadata.labels\['a'\] must be a string"),
        (lambda o: o.__setitem__("spec", []), "spec must be an object, found an array"),
        (lambda o: o["spec"].__setitem__("running", "yes"), "spec.running must be a boolean, found a string"),
        (lambda o: o["spec"].__setitem__("template", {"spec": 3}),
         "spec.template.spec must be an object, found a number"),
    ],
)
def test_wrongly_typed_vm_fields_name_the_field(mutate: Any, message: str) -> None:
    obj = vm()
    mutate(obj)
    with pytest.raises(InvalidObject, match=message):
        VmView.from_dict(obj)


@pytest.mark.parametrize("garbage", [None, [], "vm", 3, True])
def test_a_vm_that_is_not_an_object_is_invalid(garbage: object) -> None:
    with pytest.raises(InvalidObject, match="a VirtualMachine must be a JSON object"):
        VmView.from_dict(garbage)


@pytest.mark.parametrize(
    ("text", "macs", "error"),
    [
        ("", {}, ""),
        ('{"a":"02:00:00:00:00:01","b":"nope"}', {"a": "02:00:00:00:00:01"},
         "annotation harvesterhci.io/mac-address has no valid MAC for interface(s) b"),
        ("[]", {}, "annotation harvesterhci.io/mac-address must be a JSON object of interface name to MAC"),
    ],
)
def test_observed_mac_annotation_parsing(text: str, macs: dict[str, str], error: str) -> None:
    assert parse_observed_macs(text) == (macs, error)


def test_an_annotation_nested_too_deep_to_parse_is_an_error_not_an_exception() -> None:
    macs, error = parse_observed_macs('{"default": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert (macs, error.startswith("annotation harvesterhci.io/mac-address is not valid JSON (maximum recursion")) == (
        {}, True)


def test_unparsable_observed_mac_annotation_is_an_error_not_an_exception() -> None:
    macs, error = parse_observed_macs("{not json")
    assert (macs, error.startswith("annotation harvesterhci.io/mac-address is not valid JSON")) == ({}, True)


@pytest.mark.parametrize(
    ("text", "value"),
    [("1Gi", 2**30), ("2048Mi", 2**31), ("1.5Gi", 3 * 2**29), ("2G", 2 * 10**9), ("1e9", 10**9),
     ("1073741824", 2**30), (1024, 1024), ("lots", None), (None, None), (True, None)],
)
def test_parse_quantity(text: object, value: int | None) -> None:
    assert parse_quantity(text) == value


def test_vmi_status_is_read() -> None:
    view = VmiView.from_dict(vmi(live_migratable="False", migratable_reason="DisksNotLiveMigratable",
                                 migration={"completed": False}, interface_macs={"default": "02-00-00-00-00-AA"}))
    assert view == VmiView("default", "vm1", False, "Running", True, False, "DisksNotLiveMigratable", True,
                           {"default": "02:00:00:00:00:aa"})


@pytest.mark.parametrize(("status", "value"), [("True", True), ("False", False), ("Unknown", None), (None, None)])
def test_vmi_live_migratable_condition(status: str | None, value: bool | None) -> None:
    assert VmiView.from_dict(vmi(live_migratable=status)).live_migratable is value


def test_completed_migration_is_not_in_flight() -> None:
    assert VmiView.from_dict(vmi(migration={"completed": True, "failed": True})).migration_in_flight is False


def test_vmi_with_garbage_conditions_is_invalid() -> None:
    with pytest.raises(InvalidObject, match=r"status\.conditions must be an array"):
        VmiView.from_dict({"metadata": {"name": "x"}, "status": {"conditions": {"Ready": True}}})


def test_nad_view_reads_the_cluster_network_label() -> None:
    assert NadView.from_dict(nad(cluster_network="data")).cluster_network == "data"


def test_unlabelled_nad_has_the_empty_cluster_network() -> None:
    assert NadView.from_dict(nad(cluster_network=None)).cluster_network == ""


# -- the observed-MAC annotation check validation runs on every VM write ---------------------------

_MAC_TEXT = st.sampled_from(["02:00:00:00:00:01", "02:AA:00:00:00:01", "02-00-00-00-00-01", "02:00:00:00:00:0g", ""])
_NAME = st.text(max_size=6) | st.sampled_from(["nic-1", 'a"b', "a\\b", "a\nb", "\x7f"])


@st.composite
def observed_annotations(draw: st.DrawFn) -> str:
    """As our controller writes it (compact JSON), as a person might, or damaged."""
    mapping = draw(st.dictionaries(_NAME, _MAC_TEXT | st.integers(-(2**63), 2**63 - 1) | st.none(), max_size=4))
    text = draw(st.sampled_from([orjson.dumps(mapping).decode(), json.dumps(mapping), json.dumps(mapping, indent=1)]))
    if text and draw(st.booleans()):
        at = draw(st.integers(0, len(text) - 1))
        text = text[:at] + draw(st.sampled_from(['"', ",", "}", " ", "\\", ""])) + text[at + 1:]
    return text


@given(observed_annotations())
def test_observed_macs_error_is_the_parsers_verdict(text: str) -> None:
    assert observed_macs_error(text) == parse_observed_macs(text)[1]


def test_the_controllers_spelling_parses() -> None:
    assert observed_macs_error('{"nic-1":"02:00:00:00:00:01","nic-2":"02:00:00:00:00:02"}') == ""
    assert observed_macs_error('{"nic-1":"02:00:00:00:00:01",}') != ""

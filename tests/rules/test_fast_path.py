"""The fast paths (``rules.facts``) decide exactly as the general path through the full views.

The fast path exists for speed only; a user must never see a different answer because of it. So
these tests throw generated VMs (valid, odd and broken; CREATE and UPDATE; running and stopped) at
both, validating and mutating, and require the same ``Decision``, message, warnings and patch included.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from nichotplug.rules.admission import (
    AdmissionInput,
    mutate_vm,
    mutate_vm_fully,
    new_vm_plainly_allowed,
    validate_vm,
    validate_vm_fully,
)
from nichotplug.rules.cluster import StaticCluster
from nichotplug.rules.facts import read_vm_facts
from nichotplug.webhook.fastdecode import allowed_create

from .rules_support import BRIDGE_CONFIG, iface, multus_net, nad, pod_net, vm, vmi

NAMES = ["default", "nic-1", "nic-2", "nic-3"]
# Valid MACs (some owned by other VMs, some spelled differently) and, less often, unusable ones.
GOOD_MACS = ["02:00:00:00:00:01", "02:00:00:00:00:02", "02-00-00-00-00-02", "02:AA:BB:CC:DD:EE", "02:00:00:00:00:10"]
BAD_MACS = ["03:00:00:00:00:01", "00:00:00:00:00:00", "02:00:00:00:00:0g", "02:00-00:00:00:01", ""]
MACS = GOOD_MACS + BAD_MACS
odd = st.none() | st.integers() | st.booleans() | st.lists(st.integers(), max_size=1) | st.just({"a": 1})


def _cluster() -> StaticCluster:
    """Other VMs own some of the MACs, on labelled, unlabelled and pod networks; vm-a runs."""
    other_nad = nad()
    other_nad["metadata"]["name"] = "vlan2"
    other_nad["metadata"]["labels"] = {}
    return StaticCluster(
        vms=[vm("owner-1", interfaces=[iface("nic-1", mac="02:00:00:00:00:02")],
                networks=[multus_net("nic-1", "default/vlan1")]),
             vm("owner-2", interfaces=[iface("default", binding="masquerade", mac="02:00:00:00:00:10")],
                networks=[pod_net()])],
        vmis=[vmi("vm-a")],
        nads=[nad(), other_nad, {"metadata": {"name": "vlan3", "namespace": "other"},
                                 "spec": {"config": BRIDGE_CONFIG}}],
    )


CLUSTER = _cluster()


@st.composite
def interface_items(draw: st.DrawFn) -> list[Any]:
    items: list[Any] = []
    for name in draw(st.lists(st.sampled_from(NAMES), max_size=4)):
        item: Any = iface(name, binding=draw(st.sampled_from(["bridge", "masquerade"])),
                          model=draw(st.sampled_from(["virtio", "e1000", None])),
                          mac=draw(st.sampled_from(BAD_MACS) if draw(st.integers(0, 9)) == 0
                                   else st.sampled_from([*GOOD_MACS, None])),
                          state=draw(st.sampled_from([None, "absent"])))
        if draw(st.integers(0, 9)) == 0:  # now and then a field of the wrong type, or no name
            item[draw(st.sampled_from(["name", "macAddress", "model", "state"]))] = draw(odd)
        items.append(item)
    return items


@st.composite
def network_items(draw: st.DrawFn) -> list[Any]:
    items: list[Any] = []
    for name in draw(st.lists(st.sampled_from(NAMES), max_size=4)):
        kind = draw(st.sampled_from(["pod", "multus", "multus-local", "other"]))
        if kind == "pod":
            item: Any = pod_net(name)
        elif kind == "multus":
            item = multus_net(name, draw(st.sampled_from(["default/vlan1", "default/vlan2", "other/vlan3", "x/y"])))
        elif kind == "multus-local":
            item = multus_net(name, "vlan1")
        else:
            item = {"name": name, "cni": {}}
        if draw(st.integers(0, 14)) == 0:
            if kind.startswith("multus") and draw(st.booleans()):
                item["multus"] = draw(odd | st.just({"networkName": 7}))
            else:
                item["name"] = draw(odd)
        items.append(item)
    return items


ANNOTATIONS = [
    None, "", "{}", json.dumps({"nic-1": "02:00:00:00:00:02"}), json.dumps({"nic-2": "02-00-00-00-00-0A"}),
    json.dumps({"nic-1": "bogus", "nic-2": 3}), "[1]", "{not json", '{"nic-1": NaN}', '{"a": "\\ud800"}',
    json.dumps({"nic-1": "02:00:00:00:00:02", "nic-2": "02:00:00:00:00:02"}),
]


@st.composite
def vm_objects(draw: st.DrawFn, name: str) -> Any:
    obj = vm(name, interfaces=draw(interface_items()), networks=draw(network_items()),
             run_strategy=draw(st.sampled_from(["Always", "Halted", "RerunOnFailure", "Manual", None])),
             deleting=draw(st.integers(0, 19)) == 0, memory=draw(st.sampled_from(["1Gi", "4Gi", None])))
    annotation = draw(st.sampled_from(ANNOTATIONS))
    if annotation is not None:
        obj["metadata"]["annotations"] = {"harvesterhci.io/mac-address": annotation}
    if draw(st.booleans()):
        obj["spec"]["running"] = draw(st.booleans() | odd)
    if draw(st.integers(0, 9)) == 0:  # a field elsewhere of the wrong type
        where = draw(st.sampled_from(["labels", "metadata", "spec", "status", "nodeSelector", "memory",
                                      "hostDevices", "interfaces", "networks", "runStrategy", "uid"]))
        value = draw(odd)
        template = obj["spec"]["template"]["spec"]
        targets: dict[str, tuple[Any, str]] = {
            "labels": (obj["metadata"], "labels"), "metadata": (obj, "metadata"), "spec": (obj, "spec"),
            "status": (obj, "status"), "nodeSelector": (template, "nodeSelector"),
            "memory": (template["domain"], "memory"), "hostDevices": (template["domain"]["devices"], "hostDevices"),
            "interfaces": (template["domain"]["devices"], "interfaces"), "networks": (template, "networks"),
            "runStrategy": (obj["spec"], "runStrategy"), "uid": (obj["metadata"], "uid"),
        }
        container, key = targets[where]
        container[key] = {"labels-value": 1} if where == "labels" else value
    return obj


def _same_decision(req: AdmissionInput) -> None:
    assert validate_vm(req, CLUSTER) == validate_vm_fully(req, CLUSTER)
    # The same "random" bytes for both, so generated MACs compare equal.
    assert mutate_vm(req, CLUSTER, random_bytes=_counting_bytes()) == \
        mutate_vm_fully(req, CLUSTER, random_bytes=_counting_bytes())


def _counting_bytes() -> Callable[[int], bytes]:
    draws = iter(range(1, 1000))
    return lambda size: next(draws).to_bytes(size, "big")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["vm-a", "vm-b"]), st.data())
def test_create_decides_as_the_general_path(name: str, data: st.DataObject) -> None:
    _same_decision(AdmissionInput("CREATE", "default", name, data.draw(vm_objects(name))))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["vm-a", "vm-b"]), st.data())
def test_update_decides_as_the_general_path(name: str, data: st.DataObject) -> None:
    old = data.draw(vm_objects(name))
    new = data.draw(vm_objects(name)) if data.draw(st.booleans()) else _edited(old, name, data)
    assume(not (isinstance(new, dict) and isinstance(old, dict) and new.get("spec") == old.get("spec")))
    _same_decision(AdmissionInput("UPDATE", "default", name, new, old))


def _edited(old: Any, name: str, data: st.DataObject) -> Any:
    """A realistic edit of ``old``: add, unplug, drop or re-MAC one interface."""
    new = copy.deepcopy(old)
    try:
        interfaces = new["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]
        networks = new["spec"]["template"]["spec"]["networks"]
        interfaces[0]  # an IndexError or TypeError: no interface list to edit
    except (KeyError, TypeError, IndexError):
        return data.draw(vm_objects(name))
    edit = data.draw(st.sampled_from(["add", "unplug", "replug", "drop", "mac"]))
    if edit == "add" and isinstance(networks, list):
        interfaces.append(iface("nic-9", mac=data.draw(st.sampled_from(MACS))))
        networks.append(multus_net("nic-9", data.draw(st.sampled_from(["default/vlan1", "vlan1", "default/none"]))))
    elif edit in ("unplug", "replug") and isinstance(interfaces[-1], dict):
        interfaces[-1]["state"] = "absent" if edit == "unplug" else None
    elif edit == "drop":
        interfaces.pop()
    elif isinstance(interfaces[0], dict):
        interfaces[0]["macAddress"] = data.draw(st.sampled_from(MACS))
    return new


def test_the_fast_path_reads_an_ordinary_vm() -> None:
    """The speed-up is real only if ordinary VMs take the fast path (this fails if a change loses it)."""
    facts = read_vm_facts(vm("vm-a", annotations={"harvesterhci.io/mac-address": '{"nic-1": "02:00:00:00:00:02"}'}))
    assert facts is not None
    assert (facts.ref, facts.running, [i.name for i in facts.interfaces], facts.nads) == (
        "default/vm-a", True, ["default", "nic-1"], {"default": None, "nic-1": ("default", "vlan1")})


def test_the_fast_path_leaves_odd_objects_to_the_general_path() -> None:
    odd_labels = vm("vm-a", labels={"a": 1})  # type: ignore[dict-item]
    no_name = vm("vm-a", interfaces=[{"bridge": {}}])
    deleting = vm("vm-a", deleting=True)
    assert [read_vm_facts(obj) for obj in (odd_labels, no_name, deleting, [], None)] == [None] * 5


# -- the validating webhook's msgspec route (nichotplug.webhook.fastdecode) -----------------------------


def _create_review(obj: Any, name: str) -> bytes:
    request = {"uid": "uid-1", "kind": {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachine"},
               "resource": {"group": "kubevirt.io", "version": "v1", "resource": "virtualmachines"},
               "name": name, "namespace": "default", "operation": "CREATE", "userInfo": {"username": "alice"},
               "object": obj, "oldObject": None, "dryRun": False}
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}).encode()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["vm-a", "vm-b"]), st.data())
def test_the_msgspec_route_reads_and_allows_as_the_general_path(name: str, data: st.DataObject) -> None:
    """Whatever the msgspec route allows, the general path allows (same uid, no warning)."""
    obj = data.draw(vm_objects(name))
    body = _create_review(obj, name)
    general = validate_vm_fully(AdmissionInput("CREATE", "default", name, obj), CLUSTER)
    uid = allowed_create(body, CLUSTER)
    event("msgspec route: " + ("passed on" if uid is None else "allowed"))
    event("general path: " + ("allowed" if (general.allowed, general.reason, general.warnings) == (True, "allowed", ())
                              else "denied or warned"))
    if uid is not None:
        assert uid == "uid-1"
        assert (general.allowed, general.reason, general.warnings) == (True, "allowed", ())


def test_the_msgspec_route_reads_an_ordinary_vm_and_leaves_the_rest() -> None:
    """The route is taken for an ordinary CREATE (this fails if a change loses it), not for anything else."""
    ordinary = vm("vm-b", interfaces=[iface("nic-1", mac="02:00:00:00:00:05")],
                  networks=[multus_net("nic-1", "default/vlan1")])
    assert allowed_create(_create_review(ordinary, "vm-b"), CLUSTER) == "uid-1"
    huge = _create_review(ordinary, "vm-b").replace(b'"dryRun": false', b'"dryRun": false, "x": 1e400')
    assert allowed_create(huge, CLUSTER) == "uid-1"  # the codec reads it too (codec._loads)
    taken = vm("vm-b", interfaces=[iface("nic-1", mac="02:00:00:00:00:02")], networks=[multus_net("nic-1", "vlan1")])
    body = _create_review(ordinary, "vm-b")
    for refused in (
        _create_review(taken, "vm-b"),  # a collision: the general route words the denial
        body.replace(b'"CREATE"', b'"UPDATE"'),
        body.replace(b'"username": "alice"', b'"username": 7'),
        body.replace(b'"userInfo": {"username": "alice"}', b'"userInfo": null'),
        body.replace(b'"oldObject": null', b'"oldObject": {}'),
        body.replace(b'"dryRun": false', b'"dryRun": false, "x": "\xff"'),  # not UTF-8
        body.replace(b'"dryRun": false', b'"dryRun": false, "x": ' + b"[" * 2000 + b"]" * 2000),
        body[:-1],
    ):
        assert allowed_create(refused, CLUSTER) is None, refused[-120:]


OBSERVED = '{"nic-0":"02:00:00:00:00:05"}'


@pytest.mark.parametrize(("macs", "observed", "expected"), [
    ([], "", True),
    (["02:00:00:00:00:05", "02:00:00:00:00:06"], "", True),
    (["02:00:00:00:00:05"], OBSERVED, True),
    (["02:00:00:00:00:05"], '{"nic-0": "02-AA-00-00-00-05"}', True),  # any spelling parses
    (["02:00:00:00:00:05"], '{"nic-0": "nope"}', False),  # allowed, but with a warning
    (["02:00:00:00:00:05"], "not json", False),
    (["02:00:00:00:00:05", "02:00:00:00:00:02"], "", False),  # owner-1 uses it: the full rules judge the scope
    (["02:00:00:00:00:10"], "", False),  # owner-2's, on the pod network
    (["02:00:00:00:00:05", "02:00:00:00:00:05"], "", False),
    (["02:AA:BB:CC:DD:EE"], "", False),  # not the normal form: the full rules normalise it
])
def test_new_vm_plainly_allowed(macs: list[str], observed: str, expected: bool) -> None:
    assert new_vm_plainly_allowed(macs, observed, CLUSTER) is expected
    if expected:  # what it promises: the full rules allow a new VM with these MACs, without a warning
        annotations = {"harvesterhci.io/mac-address": observed} if observed else {}
        obj = vm("vm-new", interfaces=[iface(f"nic-{i}", mac=mac) for i, mac in enumerate(macs)],
                 networks=[multus_net(f"nic-{i}", "default/vlan1") for i in range(len(macs))],
                 annotations=annotations)
        general = validate_vm_fully(AdmissionInput("CREATE", "default", "vm-new", obj), CLUSTER)
        assert (general.allowed, general.reason, general.warnings) == (True, "allowed", ())

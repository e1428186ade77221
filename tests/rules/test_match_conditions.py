"""The webhooks' match conditions leave out only writes the rules have nothing to say about.

kube-apiserver does not call a webhook for a write that fails one of its ``matchConditions``
(``webhook/registration.py``): for validation that write is let through unchecked, for mutation it is
stored unpatched. So every write the conditions leave out must be one the rules allow as it is (and
mutation would not patch). These tests generate UPDATEs of schema-valid VMs that change fields inside
and outside ``registration.JUDGED_FIELDS``, in clusters where the VM runs or not, with colliding MACs
and hot-plug-relevant state, evaluate the registered CEL with the engine the in-process API server
uses, and require: no condition fails to evaluate (the has() guards), and whenever a webhook is left
out, its rules agree there was nothing to do. A rule that starts reading a field outside the list
(say, a label on every UPDATE) fails here.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nichotplug.rules.admission import AdmissionInput, mutate_vm, validate_vm
from nichotplug.rules.cluster import StaticCluster
from nichotplug.testing.admission import evaluate_condition
from nichotplug.webhook.registration import JUDGED_FIELDS, MUTATING_WEBHOOK, VALIDATING_WEBHOOK

from .rules_support import iface, multus_net, nad, pod_net, vm, vmi

NAME = "vm-a"
NAMES = ["default", "nic-1", "nic-2"]
MACS = ["02:00:00:00:00:01", "02:00:00:00:00:02", "02-00-00-00-00-10", "02:00:00:00:00:33",
        "03:00:00:00:00:01", "00:00:00:00:00:00", "not-a-mac", ""]
ANNOTATIONS = [None, "", "{}", json.dumps({"nic-1": "02:00:00:00:00:02"}), json.dumps({"nic-2": "bogus"}),
               "{not json"]
GUEST_CLUSTER = {"harvesterhci.io/creator": "docker-machine-driver-harvester"}
PINNED = {"kubernetes.io/hostname": "node-1"}


def _clusters() -> dict[str, StaticCluster]:
    """The VM runs (stable or migrating), is starting, has stopped or has no VMI; other VMs hold MACs."""
    others = [vm("owner-1", interfaces=[iface("nic-1", mac="02:00:00:00:00:02")],
                 networks=[multus_net("nic-1", "default/vlan1")]),
              vm("owner-2", interfaces=[iface("default", binding="masquerade", mac="02:00:00:00:00:10")],
                 networks=[pod_net()])]
    nads = [nad(), nad("overlay", config=json.dumps({"cniVersion": "0.3.1", "type": "kube-ovn"}))]
    vmis = {"running": [vmi(NAME)], "migrating": [vmi(NAME, migration={"completed": False})],
            "not-migratable": [vmi(NAME, live_migratable="False", migratable_reason="disk")],
            "starting": [vmi(NAME, phase="Scheduling", ready=False)], "stopped": [vmi(NAME, phase="Succeeded")],
            "no-vmi": []}
    return {state: StaticCluster(vms=others, vmis=found, nads=nads) for state, found in vmis.items()}


CLUSTERS = _clusters()


@st.composite
def interfaces(draw: st.DrawFn) -> list[dict[str, Any]]:
    return [iface(name, binding=draw(st.sampled_from(["bridge", "masquerade"])),
                  model=draw(st.sampled_from(["virtio", "e1000", None])),
                  mac=draw(st.sampled_from([*MACS, None, None])), state=draw(st.sampled_from([None, None, "absent"])))
            for name in draw(st.lists(st.sampled_from(NAMES), max_size=3, unique=True))]


@st.composite
def networks(draw: st.DrawFn) -> list[dict[str, Any]]:
    return [pod_net(name) if draw(st.booleans()) else
            multus_net(name, draw(st.sampled_from(["default/vlan1", "vlan1", "default/overlay", "default/gone"])))
            for name in draw(st.lists(st.sampled_from(NAMES), max_size=3, unique=True))]


def _template(obj: dict[str, Any]) -> dict[str, Any]:
    template: dict[str, Any] = obj["spec"]["template"]["spec"]
    return template


@st.composite
def stored_vms(draw: st.DrawFn) -> dict[str, Any]:
    """A VM as the API server stores it: schema-valid, each optional field sometimes missing."""
    obj = vm(NAME, interfaces=draw(interfaces()), networks=draw(networks()),
             run_strategy=draw(st.sampled_from(["Always", "Halted", "RerunOnFailure", "Manual", None])),
             labels=draw(st.sampled_from([{}, {"team": "a"}, GUEST_CLUSTER])),
             printable_status=draw(st.sampled_from(["Running", "Stopped", "Migrating", None])),
             node_selector=draw(st.sampled_from([None, {}, PINNED])), host_devices=draw(st.booleans()),
             memory=draw(st.sampled_from(["1Gi", "4Gi", None])))
    annotation = draw(st.sampled_from(ANNOTATIONS))
    if annotation is not None:
        obj["metadata"]["annotations"] = {"harvesterhci.io/mac-address": annotation}
    for missing in draw(st.lists(st.sampled_from(["interfaces", "networks", "devices", "template"]), max_size=1)):
        _remove(obj, missing)
    return obj


def _remove(obj: dict[str, Any], field: str) -> None:
    """Leave a field out altogether (Kubernetes omits empty ones), as the has() guards must allow."""
    spec = obj["spec"]
    if field == "template":
        spec.pop("template", None)
    elif "template" in spec and field == "networks":
        _template(obj).pop("networks", None)
    elif "template" in spec and field == "devices":
        _template(obj)["domain"].pop("devices", None)
    elif "template" in spec and "devices" in _template(obj)["domain"]:
        _template(obj)["domain"]["devices"].pop("interfaces", None)


def _metadata(obj: dict[str, Any]) -> dict[str, Any]:
    metadata: dict[str, Any] = obj["metadata"]
    return metadata


# Edits of fields outside JUDGED_FIELDS: what users, KubeVirt and Harvester write every day.
def _outside_edits(draw: st.DrawFn, obj: dict[str, Any]) -> str:
    edit = draw(st.sampled_from(["label", "guest-label", "other-annotation", "finalizer", "run-strategy",
                                 "running", "node-selector", "host-devices", "memory", "cpu", "status",
                                 "template-labels", "deleting"]))
    metadata, spec = _metadata(obj), obj["spec"]
    template = _template(obj) if "template" in spec else None
    if edit == "label":
        metadata.setdefault("labels", {})["team"] = draw(st.sampled_from(["b", "c"]))
    elif edit == "guest-label":
        metadata["labels"] = {} if metadata.get("labels") == GUEST_CLUSTER else dict(GUEST_CLUSTER)
    elif edit == "other-annotation":
        metadata.setdefault("annotations", {})["example.com/owner"] = "ops"
    elif edit == "finalizer":
        metadata["finalizers"] = draw(st.sampled_from([[], ["kubevirt.io/virtualMachineControllerFinalize"]]))
    elif edit == "run-strategy":
        spec["runStrategy"] = draw(st.sampled_from(["Always", "Halted", "Manual", "RerunOnFailure"]))
    elif edit == "running":
        spec.pop("runStrategy", None)
        spec["running"] = draw(st.booleans())
    elif edit == "deleting":
        metadata["deletionTimestamp"] = "2026-11-28T06:00:00Z"
    elif template is not None:
        _edit_template(draw, edit, template, obj)
    return edit


def _edit_template(draw: st.DrawFn, edit: str, template: dict[str, Any], obj: dict[str, Any]) -> None:
    domain = template.setdefault("domain", {})
    if edit == "node-selector":
        template["nodeSelector"] = {} if template.get("nodeSelector") == PINNED else dict(PINNED)
    elif edit == "host-devices":
        devices = domain.setdefault("devices", {})
        devices["hostDevices"] = [] if devices.get("hostDevices") else [{"name": "gpu0", "deviceName": "x/y"}]
    elif edit == "memory":
        domain["memory"] = {"guest": draw(st.sampled_from(["2Gi", "8Gi"]))}
    elif edit == "cpu":
        domain["cpu"] = {"cores": draw(st.integers(1, 8))}
    elif edit == "status":
        obj["status"] = {"printableStatus": draw(st.sampled_from(["Running", "Stopped", "Migrating"]))}
    else:
        obj["spec"]["template"].setdefault("metadata", {})["labels"] = {"example.com/x": "1"}


# Edits of the judged fields: the conditions must send these (the tests also see how rules decide them).
def _judged_edits(draw: st.DrawFn, obj: dict[str, Any]) -> str:
    edit = draw(st.sampled_from(["interfaces", "networks", "annotation", "drop-interfaces", "drop-networks"]))
    if "template" not in obj["spec"] and edit != "annotation":
        return "none"
    if edit == "interfaces":
        _template(obj)["domain"].setdefault("devices", {})["interfaces"] = draw(interfaces())
    elif edit == "networks":
        _template(obj)["networks"] = draw(networks())
    elif edit == "annotation":
        _metadata(obj).setdefault("annotations", {})["harvesterhci.io/mac-address"] = \
            draw(st.sampled_from([a for a in ANNOTATIONS if a is not None]))
    else:
        _remove(obj, edit.removeprefix("drop-"))
    return edit


@st.composite
def updates(draw: st.DrawFn, *, judged: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    old = draw(stored_vms())
    new = copy.deepcopy(old)
    for _ in range(draw(st.integers(1, 4))):
        event(f"edit {_outside_edits(draw, new)}")
    if judged:
        event(f"judged edit {_judged_edits(draw, new)}")
    return old, new


def _called(webhook: Any, operation: str, new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    variables = {"object": new, "oldObject": old, "request": {"operation": operation}}
    outcomes = [evaluate_condition(condition["expression"], variables) for condition in webhook.match_conditions]
    errors = [outcome for outcome in outcomes if isinstance(outcome, str)]
    assert errors == [], f"a match condition failed to evaluate on a schema-valid VM: {errors}"
    return all(outcomes)


def _check_left_out_writes_need_nothing(operation: str, new: dict[str, Any], old: dict[str, Any] | None,
                                        state: str) -> None:
    cluster = CLUSTERS[state]
    req = AdmissionInput(operation, "default", NAME, new, old)
    if not _called(VALIDATING_WEBHOOK, operation, new, old):
        event("validation left out")
        decision = validate_vm(req, cluster)
        assert decision.allowed, f"validation left out a write its rules refuse: {decision.message}"
    if not _called(MUTATING_WEBHOOK, operation, new, old):
        event("mutation left out")
        decision = mutate_vm(req, cluster)
        assert decision.allowed
        assert not decision.patch, f"mutation left out a write it patches: {decision.patch}"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(updates(judged=False), st.sampled_from(sorted(CLUSTERS)))
def test_updates_outside_the_judged_fields_are_allowed_as_they_are(
        update: tuple[dict[str, Any], dict[str, Any]], state: str) -> None:
    old, new = update
    if "deletionTimestamp" not in _metadata(new):
        assert not _called(VALIDATING_WEBHOOK, "UPDATE", new, old), "an UPDATE with nothing to judge was sent"
    _check_left_out_writes_need_nothing("UPDATE", new, old, state)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(updates(judged=True), st.sampled_from(sorted(CLUSTERS)))
def test_updates_of_judged_fields_left_out_are_allowed_as_they_are(
        update: tuple[dict[str, Any], dict[str, Any]], state: str) -> None:
    old, new = update
    _check_left_out_writes_need_nothing("UPDATE", new, old, state)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stored_vms(), st.sampled_from(sorted(CLUSTERS)))
def test_every_create_is_validated_and_mutation_is_left_out_only_when_every_interface_has_a_mac(
        new: dict[str, Any], state: str) -> None:
    assert _called(VALIDATING_WEBHOOK, "CREATE", new, None)
    _check_left_out_writes_need_nothing("CREATE", new, None, state)


# -- examples: what the properties above are about, one at a time ------------------------------------

def _hotplug(obj: dict[str, Any]) -> dict[str, Any]:
    new = copy.deepcopy(obj)
    _template(new)["domain"]["devices"]["interfaces"].append(iface("nic-2", mac="02:00:00:00:00:33"))
    _template(new)["networks"].append(multus_net("nic-2", "default/vlan1"))
    return new


def test_a_hotplug_into_an_ineligible_vm_is_sent_and_refused() -> None:
    """Eligibility reads labels, nodeSelector and host devices, but only of an edit that plugs: one
    that changes the interfaces, which the conditions send."""
    pinned = vm(NAME, node_selector=PINNED)
    new = _hotplug(pinned)
    assert _called(VALIDATING_WEBHOOK, "UPDATE", new, pinned)
    assert validate_vm(AdmissionInput("UPDATE", "default", NAME, new, pinned), CLUSTERS["running"]).reason == \
        "vm-not-migratable"


def test_pinning_a_vm_alone_is_left_out_and_allowed() -> None:
    old = vm(NAME)
    pinned = vm(NAME, node_selector=PINNED, labels=GUEST_CLUSTER, host_devices=True)
    assert not _called(VALIDATING_WEBHOOK, "UPDATE", pinned, old)
    assert validate_vm(AdmissionInput("UPDATE", "default", NAME, pinned, old), CLUSTERS["running"]).allowed


def test_a_vm_whose_mac_another_vm_holds_can_still_be_labelled_started_and_stopped() -> None:
    """A collision that predates the webhook: only writes that touch the MACs are judged."""
    old = vm(NAME, interfaces=[iface("nic-1", mac="02:00:00:00:00:02")], networks=[multus_net("nic-1", "vlan1")],
             run_strategy="Halted")
    for change in ({"labels": {"team": "b"}}, {"runStrategy": "Always"}):
        new = copy.deepcopy(old)
        if "labels" in change:
            _metadata(new)["labels"] = change["labels"]
        else:
            new["spec"]["runStrategy"] = change["runStrategy"]
        assert not _called(VALIDATING_WEBHOOK, "UPDATE", new, old)
        assert validate_vm(AdmissionInput("UPDATE", "default", NAME, new, old), CLUSTERS["no-vmi"]).allowed


@pytest.mark.parametrize("missing", ["interfaces", "networks", "devices", "template"])
def test_a_missing_field_is_its_empty_value_not_an_error(missing: str) -> None:
    old = vm(NAME, interfaces=[], networks=[])
    new = copy.deepcopy(old)
    _remove(new, missing)
    assert not _called(VALIDATING_WEBHOOK, "UPDATE", new, old)  # [] and absent read alike, as in the rules
    assert not _called(MUTATING_WEBHOOK, "UPDATE", new, old)


def test_each_judged_field_alone_sends_the_update() -> None:
    old = vm(NAME, annotations={"harvesterhci.io/mac-address": "{}"})
    edits = {
        "spec.template.spec.domain.devices.interfaces": lambda obj: _template(obj)["domain"]["devices"].update(
            interfaces=[iface("default", binding="masquerade", mac="02:00:00:00:00:09")]),
        "spec.template.spec.networks": lambda obj: _template(obj).update(networks=[pod_net("default")]),
        "metadata.annotations['harvesterhci.io/mac-address']": lambda obj: _metadata(obj).update(annotations={}),
    }
    assert sorted(edits) == sorted(field.dotted for field in JUDGED_FIELDS)
    for edit in edits.values():
        new = copy.deepcopy(old)
        edit(new)
        assert _called(VALIDATING_WEBHOOK, "UPDATE", new, old)


@pytest.mark.parametrize(("mac", "called"), [(None, True), ("", True), ("02:00:00:00:00:09", False)])
def test_mutation_is_called_only_when_an_interface_has_no_mac(mac: str | None, called: bool) -> None:
    new = vm(NAME, interfaces=[iface("default", binding="masquerade", mac="02:00:00:00:00:01"),
                               iface("nic-1", mac=mac)])
    assert _called(MUTATING_WEBHOOK, "CREATE", new, None) is called
    assert _called(MUTATING_WEBHOOK, "UPDATE", new, vm(NAME)) is called

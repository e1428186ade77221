"""The rules against AdmissionReviews recorded from a real kube-apiserver (shared fixtures folder).

Skipped when the fixtures folder (outside the repository) is absent.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest

from nichotplug.rules.admission import AdmissionInput, mutate_vm, validate_vm
from nichotplug.rules.cluster import StaticCluster
from nichotplug.rules.decision import REASONS
from nichotplug.testing.fixtures import SHARED_FIXTURES

from .rules_support import nad, vmi

FIXTURES = SHARED_FIXTURES / "admission"
pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason="recorded admission fixtures are not on this machine")

VM_REVIEWS = sorted(p.name for p in FIXTURES.glob("*-virtualmachines-*.json")) if FIXTURES.is_dir() else []
NADS = [nad("vlan1", cluster_network="mgmt"), nad("vmnet1", cluster_network="mgmt")]


def request_of(name: str) -> dict[str, Any]:
    request: dict[str, Any] = json.loads((FIXTURES / name).read_text())["request"]
    return request


def admission_input(request: dict[str, Any]) -> AdmissionInput:
    return AdmissionInput(request["operation"], request.get("namespace", ""), request.get("name", ""),
                          request.get("object"), request.get("oldObject"),
                          request.get("userInfo", {}).get("username", ""), bool(request.get("dryRun")))


def running(name: str) -> StaticCluster:
    return StaticCluster(vmis=[vmi(name)], nads=NADS)


def running_request(name: str) -> AdmissionInput:
    """The recorded request with the VM status KubeVirt shows for a running VM (the recording had none)."""
    request = copy.deepcopy(request_of(name))
    for key in ("object", "oldObject"):
        request[key]["status"] = {"printableStatus": "Running"}
    return admission_input(request)


@pytest.mark.parametrize("name", VM_REVIEWS)
def test_every_recorded_vm_review_gets_a_known_decision_from_both_webhooks(name: str) -> None:
    req = admission_input(request_of(name))
    cluster = StaticCluster(nads=NADS)
    assert {mutate_vm(req, cluster).reason, validate_vm(req, cluster).reason} <= set(REASONS)


def test_create_without_macs_is_patched_so_every_interface_has_one() -> None:
    request = request_of("001-mutate-CREATE-virtualmachines-mut-vm1.json")
    decision = mutate_vm(admission_input(request), StaticCluster(nads=NADS))
    patched = jsonpatch.apply_patch(request["object"], list(decision.patch))
    interfaces = patched["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]
    assert [bool(item.get("macAddress")) for item in interfaces] == [True, True]


def test_recorded_create_with_macs_is_allowed() -> None:
    decision = validate_vm(admission_input(request_of("002-validate-CREATE-virtualmachines-mut-vm1.json")),
                           StaticCluster(nads=NADS))
    assert (decision.allowed, decision.reason) == (True, "allowed")


def test_kubectl_edit_adding_an_interface_to_a_running_vm_patches_only_the_new_one() -> None:
    decision = mutate_vm(admission_input(request_of("003-mutate-UPDATE-virtualmachines-mut-vm1.json")),
                         running("mut-vm1"))
    assert [op["path"] for op in decision.patch] == ["/spec/template/spec/domain/devices/interfaces/2/macAddress"]


def test_kubectl_patch_adding_an_interface_on_a_network_without_namespace_is_patched() -> None:
    decision = mutate_vm(admission_input(request_of("005-mutate-UPDATE-virtualmachines-mut-vm1.json")),
                         running("mut-vm1"))
    assert [op["path"] for op in decision.patch] == ["/spec/template/spec/domain/devices/interfaces/3/macAddress"]


def test_recorded_hotplug_is_allowed_when_the_vm_runs_and_is_stable() -> None:
    req = running_request("004-validate-UPDATE-virtualmachines-mut-vm1.json")
    assert validate_vm(req, running("mut-vm1")).reason == "hotplug-allowed"


def test_recorded_hotplug_is_refused_when_the_vm_has_no_vmi_yet() -> None:
    decision = validate_vm(admission_input(request_of("004-validate-UPDATE-virtualmachines-mut-vm1.json")),
                           StaticCluster(nads=NADS))
    assert (decision.code, decision.reason) == (403, "vm-not-running")


def test_recorded_unplug_is_allowed_when_the_vm_runs_and_is_stable() -> None:
    req = running_request("008-validate-UPDATE-virtualmachines-mut-vm1.json")
    assert validate_vm(req, running("mut-vm1")).reason == "hotplug-allowed"


def test_recorded_halt_is_a_cold_edit() -> None:
    decision = validate_vm(admission_input(request_of("010-validate-UPDATE-virtualmachines-mut-vm1.json")),
                           StaticCluster(nads=NADS))
    assert decision.reason == "allowed"


def test_kubectl_apply_that_drops_macs_of_a_running_vm_gets_them_back() -> None:
    decision = mutate_vm(admission_input(request_of("015-mutate-UPDATE-virtualmachines-mut-vm2.json")),
                         running("mut-vm2"))
    assert [op["value"] for op in decision.patch] == ["02:00:00:00:00:01", "02:00:00:00:00:02"]


def test_recorded_create_colliding_with_an_existing_vm_is_denied() -> None:
    existing = request_of("002-validate-CREATE-virtualmachines-mut-vm1.json")["object"]
    decision = validate_vm(admission_input(request_of("024-validate-CREATE-virtualmachines-mut-vm3.json")),
                           StaticCluster(vms=[existing], nads=NADS))
    assert decision.message == ("VM default/mut-vm3: mac address 02:00:00:00:00:01 of interface default is already "
                                "used by default/mut-vm1 interface default on the pod network or unlabelled networks")


def test_recorded_delete_is_not_judged() -> None:
    decision = validate_vm(admission_input(request_of("034-validate-DELETE-virtualmachines-warn-vm5.json")),
                           StaticCluster(nads=NADS))
    assert (decision.allowed, decision.reason) == (True, "not-judged")


def test_recorded_vm_without_template_is_allowed() -> None:
    decision = validate_vm(admission_input(request_of("044-mutate-CREATE-virtualmachines-shape-bad.json")),
                           StaticCluster(nads=NADS))
    assert decision.allowed

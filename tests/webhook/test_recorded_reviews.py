"""Every AdmissionReview a real kube-apiserver v1.36 sent, answered over real TLS.

The answer must be one the API server accepts (uid echoed, a JSON Patch that
applies to the object it was computed for) and the decision SPEC.md asks for,
given a cluster holding the VM ``shape-vm`` (MAC 02:00:00:00:00:11 on the pod
network), the NADs the recorded VMs use and a running VMI for ``mut-vm1``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import pytest

from nichotplug.rules.cluster import StaticCluster
from nichotplug.rules.mac import check_unicast_mac
from nichotplug.service import build_webhook_app

from .webhook_support import FIXTURES, ServeFn, check_review, decode_patch

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason="recorded admission fixtures not present")

# Mutation: which interfaces the patch must give a MAC, by file.
ALL_MISSING = "every interface without a MAC gets one"
NEW_ONLY = "only the interface added by this update gets one"
RESTORED = "interfaces whose MAC this update drops get their old MAC back (the guest keeps its address)"
UNTOUCHED = "allowed, no patch"
MUTATION_EXPECTED: dict[str, tuple[str, str]] = {
    "001": (ALL_MISSING, "kubectl create of mut-vm1 without MACs"),
    "003": (NEW_ONLY, "kubectl edit adds dynif1 to the running mut-vm1"),
    "005": (NEW_ONLY, "JSON patch adds dynif2 to the running mut-vm1"),
    "007": (UNTOUCHED, "state: absent adds no interface"),
    "009": (UNTOUCHED, "runStrategy Halted; every interface already has a MAC"),
    "011": (UNTOUCHED, "status subresource: not judged"),
    "013": (ALL_MISSING, "kubectl apply creates mut-vm2 without MACs"),
    "015": (RESTORED, "kubectl apply of a manifest without MACs onto the running mut-vm2"),
    "017": (UNTOUCHED, "server-side apply, MACs kept"),
    "019": (UNTOUCHED, "server-side apply, MACs kept"),
    "021": (RESTORED, "kubectl apply of a manifest without MACs onto the running mut-vm2"),
    "023": (ALL_MISSING, "dry-run create still gets MACs, so the dry run shows what a create does"),
    "025": (ALL_MISSING, "deny-vm4 created without MACs"),
    "027": (ALL_MISSING, "warn-vm5 created without MACs"),
    "029": (UNTOUCHED, "a VMI: not judged"),
    "031": (UNTOUCHED, "a VMI: not judged"),
    "033": (UNTOUCHED, "DELETE: not judged"),
    "035": (UNTOUCHED, "shape-vm has its MAC"),
    "037": (UNTOUCHED, "shape-vm has its MAC"),
    "039": (UNTOUCHED, "start of shape-vm, MAC present"),
    "040": (UNTOUCHED, "label change only"),
    "042": (UNTOUCHED, "label change only"),
    "044": (UNTOUCHED, "shape-bad has no template, so no interface to give a MAC"),
    "045": (UNTOUCHED, "shape-dry has its MAC"),
    "047": (UNTOUCHED, "deny-shape has a MAC (a colliding one, which is validation's business)"),
    "049": (UNTOUCHED, "warn-shape has its MAC"),
    "051": (UNTOUCHED, "start of shape-vm, MAC present"),
    "053": (UNTOUCHED, "DELETE: not judged"),
}

# Validation: (allowed, code of the denial), by file.
VALIDATION_EXPECTED: dict[str, tuple[bool, int | None, str]] = {
    "002": (True, None, "MACs unique in the cluster"),
    "004": (False, 403, "hot-plug into mut-vm1, whose status.printableStatus is not Running: not eligible"),
    "006": (False, 403, "hot-plug into mut-vm1, not eligible"),
    "008": (False, 403, "hot-unplug from mut-vm1, not eligible"),
    "010": (True, None, "stopping the VM is a cold edit"),
    "012": (True, None, "status subresource: not judged"),
    "014": (True, None, "MACs unique"),
    "016": (True, None, "no interface change"),
    "018": (True, None, "no interface change"),
    "020": (True, None, "no interface change"),
    "022": (True, None, "no interface change"),
    "024": (True, None, "dry-run create, MACs unique"),
    "026": (True, None, "no MACs to collide (the recorder denied it, our rules do not)"),
    "028": (True, None, "no MACs to collide"),
    "030": (True, None, "a VMI: not judged"),
    "032": (True, None, "a VMI: not judged"),
    "034": (True, None, "DELETE: not judged"),
    "036": (True, None, "shape-vm keeps its own MAC"),
    "038": (True, None, "shape-vm keeps its own MAC"),
    "041": (True, None, "shape-vm keeps its own MAC"),
    "043": (True, None, "shape-vm keeps its own MAC"),
    "046": (False, 409, "shape-dry uses shape-vm's MAC on the pod network (dry run is still judged)"),
    "048": (False, 409, "deny-shape uses shape-vm's MAC on the pod network"),
    "050": (False, 409, "warn-shape uses shape-vm's MAC on the pod network"),
    "052": (True, None, "starting shape-vm changes no interface"),
    "054": (True, None, "DELETE: not judged"),
}


def _load(path: Path) -> dict[str, Any]:
    review: dict[str, Any] = json.loads(path.read_bytes())
    return review


def _bridge_nad(name: str) -> dict[str, Any]:
    config = {"cniVersion": "0.3.1", "name": name, "type": "bridge", "bridge": "mgmt-br", "vlan": 1}
    return {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {
            "name": name, "namespace": "default",
            "labels": {"network.harvesterhci.io/type": "L2VlanNetwork",
                       "network.harvesterhci.io/clusternetwork": "mgmt"},
        },
        "spec": {"config": json.dumps(config)},
    }


def _running_vmi(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": "default"},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "LiveMigratable", "status": "True"}],
        },
    }


def _fixture_cluster() -> StaticCluster:
    shape_vm = _load(FIXTURES / "036-validate-CREATE-virtualmachines-shape-vm.json")["request"]["object"]
    return StaticCluster(
        vms=[shape_vm], vmis=[_running_vmi("mut-vm1")], nads=[_bridge_nad("vlan1"), _bridge_nad("vmnet1")]
    )


def _files(kind: str) -> list[Path]:
    return sorted(FIXTURES.glob(f"*-{kind}-*.json")) if FIXTURES.is_dir() else []


def _interfaces(obj: dict[str, Any]) -> list[dict[str, Any]]:
    interfaces: list[dict[str, Any]] = obj["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]
    return interfaces


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> dict[str, Any]:
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
        assert response.status == 200, await response.text()
        answer: dict[str, Any] = await response.json()
        return answer


@pytest.fixture
async def base_url(serve_tls: ServeFn) -> str:
    server = await serve_tls(build_webhook_app(_fixture_cluster()))
    # The certificate names 127.0.0.1 and the client verifies it: a real TLS round trip.
    return f"https://127.0.0.1:{server.port}"


def test_every_recorded_file_has_an_expectation() -> None:
    recorded = {path.name[:3] for path in _files("mutate")} | {path.name[:3] for path in _files("validate")}
    assert recorded == set(MUTATION_EXPECTED) | set(VALIDATION_EXPECTED)


@pytest.mark.parametrize("path", _files("mutate"), ids=lambda path: path.name)
async def test_mutation_answers_recorded_review(
    path: Path, base_url: str, session: aiohttp.ClientSession
) -> None:
    body = path.read_bytes()  # noqa: ASYNC240 - a small local fixture file
    request = json.loads(body)["request"]
    expected, why = MUTATION_EXPECTED[path.name[:3]]
    answer = await _post(session, f"{base_url}/v1/webhook/mutation", body)
    response = check_review(answer, uid=request["uid"], webhook="mutation")
    assert response["allowed"] is True, why
    if expected == UNTOUCHED:
        assert "patch" not in response, why
        return
    ops = decode_patch(response["patch"])
    assert all(op["op"] == "add" for op in ops), "MACs are added, never replaced"
    patched = jsonpatch.apply_patch(request["object"], ops)
    before, after = _interfaces(request["object"]), _interfaces(patched)
    missing = [i for i, interface in enumerate(before) if not interface.get("macAddress")]
    if expected == NEW_ONLY:
        old_names = {interface["name"] for interface in _interfaces(request["oldObject"])}
        missing = [i for i in missing if before[i]["name"] not in old_names]
    assert sorted(op["path"] for op in ops) == sorted(
        f"/spec/template/spec/domain/devices/interfaces/{i}/macAddress" for i in missing
    ), why
    macs = [after[i]["macAddress"] for i in missing]
    if expected == RESTORED:
        old_macs = {interface["name"]: interface["macAddress"] for interface in _interfaces(request["oldObject"])}
        assert macs == [old_macs[before[i]["name"]] for i in missing], why
    assert len(set(macs)) == len(macs), "two interfaces were given the same MAC"
    for mac in macs:
        assert check_unicast_mac(mac) == mac
        assert int(mac[:2], 16) & 0x03 == 0x02, f"{mac} is not a locally administered unicast MAC"


@pytest.mark.parametrize("path", _files("validate"), ids=lambda path: path.name)
async def test_validation_answers_recorded_review(
    path: Path, base_url: str, session: aiohttp.ClientSession
) -> None:
    body = path.read_bytes()  # noqa: ASYNC240 - a small local fixture file
    request = json.loads(body)["request"]
    allowed, code, why = VALIDATION_EXPECTED[path.name[:3]]
    answer = await _post(session, f"{base_url}/v1/webhook/validation", body)
    response = check_review(answer, uid=request["uid"], webhook="validation")
    assert response["allowed"] is allowed, f"{why}: {response}"
    if not allowed:
        assert response["status"]["code"] == code, why
        assert request["name"] in response["status"]["message"]
    if code == 409:
        message = response["status"]["message"]
        assert "shape-vm" in message, message
        assert "02:00:00:00:00:11" in message, message


async def test_mutated_create_passes_validation(base_url: str, session: aiohttp.ClientSession) -> None:
    """What the API server does: apply our patch, then send the result to the validating webhook."""
    review = _load(FIXTURES / "001-mutate-CREATE-virtualmachines-mut-vm1.json")
    answer = await _post(session, f"{base_url}/v1/webhook/mutation", json.dumps(review).encode())
    review["request"]["object"] = jsonpatch.apply_patch(
        review["request"]["object"], decode_patch(answer["response"]["patch"])
    )
    answer = await _post(session, f"{base_url}/v1/webhook/validation", json.dumps(review).encode())
    assert check_review(answer, uid=review["request"]["uid"], webhook="validation")["allowed"] is True

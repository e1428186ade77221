"""The action API end to end: real HTTPS to our aiohttp app, real HTTPS from it to a Kubernetes API
server (the in-process one, and the real one for tests that need no fault injection), with the
caller's token, RBAC, JSON Patch, admission webhooks and faults."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio.client import AdmissionregistrationV1Api, ApiClient, CustomObjectsApi
from prometheus_client import REGISTRY

from nichotplug.certs import CertBundle, server_ssl_context
from nichotplug.rules import nic_plans as codes

from .conftest import ActionClient, StartActions
from .objects import (
    KUBE_OVN_CONFIG,
    NETWORK_GONE,
    create_nad,
    create_running_vm,
    events_about,
    grant,
    iface,
    migrations,
    multus_net,
    nad,
    pod_net,
    read_vm,
    spec_interfaces,
    spec_networks,
    take_network_away,
    vm,
    vmi,
    wait_for,
)

# The action API's behaviour holds on the real kube-apiserver too (tests naming `apiserver` inject faults).
pytestmark = pytest.mark.both_servers

ERROR_KEYS = {"type", "status", "code", "message"}


def assert_error(answer: Any, status: int, code: str, words: str = "") -> None:
    assert answer.status == status, answer.body
    assert set(answer.body) == ERROR_KEYS
    assert answer.body["type"] == "error"
    assert (answer.body["status"], answer.body["code"]) == (status, code)
    assert words in answer.body["message"]


@pytest.fixture
async def running_vm(api_client: ApiClient) -> dict[str, Any]:
    """VM default/vm1 running and eligible: a masquerade pod NIC and nic-1 on bridge NAD default/vlan1."""
    await create_nad(api_client, nad())
    return await create_running_vm(api_client, vm(), vmi())


async def unchanged(api_client: ApiClient, before: dict[str, Any]) -> None:
    after = await read_vm(api_client, before["metadata"]["namespace"], before["metadata"]["name"])
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["spec"] == before["spec"]


# -- success paths ----------------------------------------------------------------------------------


async def test_add_nic_adds_the_interface_and_requests_a_migration(
        actions_client: ActionClient, api_client: ApiClient, running_vm: dict[str, Any]) -> None:
    answer = await actions_client.post("default", "vm1", "addNic",
                                       {"interfaceName": "dynif1", "networkName": "default/vlan1", "macAddress": ""})
    assert (answer.status, answer.body) == (204, None)
    stored = await read_vm(api_client, "default", "vm1")
    added = spec_interfaces(stored)[-1]
    assert {key: added[key] for key in ("name", "model", "bridge")} == {"name": "dynif1", "model": "virtio",
                                                                       "bridge": {}}
    assert int(added["macAddress"][:2], 16) & 0x03 == 0x02
    assert spec_networks(stored)[-1] == {"name": "dynif1", "multus": {"networkName": "default/vlan1"}}
    [migration] = await migrations(api_client, "default")
    assert migration["metadata"]["name"].startswith("vm1-")
    assert migration["metadata"].get("generateName") == "vm1-"
    assert migration["spec"] == {"vmiName": "vm1"}


async def test_add_nic_with_a_mac_on_the_short_path(
        actions_client: ActionClient, api_client: ApiClient, running_vm: dict[str, Any]) -> None:
    answer = await actions_client.post("default", "vm1", "addNic", short_path=True, body={
        "interfaceName": "dynif2", "networkName": "vlan1", "macAddress": "02-AA-BB-CC-DD-EE", "ignored": True})
    assert answer.status == 204
    added = spec_interfaces(await read_vm(api_client, "default", "vm1"))[-1]
    assert (added["name"], added["macAddress"]) == ("dynif2", "02:aa:bb:cc:dd:ee")


async def test_remove_nic_sets_the_interface_absent_and_requests_a_migration(
        actions_client: ActionClient, api_client: ApiClient, running_vm: dict[str, Any]) -> None:
    answer = await actions_client.post("default", "vm1", "removeNic", {"interfaceName": "nic-1"})
    assert (answer.status, answer.body) == (204, None)
    stored = await read_vm(api_client, "default", "vm1")
    assert [(i["name"], i.get("state")) for i in spec_interfaces(stored)] == [("default", None), ("nic-1", "absent")]
    assert len(await migrations(api_client, "default")) == 1


async def test_without_migrate_the_change_is_written_and_no_migration_requested(
        start_actions: StartActions, api_client: ApiClient, running_vm: dict[str, Any]) -> None:
    client = await start_actions(migrate=False)
    answer = await client.post("default", "vm1", "removeNic", {"interfaceName": "nic-1"})
    assert answer.status == 204
    assert spec_interfaces(await read_vm(api_client, "default", "vm1"))[1]["state"] == "absent"
    assert await migrations(api_client, "default") == []


async def shapes_vm(api_client: ApiClient) -> None:
    await create_nad(api_client, nad())
    await create_nad(api_client, nad("ovn1", config=KUBE_OVN_CONFIG, cluster_network=None,
                                     network_type="OverlayNetwork"))
    interfaces = [
        iface("default", binding="masquerade", mac="02:00:00:00:00:01"),
        iface("br-virtio", mac="02:00:00:00:00:02"),
        iface("br-nomodel", model=None, mac="02:00:00:00:00:03"),
        iface("sriov1", binding="sriov", mac="02:00:00:00:00:04"),
        iface("e1000", model="e1000", mac="02:00:00:00:00:05"),
        iface("gone", mac="02:00:00:00:00:06", state="absent"),
        iface("podbr", mac="02:00:00:00:00:07"),
        iface("overlay", mac="02:00:00:00:00:08"),
    ]
    networks = [
        pod_net("default"), multus_net("br-virtio", "default/vlan1"), multus_net("br-nomodel", "vlan1"),
        multus_net("sriov1", "default/vlan1"), multus_net("e1000", "default/vlan1"),
        multus_net("gone", "default/vlan1"), pod_net("podbr"), multus_net("overlay", "default/ovn1"),
    ]
    await create_running_vm(api_client, vm("shapes", interfaces=interfaces, networks=networks), vmi("shapes"))


async def test_find_hotunpluggable_nics_lists_bridge_virtio_multus_nics_whatever_their_network(
        actions_client: ActionClient, api_client: ApiClient) -> None:
    # "overlay" is a bridge interface on a NAD that is now kube-ovn: unplugging it needs no network.
    await shapes_vm(api_client)
    for short_path in (False, True):
        answer = await actions_client.post("default", "shapes", "findHotunpluggableNics", short_path=short_path)
        assert (answer.status, answer.body) == (200, {"interfaces": ["br-virtio", "br-nomodel", "overlay"]})


@pytest.mark.parametrize("how", NETWORK_GONE)
async def test_a_nic_whose_network_is_gone_is_listed_and_removed(
        actions_client: ActionClient, api_client: ApiClient, running_vm: dict[str, Any], how: str) -> None:
    # harvester#8293: the admin deleted (or changed) the NAD under a running VM; the NIC must stay removable.
    await take_network_away(api_client, how)
    listed = await actions_client.post("default", "vm1", "findHotunpluggableNics")
    assert (listed.status, listed.body) == (200, {"interfaces": ["nic-1"]})
    answer = await actions_client.post("default", "vm1", "removeNic", {"interfaceName": "nic-1"})
    assert (answer.status, answer.body) == (204, None)
    stored = await read_vm(api_client, "default", "vm1")
    assert [(i["name"], i.get("state")) for i in spec_interfaces(stored)] == [("default", None), ("nic-1", "absent")]


async def test_find_hotunpluggable_nics_of_a_one_nic_vm_is_empty(
        actions_client: ActionClient, api_client: ApiClient) -> None:
    await create_nad(api_client, nad())
    await create_running_vm(api_client, vm("solo", interfaces=[iface("nic-1", mac="02:00:00:00:00:02")],
                                           networks=[multus_net("nic-1", "vlan1")]), vmi("solo"))
    answer = await actions_client.post("default", "solo", "findHotunpluggableNics")
    assert (answer.status, answer.body) == (200, {"interfaces": []})


async def test_find_hotunpluggable_nics_of_an_ineligible_vm_is_empty_not_an_error(
        actions_client: ActionClient, api_client: ApiClient) -> None:
    await create_nad(api_client, nad())
    await create_running_vm(api_client, vm(host_devices=True), vmi())
    answer = await actions_client.post("default", "vm1", "findHotunpluggableNics", raw=b"{not json")
    assert (answer.status, answer.body) == (200, {"interfaces": []})


# -- bad requests -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "words"), [
    (b"{not json", "not JSON"), (b"", "empty"), (b"[1, 2]", "must be a JSON object"), (b"\xff\xfe", "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "not JSON: maximum recursion depth exceeded"),
], ids=["not-json", "empty", "array", "not-utf8", "nested-too-deep"])
async def test_a_body_that_is_not_a_json_object_is_422_and_changes_nothing(
        actions_client: ActionClient, api_client: ApiClient, running_vm: dict[str, Any],
        raw: bytes, words: str) -> None:
    answer = await actions_client.post("default", "vm1", "addNic", raw=raw)
    assert_error(answer, 422, codes.INVALID_BODY, words)
    await unchanged(api_client, running_vm)


@pytest.mark.parametrize(("action", "body", "code", "words"), [
    ("addNic", {"networkName": "vlan1"}, codes.MISSING_REQUIRED, "interfaceName"),
    ("addNic", {"interfaceName": "dynif1"}, codes.MISSING_REQUIRED, "networkName"),
    ("addNic", {"interfaceName": "Dyn_If", "networkName": "vlan1"}, codes.INVALID_FORMAT, "not a valid name"),
    ("addNic", {"interfaceName": "dynif1", "networkName": "vlan1", "macAddress": "01:00:5e:00:00:01"},
     codes.INVALID_FORMAT, "multicast"),
    ("addNic", {"interfaceName": "dynif1", "networkName": "vlan1", "macAddress": "nope"}, codes.INVALID_FORMAT,
     "not a MAC address"),
    ("removeNic", {}, codes.MISSING_REQUIRED, "interfaceName"),
])
async def test_missing_or_invalid_fields_are_422_and_change_nothing(
        actions_client: ActionClient, api_client: ApiClient, running_vm: dict[str, Any],
        action: str, body: dict[str, Any], code: str, words: str) -> None:
    assert_error(await actions_client.post("default", "vm1", action, body), 422, code, words)
    await unchanged(api_client, running_vm)
    assert await migrations(api_client, "default") == []


@pytest.mark.parametrize("action", ["deleteVm", "", "addnic"])
async def test_unknown_action_is_400(actions_client: ActionClient, running_vm: dict[str, Any],
                                     api_client: ApiClient, action: str) -> None:
    answer = await actions_client.post("default", "vm1", action, {"interfaceName": "x"})
    assert_error(answer, 400, codes.INVALID_ACTION, "addNic, removeNic, findHotunpluggableNics")
    await unchanged(api_client, running_vm)


@pytest.mark.parametrize("action", ["addNic", "removeNic", "findHotunpluggableNics"])
async def test_missing_vm_is_404(actions_client: ActionClient, api_client: ApiClient, action: str) -> None:
    await create_nad(api_client, nad())
    answer = await actions_client.post("default", "ghost", action, {"interfaceName": "x", "networkName": "vlan1"})
    assert_error(answer, 404, codes.NOT_FOUND, "VM default/ghost not found")


async def test_missing_nad_is_404(actions_client: ActionClient, api_client: ApiClient,
                                  running_vm: dict[str, Any]) -> None:
    answer = await actions_client.post("default", "vm1", "addNic", {"interfaceName": "x", "networkName": "other/net"})
    assert_error(answer, 404, codes.NOT_FOUND, "network other/net not found")
    await unchanged(api_client, running_vm)


async def test_nad_that_is_not_hotpluggable_is_409(actions_client: ActionClient, api_client: ApiClient,
                                                   running_vm: dict[str, Any]) -> None:
    await create_nad(api_client, nad("ovn1", config=KUBE_OVN_CONFIG))
    answer = await actions_client.post("default", "vm1", "addNic", {"interfaceName": "x", "networkName": "ovn1"})
    assert_error(answer, 409, codes.NETWORK_NOT_HOTPLUGGABLE, "kube-ovn")
    await unchanged(api_client, running_vm)


@pytest.mark.parametrize("name", ["nic-1", "default"])
async def test_interface_name_already_used_is_409(actions_client: ActionClient, api_client: ApiClient,
                                                  running_vm: dict[str, Any], name: str) -> None:
    answer = await actions_client.post("default", "vm1", "addNic", {"interfaceName": name, "networkName": "vlan1"})
    assert_error(answer, 409, codes.NAME_IN_USE, repr(name))
    await unchanged(api_client, running_vm)


async def test_interface_that_cannot_be_unplugged_is_409(actions_client: ActionClient, api_client: ApiClient,
                                                         running_vm: dict[str, Any]) -> None:
    answer = await actions_client.post("default", "vm1", "removeNic", {"interfaceName": "default"})
    assert_error(answer, 409, codes.NOT_HOTUNPLUGGABLE, "masquerade")
    answer = await actions_client.post("default", "vm1", "removeNic", {"interfaceName": "nic-9"})
    assert_error(answer, 404, codes.NOT_FOUND, "no interface named 'nic-9'")
    await unchanged(api_client, running_vm)


INELIGIBLE: list[tuple[str, dict[str, Any], dict[str, Any] | None, str]] = [
    ("guest-cluster", vm(labels={"harvesterhci.io/creator": "docker-machine-driver-harvester"}), vmi(),
     "guest cluster"),
    ("no-vmi", vm(), None, "no VirtualMachineInstance"),
    ("vmi-not-running", vm(), vmi(phase="Scheduled"), "phase Scheduled"),
    ("vmi-not-ready", vm(), vmi(ready=False), "not ready"),
    ("migrating", vm(), vmi(migration={"completed": False}), "being live-migrated"),
    ("vm-status", vm(printable_status="Migrating"), vmi(), "status is Migrating"),
    ("not-migratable", vm(), vmi(live_migratable="False", migratable_reason="DisksNotLiveMigratable"),
     "DisksNotLiveMigratable"),
    ("pinned", vm(node_selector={"kubernetes.io/hostname": "node1"}), vmi(), "pinned to node node1"),
    ("host-devices", vm(host_devices=True), vmi(), "host devices"),
    ("missing-mac", vm(interfaces=[iface("default", binding="masquerade"), iface("nic-1", mac="02:00:00:00:00:02")]),
     vmi(), "stop the VM once"),
]


@pytest.mark.parametrize(("vm_obj", "vmi_obj", "words"), [case[1:] for case in INELIGIBLE],
                         ids=[case[0] for case in INELIGIBLE])
async def test_every_ineligibility_reason_is_409_for_both_writes(
        actions_client: ActionClient, api_client: ApiClient,
        vm_obj: dict[str, Any], vmi_obj: dict[str, Any] | None, words: str) -> None:
    await create_nad(api_client, nad())
    before = await create_running_vm(api_client, vm_obj, vmi_obj)
    added = await actions_client.post("default", "vm1", "addNic", {"interfaceName": "x", "networkName": "vlan1"})
    assert_error(added, 409, codes.NOT_ELIGIBLE, words)
    removed = await actions_client.post("default", "vm1", "removeNic", {"interfaceName": "nic-1"})
    assert_error(removed, 409, codes.NOT_ELIGIBLE, words)
    await unchanged(api_client, before)


# -- who is asking --------------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", ["", "Basic YWRtaW46YWRtaW4=", "Bearer", "Bearer   "])
async def test_no_bearer_token_is_our_own_401(actions_client: ActionClient, api_client: ApiClient,
                                              running_vm: dict[str, Any], authorization: str) -> None:
    url = f"{actions_client.base_url}/v1/harvester/vm/default/vm1"
    headers = {"Authorization": authorization} if authorization else {}
    async with actions_client.session.post(url, params={"action": "removeNic"}, headers=headers,
                                           json={"interfaceName": "nic-1"}) as response:
        body = await response.json()
    assert response.status == 401
    assert (body["type"], body["status"], body["code"]) == ("error", 401, "Unauthorized")
    assert "Authorization: Bearer" in body["message"]
    await unchanged(api_client, running_vm)


async def test_a_token_the_api_server_rejects_is_401(actions_client: ActionClient, api_client: ApiClient,
                                                     running_vm: dict[str, Any]) -> None:
    answer = await actions_client.post("default", "vm1", "removeNic", {"interfaceName": "nic-1"}, token="forged")
    assert_error(answer, 401, "Unauthorized")
    await unchanged(api_client, running_vm)


async def test_rbac_that_forbids_the_patch_is_403_from_the_api_server(
        actions_client: ActionClient, api_client: ApiClient, cluster_server: Any, running_vm: dict[str, Any]) -> None:
    viewer = cluster_server.nobody_token  # an authenticated user granted only what follows
    await grant(api_client, "default", "nobody", [
        {"apiGroups": ["kubevirt.io"], "resources": ["virtualmachines", "virtualmachineinstances"],
         "verbs": ["get", "list"]},
        {"apiGroups": ["k8s.cni.cncf.io"], "resources": ["network-attachment-definitions"], "verbs": ["get"]},
    ])
    viewer_can_read = await actions_client.post("default", "vm1", "findHotunpluggableNics", token=viewer)
    assert (viewer_can_read.status, viewer_can_read.body) == (200, {"interfaces": ["nic-1"]})
    answer = await actions_client.post("default", "vm1", "removeNic", {"interfaceName": "nic-1"}, token=viewer)
    assert_error(answer, 403, "Forbidden", 'User "nobody" cannot patch resource "virtualmachines"')
    await unchanged(api_client, running_vm)
    assert await migrations(api_client, "default") == []


async def test_rbac_that_forbids_reading_the_vm_is_403(actions_client: ActionClient, api_client: ApiClient,
                                                      cluster_server: Any, running_vm: dict[str, Any]) -> None:
    answer = await actions_client.post("default", "vm1", "findHotunpluggableNics", token=cluster_server.nobody_token)
    assert_error(answer, 403, "Forbidden", 'User "nobody" cannot get resource "virtualmachines"')


# -- races, webhooks, faults ------------------------------------------------------------------------


async def test_a_concurrent_edit_is_409_and_nothing_is_lost(
        actions_client: ActionClient, api_client: ApiClient, apiserver: Any, running_vm: dict[str, Any]) -> None:
    # Hold our PATCH at the API server; while it waits, someone else edits the VM.
    held = apiserver.faults.add(method="PATCH", path_regex=r"/virtualmachines/vm1$", status=0, times=1, delay=0.5)
    action = asyncio.create_task(actions_client.post(
        "default", "vm1", "addNic", {"interfaceName": "dynif1", "networkName": "vlan1"}))
    await wait_for(lambda: held.hits == 1)
    await CustomObjectsApi(api_client).patch_namespaced_custom_object(
        "kubevirt.io", "v1", "default", "virtualmachines", "vm1",
        {"metadata": {"labels": {"edited-by": "someone-else"}}}, _content_type="application/merge-patch+json")
    answer = await action
    assert_error(answer, 409, codes.CONCURRENT_CHANGE, "changed while this action was prepared")
    stored = await read_vm(api_client, "default", "vm1")
    assert stored["metadata"]["labels"]["edited-by"] == "someone-else"
    assert [i["name"] for i in spec_interfaces(stored)] == ["default", "nic-1"]
    assert await migrations(api_client, "default") == []


DENIAL = "NIC changes are frozen during the maintenance window"


@pytest.fixture
async def denying_webhook(aiohttp_server: Any, api_client: ApiClient, serving_bundle: CertBundle) -> None:
    """A validating webhook (real TLS, registered by URL) that denies every VM UPDATE with code 403."""

    async def review(request: web.Request) -> web.Response:
        uid = (await request.json())["request"]["uid"]
        return web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {
            "uid": uid, "allowed": False, "status": {"code": 403, "message": DENIAL}}})

    app = web.Application()
    app.router.add_post("/deny", review)
    server = await aiohttp_server(app, ssl=server_ssl_context(serving_bundle))
    await AdmissionregistrationV1Api(api_client).create_validating_webhook_configuration({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "freeze"},
        "webhooks": [{
            "name": "freeze.test.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Fail",
            "clientConfig": {"url": str(server.make_url("/deny")),
                             "caBundle": base64.b64encode(serving_bundle.ca_cert_pem).decode()},
            "rules": [{"apiGroups": ["kubevirt.io"], "apiVersions": ["v1"], "operations": ["UPDATE"],
                       "resources": ["virtualmachines"]}],
        }],
    })


async def test_a_webhook_denial_is_passed_through_with_its_code_and_message(
        actions_client: ActionClient, api_client: ApiClient, running_vm: dict[str, Any],
        denying_webhook: None) -> None:
    answer = await actions_client.post("default", "vm1", "addNic", {"interfaceName": "dynif1", "networkName": "vlan1"})
    assert_error(answer, 403, "AdmissionDenied")
    assert answer.body["message"] == DENIAL
    await unchanged(api_client, running_vm)
    assert await migrations(api_client, "default") == []


async def test_a_failed_migration_request_keeps_the_change_and_leaves_an_event(
        actions_client: ActionClient, api_client: ApiClient, apiserver: Any, running_vm: dict[str, Any]) -> None:
    apiserver.faults.add(method="POST", path_regex=r"/virtualmachineinstancemigrations", status=500, times=1,
                         message="etcd is having a bad day")
    answer = await actions_client.post("default", "vm1", "addNic", {"interfaceName": "dynif1", "networkName": "vlan1"})
    assert answer.status == 204
    stored = await read_vm(api_client, "default", "vm1")
    assert spec_interfaces(stored)[-1]["name"] == "dynif1"
    assert await migrations(api_client, "default") == []
    [event] = await events_about(api_client, "default", "vm1")
    assert (event.type, event.reason) == ("Warning", "HotplugMigrationFailed")
    assert "etcd is having a bad day" in event.message
    assert "migrate or restart the VM" in event.message
    assert event.involved_object.kind == "VirtualMachine"


# -- metrics ----------------------------------------------------------------------------------------


def counted(action: str, code: str) -> float:
    return REGISTRY.get_sample_value("nichotplug_actions_total", {"action": action, "code": code}) or 0.0


async def test_requests_are_counted_by_action_and_status(actions_client: ActionClient,
                                                         running_vm: dict[str, Any]) -> None:
    before = (counted("removeNic", "204"), counted("unknown", "400"), counted("addNic", "422"))
    await actions_client.post("default", "vm1", "removeNic", {"interfaceName": "nic-1"})
    await actions_client.post("default", "vm1", "bogus", {})
    await actions_client.post("default", "vm1", "addNic", raw=b"{")
    after = (counted("removeNic", "204"), counted("unknown", "400"), counted("addNic", "422"))
    assert [b - a for a, b in zip(before, after, strict=True)] == [1.0, 1.0, 1.0]
    latency = REGISTRY.get_sample_value("nichotplug_action_latency_seconds_count", {"action": "removeNic"})
    assert latency is not None
    assert latency >= 1


# -- transport failures -----------------------------------------------------------------------------


async def test_a_body_over_the_size_limit_is_413(actions_client: ActionClient, api_client: ApiClient,
                                                 running_vm: dict[str, Any]) -> None:
    answer = await actions_client.post("default", "vm1", "addNic", raw=b"{" + b" " * (2 * 1024 * 1024) + b"}")
    assert_error(answer, 413, "RequestTooLarge", "too large")
    await unchanged(api_client, running_vm)


async def test_an_unreachable_api_server_is_503(actions_client: ActionClient, apiserver: Any,
                                                running_vm: dict[str, Any]) -> None:
    await apiserver.stop()
    answer = await actions_client.post("default", "vm1", "findHotunpluggableNics")
    assert_error(answer, 503, "ClusterUnavailable", "could not be reached")

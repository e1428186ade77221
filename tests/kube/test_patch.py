"""kube.patch against the in-process API server, and its error mapping against recorded real answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes_asyncio.client import AdmissionregistrationV1Api, ApiClient
from kubernetes_asyncio.client.exceptions import ApiException

from nichotplug.kube.client import api_client_with_token
from nichotplug.kube.patch import (
    AlreadyExists,
    Conflict,
    Denied,
    Forbidden,
    Invalid,
    KubeError,
    NotFound,
    Unauthorized,
    as_kube_error,
    create_custom_object,
    get_custom_object,
    json_patch,
    merge_patch,
    resource_version_test,
)
from nichotplug.testing.auth import VIEWER_TOKEN
from nichotplug.testing.fixtures import SHARED_FIXTURES

from .kube_support import DenyingWebhook, create, vm

VM = ("kubevirt.io", "v1", "virtualmachines", "default")
MAC = "02:00:00:00:00:0a"
RECORDED = SHARED_FIXTURES / "apiserver"


async def vm_now(api: ApiClient, name: str) -> dict[str, Any]:
    return await get_custom_object(api, "kubevirt.io", "v1", "virtualmachines", "default", name)


async def test_json_patch_is_sent_as_json_patch_and_returns_the_patched_object(api_client: ApiClient) -> None:
    created = await create(api_client, vm("vm1", [("nic-1", MAC, None)]))
    ops = [resource_version_test(created["metadata"]["resourceVersion"]),
           {"op": "add", "path": "/metadata/labels", "value": {"team": "net"}},
           {"op": "add", "path": "/spec/template/spec/domain/devices/interfaces/-",
            "value": {"name": "nic-2", "model": "virtio", "bridge": {}}}]
    patched = await json_patch(api_client, *VM, "vm1", ops)
    assert patched["metadata"]["labels"] == {"team": "net"}
    assert [iface["name"] for iface in patched["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]] == [
        "nic-1", "nic-2"]
    assert (await vm_now(api_client, "vm1"))["metadata"]["labels"] == {"team": "net"}


async def test_stale_resource_version_test_is_a_conflict_and_changes_nothing(api_client: ApiClient) -> None:
    created = await create(api_client, vm("vm1", [("nic-1", MAC, None)]))
    stale = created["metadata"]["resourceVersion"]
    await merge_patch(api_client, *VM, "vm1", {"metadata": {"labels": {"edited": "by-user"}}})
    with pytest.raises(Conflict, match="changed since it was read"):
        await json_patch(api_client, *VM, "vm1", [
            resource_version_test(stale), {"op": "add", "path": "/metadata/labels/ours", "value": "x"}])
    assert (await vm_now(api_client, "vm1"))["metadata"]["labels"] == {"edited": "by-user"}


async def test_a_bad_patch_path_with_a_passing_test_is_invalid_not_a_conflict(api_client: ApiClient) -> None:
    created = await create(api_client, vm("vm1", [("nic-1", MAC, None)]))
    with pytest.raises(Invalid) as raised:
        await json_patch(api_client, *VM, "vm1", [
            resource_version_test(created["metadata"]["resourceVersion"]),
            {"op": "remove", "path": "/spec/template/spec/domain/devices/interfaces/5"}])
    assert not isinstance(raised.value, Conflict)
    assert raised.value.status == 422


async def test_missing_object_is_not_found(api_client: ApiClient) -> None:
    with pytest.raises(NotFound):
        await json_patch(api_client, *VM, "nope", [{"op": "add", "path": "/metadata/labels", "value": {}}])
    with pytest.raises(NotFound):
        await merge_patch(api_client, *VM, "nope", {"metadata": {"labels": {"a": "b"}}})


@pytest.mark.parametrize("ops", [
    [],
    {"op": "add", "path": "/metadata/labels", "value": {}},
    [{"op": "frobnicate", "path": "/metadata"}],
    [{"op": "add", "path": "metadata/labels", "value": {}}],
    [{"op": "replace", "path": "/spec/runStrategy"}],
    ["not an op"],
])
async def test_malformed_ops_are_refused_before_anything_is_sent(api_client: ApiClient, ops: Any) -> None:
    created = await create(api_client, vm("vm1", [("nic-1", MAC, None)]))
    with pytest.raises(ValueError, match="JSON Patch"):
        await json_patch(api_client, *VM, "vm1", ops)
    assert (await vm_now(api_client, "vm1"))["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


def test_resource_version_test_needs_a_version() -> None:
    assert resource_version_test("42") == {"op": "test", "path": "/metadata/resourceVersion", "value": "42"}
    with pytest.raises(ValueError, match="resourceVersion"):
        resource_version_test("")


async def test_merge_patch_with_a_stale_resource_version_is_a_conflict(api_client: ApiClient) -> None:
    created = await create(api_client, vm("vm1", [("nic-1", MAC, None)]))
    stale = created["metadata"]["resourceVersion"]
    patched = await merge_patch(api_client, *VM, "vm1",
                                {"metadata": {"resourceVersion": stale, "labels": {"first": "yes"}}})
    assert patched["metadata"]["labels"] == {"first": "yes"}
    with pytest.raises(Conflict):
        await merge_patch(api_client, *VM, "vm1", {"metadata": {"resourceVersion": stale, "labels": {"b": "c"}}})
    with pytest.raises(ValueError, match="merge patch"):
        await merge_patch(api_client, *VM, "vm1", {})


async def test_create_custom_object_with_generate_name_and_name_taken(api_client: ApiClient) -> None:
    migration = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
                 "metadata": {"generateName": "vm1-"}, "spec": {"vmiName": "vm1"}}
    first = await create_custom_object(api_client, "kubevirt.io", "v1", "virtualmachineinstancemigrations",
                                       "default", migration)
    assert first["metadata"]["name"].startswith("vm1-")
    assert first["metadata"]["name"] != "vm1-"
    named = dict(migration, metadata={"name": first["metadata"]["name"]})
    with pytest.raises(AlreadyExists):
        await create_custom_object(api_client, "kubevirt.io", "v1", "virtualmachineinstancemigrations",
                                   "default", named)
    with pytest.raises(ValueError, match="metadata"):
        await create_custom_object(api_client, "kubevirt.io", "v1", "virtualmachineinstancemigrations",
                                   "default", {"spec": {}})


async def test_rbac_refusal_is_forbidden_and_a_bad_token_unauthorized(api_client: ApiClient) -> None:
    await create(api_client, vm("vm1", [("nic-1", MAC, None)]))
    viewer = api_client_with_token(api_client, VIEWER_TOKEN)
    stranger = api_client_with_token(api_client, "no-such-token")
    try:
        assert (await vm_now(viewer, "vm1"))["metadata"]["name"] == "vm1"
        with pytest.raises(Forbidden, match="cannot patch"):
            await merge_patch(viewer, *VM, "vm1", {"metadata": {"labels": {"a": "b"}}})
        with pytest.raises(Unauthorized):
            await vm_now(stranger, "vm1")
    finally:
        await viewer.close()
        await stranger.close()


async def test_admission_denial_is_denied_with_the_webhook_code_and_message(api_client: ApiClient) -> None:
    await create(api_client, vm("vm1", [("nic-1", MAC, None)]))
    webhook = DenyingWebhook(409, "mac address 02:00:00:00:00:0a is already used by default/vm-a")
    await webhook.start()
    try:
        await AdmissionregistrationV1Api(api_client).create_validating_webhook_configuration(
            webhook.configuration())  # type: ignore[arg-type]
        with pytest.raises(Denied) as raised:
            await json_patch(api_client, *VM, "vm1", [{"op": "add", "path": "/metadata/labels", "value": {}}])
    finally:
        await webhook.stop()
    assert raised.value.code == 409
    assert raised.value.webhook == "deny.nichotplug.test"
    assert raised.value.message == "mac address 02:00:00:00:00:0a is already used by default/vm-a"
    assert not isinstance(raised.value, Conflict)  # a refusal is not "retry on fresh state"


def _recorded_exception(name: str) -> ApiException:
    """The ApiException kubernetes-asyncio raises for a response recorded from a real kube-apiserver."""
    response = json.loads((RECORDED / name).read_text())["response"]
    exc = ApiException(status=response["status"], reason="recorded")
    exc.body = json.dumps(response["body"])
    return exc


@pytest.mark.parametrize(("recorded", "kind", "status"), [
    ("01-get-missing-vm.json", NotFound, 404),
    ("03-create-vm-again-alreadyexists.json", AlreadyExists, 409),
    ("05-put-stale-resourceversion-conflict.json", Conflict, 409),
    ("06-jsonpatch-test-op-fails.json", Invalid, 422),  # json_patch turns this one into Conflict after a read
    ("11-patch-dict-as-jsonpatch-wrong.json", Invalid, 400),
    ("15-webhook-denied.json", Denied, 409),
    ("18-bad-token-401.json", Unauthorized, 401),
    ("20-viewer-patch-403.json", Forbidden, 403),
])
def test_real_api_server_answers_map_to_our_errors(recorded: str, kind: type[KubeError], status: int) -> None:
    error = as_kube_error(_recorded_exception(recorded))
    assert type(error) is kind
    assert error.status == status
    assert error.message


@pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", b"[" * 100_000 + b"]" * 100_000, b"[1]", None],
                         ids=["html", "nested-too-deep", "not-an-object", "none"])
def test_an_error_body_that_is_not_a_status_still_maps_by_http_code(body: bytes | None) -> None:
    # What a proxy in front of the API server, or a cut connection, may leave in the body.
    exc = ApiException(status=503, reason="Service Unavailable")
    exc.body = body
    error = as_kube_error(exc)
    assert (type(error), error.status, error.message) == (KubeError, 503, "Service Unavailable")


def test_recorded_webhook_denial_keeps_the_webhook_message() -> None:
    error = as_kube_error(_recorded_exception("15-webhook-denied.json"))
    assert isinstance(error, Denied)
    assert error.webhook == "validate.recorder.test"
    assert error.message.startswith("mac address da:59:6c:5e:8b:fb of interface nic-1 is already used")
    assert str(error).startswith('admission webhook "validate.recorder.test" denied the request: mac address')

"""PATCH in every content type kube-apiserver accepts, and the errors it gives for the rest."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_asyncio
from kubernetes_asyncio import client

from .api_support import JSON_PATCH, MERGE, VMS, RawClient, vm

STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"



@pytest_asyncio.fixture
async def stored(raw: RawClient) -> dict[str, Any]:
    answer = await raw.call("POST", VMS, vm("vm1"))
    assert answer.status == 201
    body: dict[str, Any] = answer.body
    return body


async def test_json_patch_with_passing_test_op_applies(raw: RawClient, stored: dict[str, Any]) -> None:
    rv = stored["metadata"]["resourceVersion"]
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv},
           {"op": "add", "path": "/spec/template/spec/domain/devices/interfaces/-",
            "value": {"name": "nic2", "bridge": {}}}]
    answer = await raw.call("PATCH", f"{VMS}/vm1", ops, content_type=JSON_PATCH)
    assert answer.status == 200
    assert [i["name"] for i in answer.body["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]] == [
        "default", "nic2"]


@pytest.mark.parametrize("ops", [
    [{"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
     {"op": "replace", "path": "/spec/runStrategy", "value": "Always"}],
    [{"op": "remove", "path": "/spec/template/spec/domain/devices/interfaces/5"}],
    [{"op": "replace", "path": "/metadata/annotations/x", "value": "y"}],
], ids=["failed-test", "remove-missing", "replace-missing"])
async def test_json_patch_that_cannot_apply_is_invalid_and_changes_nothing(
        raw: RawClient, stored: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    answer = await raw.call("PATCH", f"{VMS}/vm1", ops, content_type=JSON_PATCH)
    assert answer.status == 422
    assert answer.body["reason"] == "Invalid"
    assert (await raw.call("GET", f"{VMS}/vm1")).body == stored


@pytest.mark.parametrize(("body", "content_type"), [
    ({"metadata": {"labels": {"c": "d"}}}, JSON_PATCH),
    ([{"op": "add"}], MERGE),
    (b"{nope", MERGE),
    ([{"op": "jump", "path": "/spec"}], JSON_PATCH),
], ids=["object-as-json-patch", "list-as-merge", "not-json", "unknown-op"])
async def test_malformed_patch_is_bad_request_and_changes_nothing(
        raw: RawClient, stored: dict[str, Any], body: Any, content_type: str) -> None:
    answer = await raw.call("PATCH", f"{VMS}/vm1", body, content_type=content_type)
    assert answer.status in (400, 422)
    assert answer.body["kind"] == "Status"
    assert (await raw.call("GET", f"{VMS}/vm1")).body == stored


async def test_merge_patch_null_deletes_a_key(raw: RawClient, stored: dict[str, Any]) -> None:
    await raw.call("PATCH", f"{VMS}/vm1", {"metadata": {"labels": {"a": "b", "c": "d"}}}, content_type=MERGE)
    answer = await raw.call("PATCH", f"{VMS}/vm1", {"metadata": {"labels": {"a": None}}}, content_type=MERGE)
    assert answer.body["metadata"]["labels"] == {"c": "d"}


async def test_merge_patch_with_stale_resource_version_is_conflict(raw: RawClient, stored: dict[str, Any]) -> None:
    answer = await raw.call("PATCH", f"{VMS}/vm1", {"metadata": {"resourceVersion": "1", "labels": {"a": "b"}}},
                            content_type=MERGE)
    assert answer.status == 409
    assert answer.body["reason"] == "Conflict"


async def test_strategic_merge_is_unsupported_for_custom_resources(raw: RawClient, stored: dict[str, Any]) -> None:
    answer = await raw.call("PATCH", f"{VMS}/vm1", {"metadata": {"labels": {"c": "d"}}}, content_type=STRATEGIC)
    assert answer.status == 415
    assert answer.body["reason"] == "UnsupportedMediaType"


async def test_strategic_merge_works_for_builtins(api_client: Any) -> None:
    core = client.CoreV1Api(api_client)
    await core.create_namespaced_config_map("default", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="cm"), data={"a": "1"}))
    patched = await core.patch_namespaced_config_map("cm", "default", {"data": {"b": "2"}})
    assert patched.data == {"a": "1", "b": "2"}


async def test_unknown_patch_type_is_unsupported(raw: RawClient, stored: dict[str, Any]) -> None:
    answer = await raw.call("PATCH", f"{VMS}/vm1", {"spec": {}}, content_type="text/plain")
    assert answer.status == 415


async def test_apply_creates_then_merges(raw: RawClient) -> None:
    manifest = "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata:\n  name: applied\n" \
               "spec:\n  runStrategy: Halted\n  template:\n    spec:\n      domain:\n        devices: {}\n"
    created = await raw.call("PATCH", f"{VMS}/applied?fieldManager=test", manifest, content_type=APPLY)
    assert created.status == 201
    assert created.body["metadata"]["generation"] == 1
    updated = await raw.call("PATCH", f"{VMS}/applied?fieldManager=test",
                             manifest.replace("Halted", "Always"), content_type=APPLY)
    assert updated.status == 200
    assert updated.body["spec"]["runStrategy"] == "Always"


async def test_apply_needs_a_field_manager(raw: RawClient, stored: dict[str, Any]) -> None:
    answer = await raw.call("PATCH", f"{VMS}/vm1", "metadata:\n  labels: {a: b}\n", content_type=APPLY)
    assert answer.status == 422
    assert "fieldManager: Required value" in answer.body["message"]


async def test_patch_of_missing_object_is_not_found(raw: RawClient) -> None:
    answer = await raw.call("PATCH", f"{VMS}/nope", {"spec": {}}, content_type=MERGE)
    assert answer.status == 404
    assert answer.body["message"] == 'virtualmachines.kubevirt.io "nope" not found'


async def test_patch_cannot_change_name_or_uid(raw: RawClient, stored: dict[str, Any]) -> None:
    renamed = await raw.call("PATCH", f"{VMS}/vm1", {"metadata": {"name": "other"}}, content_type=MERGE)
    assert renamed.status == 400
    new_uid = await raw.call("PATCH", f"{VMS}/vm1", {"metadata": {"uid": "x", "labels": {"a": "b"}}},
                             content_type=MERGE)
    assert new_uid.status == 409
    assert "Precondition failed: UID in precondition: x" in new_uid.body["message"]
    assert (await raw.call("GET", f"{VMS}/vm1")).body == stored

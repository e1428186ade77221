"""Create, get, update, patch and delete through kubernetes-asyncio, as nichotplug's code will."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from nichotplug.testing import ApiServer

from .api_support import MERGE, VMS, RawClient, vm

KV = ("kubevirt.io", "v1")


@pytest.fixture
def custom(api_client: Any) -> Any:
    return client.CustomObjectsApi(api_client)


@pytest.fixture
def core(api_client: Any) -> Any:
    return client.CoreV1Api(api_client)



def _status(error: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(error.body)
    return body


async def test_create_sets_server_metadata_and_get_returns_it(custom: Any) -> None:
    created = await custom.create_namespaced_custom_object(*KV, "default", "virtualmachines", vm("vm1"))
    meta = created["metadata"]
    assert meta["generation"] == 1
    assert meta["uid"]
    assert meta["creationTimestamp"].endswith("Z")
    assert int(meta["resourceVersion"]) > 0
    fetched = await custom.get_namespaced_custom_object(*KV, "default", "virtualmachines", "vm1")
    assert fetched == created


async def test_generate_name_gives_a_unique_name(custom: Any) -> None:
    body = vm("ignored")
    body["metadata"] = {"generateName": "vm-"}
    first = await custom.create_namespaced_custom_object(*KV, "default", "virtualmachines", body)
    second = await custom.create_namespaced_custom_object(*KV, "default", "virtualmachines", body)
    names = {first["metadata"]["name"], second["metadata"]["name"]}
    assert len(names) == 2
    assert all(name.startswith("vm-") and len(name) == 8 for name in names)


async def test_create_twice_is_already_exists(custom: Any) -> None:
    await custom.create_namespaced_custom_object(*KV, "default", "virtualmachines", vm("vm1"))
    with pytest.raises(ApiException) as caught:
        await custom.create_namespaced_custom_object(*KV, "default", "virtualmachines", vm("vm1"))
    assert caught.value.status == 409
    assert _status(caught.value)["reason"] == "AlreadyExists"


async def test_create_in_missing_namespace_is_not_found_and_stores_nothing(custom: Any, apiserver: ApiServer) -> None:
    with pytest.raises(ApiException) as caught:
        await custom.create_namespaced_custom_object(*KV, "nowhere", "virtualmachines", vm("vm1", "nowhere"))
    assert caught.value.status == 404
    assert _status(caught.value)["message"] == 'namespaces "nowhere" not found'
    assert apiserver.store.count(("kubevirt.io", "virtualmachines")) == 0


async def test_dry_run_create_answers_but_stores_nothing(custom: Any) -> None:
    answer = await custom.create_namespaced_custom_object(*KV, "default", "virtualmachines", vm("dry"), dry_run="All")
    assert answer["metadata"]["uid"]
    assert "resourceVersion" not in answer["metadata"]
    with pytest.raises(ApiException) as caught:
        await custom.get_namespaced_custom_object(*KV, "default", "virtualmachines", "dry")
    assert caught.value.status == 404


async def test_namespaces_exist_at_start_and_can_be_created(core: Any) -> None:
    names = [ns.metadata.name for ns in (await core.list_namespace()).items]
    assert names == ["default", "kube-node-lease", "kube-public", "kube-system"]
    created = await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="team-a")))
    assert created.status.phase == "Active"
    assert created.metadata.labels == {"kubernetes.io/metadata.name": "team-a"}


async def test_invalid_object_name_is_refused(core: Any) -> None:
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_config_map(
            "default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="Bad_Name")))
    assert caught.value.status == 422
    status = _status(caught.value)
    assert status["details"]["causes"][0]["field"] == "metadata.name"


async def test_update_with_stale_resource_version_is_conflict(custom: Any) -> None:
    created = await custom.create_namespaced_custom_object(*KV, "default", "virtualmachines", vm("vm1"))
    created["spec"]["runStrategy"] = "Always"
    updated = await custom.replace_namespaced_custom_object(*KV, "default", "virtualmachines", "vm1", created)
    assert updated["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as caught:
        await custom.replace_namespaced_custom_object(*KV, "default", "virtualmachines", "vm1", created)
    assert caught.value.status == 409
    assert _status(caught.value)["reason"] == "Conflict"
    current = await custom.get_namespaced_custom_object(*KV, "default", "virtualmachines", "vm1")
    assert current["metadata"]["resourceVersion"] == updated["metadata"]["resourceVersion"]


async def test_generation_bumps_only_on_spec_change(custom: Any) -> None:
    await custom.create_namespaced_custom_object(*KV, "default", "virtualmachines", vm("vm1"))
    labelled = await custom.patch_namespaced_custom_object(
        *KV, "default", "virtualmachines", "vm1", {"metadata": {"labels": {"x": "y"}}}, _content_type=MERGE)
    assert labelled["metadata"]["generation"] == 1
    changed = await custom.patch_namespaced_custom_object(
        *KV, "default", "virtualmachines", "vm1", {"spec": {"runStrategy": "Always"}}, _content_type=MERGE)
    assert changed["metadata"]["generation"] == 2


async def test_no_op_patch_keeps_the_resource_version(custom: Any) -> None:
    created = await custom.create_namespaced_custom_object(*KV, "default", "virtualmachines", vm("vm1"))
    same = await custom.patch_namespaced_custom_object(
        *KV, "default", "virtualmachines", "vm1", {"spec": {"runStrategy": "Halted"}}, _content_type=MERGE)
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


async def test_main_resource_writes_ignore_status(custom: Any) -> None:
    body = vm("vm1")
    body["status"] = {"printableStatus": "Running"}
    created = await custom.create_namespaced_custom_object(*KV, "default", "virtualmachines", body)
    assert "status" not in created
    patched = await custom.patch_namespaced_custom_object(
        *KV, "default", "virtualmachines", "vm1", {"status": {"printableStatus": "Running"}}, _content_type=MERGE)
    assert "status" not in patched


async def test_status_writes_ignore_everything_but_status(custom: Any) -> None:
    await custom.create_namespaced_custom_object(*KV, "default", "virtualmachines", vm("vm1"))
    patch = {"spec": {"runStrategy": "Always"}, "status": {"printableStatus": "Stopped"}}
    patched = await custom.patch_namespaced_custom_object_status(
        *KV, "default", "virtualmachines", "vm1", patch, _content_type=MERGE)
    assert patched["status"] == {"printableStatus": "Stopped"}
    assert patched["spec"]["runStrategy"] == "Halted"
    assert patched["metadata"]["generation"] == 1
    fetched = await custom.get_namespaced_custom_object_status(*KV, "default", "virtualmachines", "vm1")
    assert fetched["status"] == {"printableStatus": "Stopped"}


async def test_resource_without_status_subresource_writes_status_through_main_resource(custom: Any) -> None:
    vmi = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
           "metadata": {"name": "vm1", "namespace": "default"},
           "spec": {"domain": {"devices": {}}}, "status": {"phase": "Running"}}
    created = await custom.create_namespaced_custom_object(*KV, "default", "virtualmachineinstances", vmi)
    assert created["status"] == {"phase": "Running"}
    with pytest.raises(ApiException) as caught:
        await custom.get_namespaced_custom_object_status(*KV, "default", "virtualmachineinstances", "vm1")
    assert caught.value.status == 404


async def test_delete_without_finalizers_removes_the_object(custom: Any) -> None:
    created = await custom.create_namespaced_custom_object(*KV, "default", "virtualmachines", vm("vm1"))
    answer = await custom.delete_namespaced_custom_object(*KV, "default", "virtualmachines", "vm1")
    assert answer["status"] == "Success"
    assert answer["details"]["uid"] == created["metadata"]["uid"]
    with pytest.raises(ApiException) as caught:
        await custom.delete_namespaced_custom_object(*KV, "default", "virtualmachines", "vm1")
    assert caught.value.status == 404


async def _delete_a_vm_with_a_finalizer(custom: Any) -> dict[str, Any]:
    """Create VM vm1 with one finalizer and delete it: the answer is the VM, marked for deletion."""
    body = vm("vm1")
    body["metadata"]["finalizers"] = ["example.com/keep"]
    await custom.create_namespaced_custom_object(*KV, "default", "virtualmachines", body)
    marked: dict[str, Any] = await custom.delete_namespaced_custom_object(*KV, "default", "virtualmachines", "vm1")
    return marked


async def test_delete_with_finalizers_marks_then_removing_the_last_finalizer_deletes(custom: Any) -> None:
    kept = await _delete_a_vm_with_a_finalizer(custom)
    assert kept["metadata"]["deletionTimestamp"]
    assert kept["metadata"]["finalizers"] == ["example.com/keep"]
    fetched = await custom.get_namespaced_custom_object(*KV, "default", "virtualmachines", "vm1")
    assert fetched["metadata"]["deletionTimestamp"] == kept["metadata"]["deletionTimestamp"]
    await custom.patch_namespaced_custom_object(
        *KV, "default", "virtualmachines", "vm1", {"metadata": {"finalizers": None}}, _content_type=MERGE)
    with pytest.raises(ApiException) as caught:
        await custom.get_namespaced_custom_object(*KV, "default", "virtualmachines", "vm1")
    assert caught.value.status == 404


async def test_object_being_deleted_cannot_gain_finalizers(custom: Any) -> None:
    await _delete_a_vm_with_a_finalizer(custom)
    with pytest.raises(ApiException) as caught:
        await custom.patch_namespaced_custom_object(
            *KV, "default", "virtualmachines", "vm1",
            {"metadata": {"finalizers": ["example.com/keep", "example.com/more"]}}, _content_type=MERGE)
    assert caught.value.status == 422
    assert 'found new finalizers []string{"example.com/more"}' in _status(caught.value)["message"]
    fetched = await custom.get_namespaced_custom_object(*KV, "default", "virtualmachines", "vm1")
    assert fetched["metadata"]["finalizers"] == ["example.com/keep"]


async def test_delete_precondition_mismatch_is_conflict(custom: Any) -> None:
    await custom.create_namespaced_custom_object(*KV, "default", "virtualmachines", vm("vm1"))
    with pytest.raises(ApiException) as caught:
        await custom.delete_namespaced_custom_object(
            *KV, "default", "virtualmachines", "vm1", body=client.V1DeleteOptions(
                preconditions=client.V1Preconditions(uid="someone-else")))
    assert caught.value.status == 409
    assert (await custom.get_namespaced_custom_object(*KV, "default", "virtualmachines", "vm1"))["metadata"]


async def test_delete_collection_by_label(custom: Any) -> None:
    for name, team in (("a", "red"), ("b", "red"), ("c", "blue")):
        await custom.create_namespaced_custom_object(*KV, "default", "virtualmachines", vm(name, labels={"team": team}))
    await custom.delete_collection_namespaced_custom_object(
        *KV, "default", "virtualmachines", label_selector="team=red")
    left = await custom.list_namespaced_custom_object(*KV, "default", "virtualmachines")
    assert [item["metadata"]["name"] for item in left["items"]] == ["c"]


async def test_deleting_a_namespace_deletes_its_objects(core: Any, custom: Any, raw: RawClient) -> None:
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="gone")))
    await custom.create_namespaced_custom_object(*KV, "gone", "virtualmachines", vm("vm1", "gone"))
    answer = await raw.call("DELETE", "/api/v1/namespaces/gone")
    assert answer.status == 200
    assert answer.body["status"] == {"phase": "Terminating"}
    listed = await custom.list_cluster_custom_object(*KV, "virtualmachines")
    assert listed["items"] == []
    assert (await raw.call("GET", "/api/v1/namespaces/gone")).status == 404


async def test_namespace_with_finalized_content_stays_terminating_until_it_is_empty(
        custom: Any, raw: RawClient) -> None:
    await raw.call("POST", "/api/v1/namespaces", {"metadata": {"name": "slow"}})
    body = vm("vm1", "slow")
    body["metadata"]["finalizers"] = ["example.com/keep"]
    await custom.create_namespaced_custom_object(*KV, "slow", "virtualmachines", body)
    await raw.call("DELETE", "/api/v1/namespaces/slow")
    assert (await raw.call("GET", "/api/v1/namespaces/slow")).body["status"]["phase"] == "Terminating"
    refused = await raw.call("POST", "/apis/kubevirt.io/v1/namespaces/slow/virtualmachines", vm("vm2", "slow"))
    assert refused.status == 403
    assert refused.body["message"] == ('virtualmachines.kubevirt.io "vm2" is forbidden: unable to create new content '
                                       "in namespace slow because it is being terminated")
    kept = await custom.get_namespaced_custom_object(*KV, "slow", "virtualmachines", "vm1")
    assert kept["metadata"]["deletionTimestamp"]
    await custom.patch_namespaced_custom_object(*KV, "slow", "virtualmachines", "vm1",
                                                {"metadata": {"finalizers": None}}, _content_type=MERGE)
    assert (await raw.call("GET", "/api/v1/namespaces/slow")).status == 404


async def test_crd_created_through_the_api_is_served(custom: Any, api_client: Any) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "properties": {"spec": {"type": "object", "properties": {
                         "size": {"type": "integer"}}}}}}}]},
    }
    created = await client.ApiextensionsV1Api(api_client).create_custom_resource_definition(crd)
    assert {c.type for c in created.status.conditions} == {"Established", "NamesAccepted"}
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 3}}
    stored = await custom.create_namespaced_custom_object("example.com", "v1", "default", "widgets", widget)
    assert stored["spec"] == {"size": 3}
    await client.ApiextensionsV1Api(api_client).delete_custom_resource_definition("widgets.example.com")
    with pytest.raises(ApiException) as caught:
        await custom.get_namespaced_custom_object("example.com", "v1", "default", "widgets", "w")
    assert caught.value.status == 404


async def test_other_served_version_reads_the_same_object(custom: Any) -> None:
    await custom.create_namespaced_custom_object(*KV, "default", "virtualmachines", vm("vm1"))
    old_version = await custom.get_namespaced_custom_object(
        "kubevirt.io", "v1alpha3", "default", "virtualmachines", "vm1")
    assert old_version["apiVersion"] == "kubevirt.io/v1alpha3"
    assert old_version["spec"]["runStrategy"] == "Halted"


async def test_bad_bodies_are_bad_requests_and_change_nothing(raw: RawClient, apiserver: ApiServer) -> None:
    not_json = await raw.call("POST", VMS, b"{not json")
    wrong_kind = await raw.call("POST", VMS, {**vm("x"), "kind": "Pod"})
    no_kind = await raw.call("POST", VMS, {"apiVersion": "kubevirt.io/v1", "metadata": {"name": "x"}})
    other_namespace = await raw.call("POST", VMS, vm("x", "kube-system"))
    assert [a.status for a in (not_json, wrong_kind, no_kind, other_namespace)] == [400, 400, 400, 400]
    assert all(a.body["reason"] == "BadRequest" for a in (not_json, wrong_kind, no_kind, other_namespace))
    assert apiserver.store.count(("kubevirt.io", "virtualmachines")) == 0


@pytest.mark.parametrize("metadata", [
    {"name": "x", "labels": ["a"]},
    {"name": "x", "labels": {"a": 1}},
    {"name": "x", "annotations": "a=b"},
    {"name": "x", "finalizers": [1]},
    {"name": 7},
])
async def test_malformed_metadata_is_bad_request(raw: RawClient, apiserver: ApiServer,
                                                 metadata: dict[str, Any]) -> None:
    created = await raw.call("POST", VMS, {**vm("x"), "metadata": metadata})
    assert created.status == 400
    assert created.body["message"].startswith("json: cannot unmarshal")
    await raw.call("POST", VMS, vm("vm1"))
    patched = await raw.call("PATCH", f"{VMS}/vm1", {"metadata": {k: v for k, v in metadata.items() if k != "name"}
                                                     or {"labels": ["a"]}}, content_type=MERGE)
    assert patched.status == 400
    assert apiserver.store.count(("kubevirt.io", "virtualmachines")) == 1


async def test_unknown_resource_is_not_found(raw: RawClient) -> None:
    answer = await raw.call("GET", "/apis/kubevirt.io/v1/namespaces/default/gadgets")
    assert answer.status == 404
    assert answer.body["message"] == "the server could not find the requested resource"


async def test_put_with_mismatched_name_or_namespace_is_refused(raw: RawClient) -> None:
    stored = (await raw.call("POST", VMS, vm("vm1"))).body
    moved = await raw.call("PUT", f"{VMS}/vm1", vm("vm1", "kube-system"))
    assert moved.status == 400
    assert "namespace of the provided object does not match" in moved.body["message"]
    answer = await raw.call("PUT", f"{VMS}/vm1", vm("vm2"))
    assert (await raw.call("GET", f"{VMS}/vm1")).body == stored
    assert answer.status == 400
    assert "does not match the name on the URL" in answer.body["message"]


LEASES = "/apis/coordination.k8s.io/v1/namespaces/default/leases"
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


@pytest.mark.parametrize(("collection", "body", "kind"), [
    (VMS, vm("vm1"), "VirtualMachine.kubevirt.io"),
    (LEASES, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "vm1"},
              "spec": {"holderIdentity": "a"}}, "Lease.coordination.k8s.io"),
], ids=["custom-resource", "lease"])
async def test_a_put_without_resource_version_is_refused_where_the_real_registry_refuses_it(
        raw: RawClient, collection: str, body: dict[str, Any], kind: str) -> None:
    # kube-apiserver's AllowUnconditionalUpdate is false for custom resources, Leases, CRDs and webhook
    # configurations: `kubectl replace` of a manifest without resourceVersion fails against a real cluster.
    stored = (await raw.call("POST", collection, body)).body
    answer = await raw.call("PUT", f"{collection}/vm1", body)
    assert (answer.status, answer.body["message"]) == (
        422, f'{kind} "vm1" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update')
    assert (await raw.call("GET", f"{collection}/vm1")).body == stored
    with_version = {**body, "metadata": {**body["metadata"], "resourceVersion": stored["metadata"]["resourceVersion"]}}
    assert (await raw.call("PUT", f"{collection}/vm1", with_version)).status == 200


async def test_a_config_map_may_be_put_without_resource_version(raw: RawClient) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}}
    await raw.call("POST", CONFIGMAPS, body)
    answer = await raw.call("PUT", f"{CONFIGMAPS}/c", {**body, "data": {"a": "2"}})
    assert (answer.status, answer.body["data"]) == (200, {"a": "2"})

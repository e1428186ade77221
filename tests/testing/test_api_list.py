"""Lists: label and field selectors, all namespaces, pagination with limit and continue."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_asyncio
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from nichotplug.testing import ApiServer

from .api_support import RawClient, vm

KV = ("kubevirt.io", "v1")



@pytest_asyncio.fixture
async def custom(api_client: Any) -> Any:
    api = client.CustomObjectsApi(api_client)
    await client.CoreV1Api(api_client).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="ns2")))
    objects = [("default", "a", {"tier": "web", "env": "prod"}), ("default", "b", {"tier": "db", "env": "prod"}),
               ("default", "c", {"tier": "web"}), ("ns2", "a", {"tier": "web", "env": "dev"})]
    for namespace, name, labels in objects:
        await api.create_namespaced_custom_object(*KV, namespace, "virtualmachines", vm(name, namespace, labels=labels))
    return api


def _names(listed: dict[str, Any]) -> list[str]:
    return [f"{i['metadata']['namespace']}/{i['metadata']['name']}" for i in listed["items"]]


@pytest.mark.parametrize(("selector", "expected"), [
    ("tier=web", ["default/a", "default/c"]),
    ("tier==web,env=prod", ["default/a"]),
    ("tier!=web", ["default/b"]),
    ("tier in (db, cache)", ["default/b"]),
    ("tier notin (web)", ["default/b"]),
    ("env", ["default/a", "default/b"]),
    ("!env", ["default/c"]),
    ("", ["default/a", "default/b", "default/c"]),
])
async def test_label_selectors(custom: Any, selector: str, expected: list[str]) -> None:
    listed = await custom.list_namespaced_custom_object(*KV, "default", "virtualmachines", label_selector=selector)
    assert _names(listed) == expected


async def test_field_selectors(custom: Any) -> None:
    by_name = await custom.list_cluster_custom_object(*KV, "virtualmachines", field_selector="metadata.name=a")
    assert _names(by_name) == ["default/a", "ns2/a"]
    by_namespace = await custom.list_cluster_custom_object(
        *KV, "virtualmachines", field_selector="metadata.namespace!=default")
    assert _names(by_namespace) == ["ns2/a"]


async def test_unsupported_field_selector_is_bad_request(custom: Any) -> None:
    with pytest.raises(ApiException) as caught:
        await custom.list_cluster_custom_object(*KV, "virtualmachines", field_selector="spec.running=true")
    assert caught.value.status == 400


async def test_malformed_label_selector_is_bad_request(custom: Any) -> None:
    with pytest.raises(ApiException) as caught:
        await custom.list_cluster_custom_object(*KV, "virtualmachines", label_selector="a in (b")
    assert caught.value.status == 400


async def test_all_namespaces_list_carries_the_current_resource_version(custom: Any, apiserver: ApiServer) -> None:
    listed = await custom.list_cluster_custom_object(*KV, "virtualmachines")
    assert _names(listed) == ["default/a", "default/b", "default/c", "ns2/a"]
    assert listed["kind"] == "VirtualMachineList"
    assert listed["apiVersion"] == "kubevirt.io/v1"
    assert listed["metadata"]["resourceVersion"] == str(apiserver.store.resource_version)


async def test_pages_with_limit_and_continue_cover_everything_once(custom: Any) -> None:
    pages, token = [], None
    while True:
        page = await custom.list_cluster_custom_object(*KV, "virtualmachines", limit=3, _continue=token)
        pages.append(_names(page))
        token = page["metadata"].get("continue")
        if not token:
            break
        assert page["metadata"]["remainingItemCount"] == 1
    assert pages == [["default/a", "default/b", "default/c"], ["ns2/a"]]


async def test_continue_token_that_is_garbage_is_bad_request(custom: Any) -> None:
    with pytest.raises(ApiException) as caught:
        await custom.list_cluster_custom_object(*KV, "virtualmachines", limit=1, _continue="%%%")
    assert caught.value.status == 400


async def test_builtin_list_through_core_api(api_client: Any) -> None:
    core = client.CoreV1Api(api_client)
    await core.create_namespaced_config_map("default", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="one", labels={"app": "x"})))
    listed = await core.list_config_map_for_all_namespaces(label_selector="app=x")
    assert [cm.metadata.name for cm in listed.items] == ["one"]


async def test_preloaded_objects_are_listed_in_pages(apiserver: ApiServer, raw: RawClient) -> None:
    assert apiserver.preload(vm(f"vm{i:04d}", f"bulk{i % 3}") for i in range(900)) == 900
    seen: list[str] = []
    token = ""
    while True:
        page = await raw.call("GET", f"/apis/kubevirt.io/v1/virtualmachines?limit=250&continue={token}")
        seen += [f"{i['metadata']['namespace']}/{i['metadata']['name']}" for i in page.body["items"]]
        token = page.body["metadata"]["continue"]
        if not token:
            break
    assert len(seen) == len(set(seen)) == 900
    assert seen == sorted(seen)
    selector = "kubernetes.io/metadata.name%20in%20(bulk0,bulk2)"
    namespaces = await raw.call("GET", f"/api/v1/namespaces?labelSelector={selector}")
    assert [n["metadata"]["name"] for n in namespaces.body["items"]] == ["bulk0", "bulk2"]


def test_preload_refuses_objects_the_server_does_not_serve() -> None:
    server = ApiServer(crds=False)
    with pytest.raises(ValueError, match="no served resource"):
        server.preload([vm("vm1")])
    assert server.store.count(("kubevirt.io", "virtualmachines")) == 0

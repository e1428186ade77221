"""The non-object routes: discovery, OpenAPI, health, Tables and paths that name nothing."""

from __future__ import annotations

import json
import ssl

import aiohttp
import pytest

from nichotplug.testing import ApiServer
from nichotplug.testing.fixtures import SHARED_FIXTURES

from .api_support import VMS, RawClient, vm

RECORDED = SHARED_FIXTURES / "apiserver"
AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"



async def _get(server: ApiServer, path: str, accept: str) -> tuple[int, str, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.get(
            server.url + path, headers={"Accept": accept, "Authorization": f"Bearer {server.admin_token}"},
            ssl=ssl.create_default_context(cafile=str(server.ca_file))) as response:
        return response.status, response.headers["Content-Type"], json.loads(await response.read())


@pytest.mark.skipif(not RECORDED.is_dir(), reason="recorded fixtures not on this machine")
async def test_group_version_discovery_is_the_recorded_one(raw: RawClient) -> None:
    expected = json.loads((RECORDED / "30-discovery-group.json").read_text())["response"]["body"]
    answer = await raw.call("GET", "/apis/kubevirt.io/v1")
    assert answer.status == 200
    assert answer.body == expected


@pytest.mark.parametrize("path", ["/version", "/api", "/api/v1", "/apis", "/apis/kubevirt.io",
                                  "/apis/k8s.cni.cncf.io/v1", "/openapi/v3", "/openapi/v3/apis/kubevirt.io/v1"])
async def test_discovery_and_openapi_documents_are_served(raw: RawClient, path: str) -> None:
    answer = await raw.call("GET", path)
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    assert isinstance(answer.body, dict)


@pytest.mark.parametrize("path", ["/apis/nothing.example.com", "/apis/kubevirt.io/v9", "/openapi/v3/apis/x/v1",
                                  "/no/such/thing"])
async def test_paths_naming_nothing_are_not_found(raw: RawClient, path: str) -> None:
    answer = await raw.call("GET", path)
    assert answer.status == 404
    assert answer.body["reason"] == "NotFound"


async def test_aggregated_discovery_when_asked_for(apiserver: ApiServer) -> None:
    status, content_type, body = await _get(apiserver, "/apis", AGGREGATED)
    assert status == 200
    assert content_type == "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    assert body["kind"] == "APIGroupDiscoveryList"


async def test_kubectl_get_receives_a_table_for_custom_resources(apiserver: ApiServer, raw: RawClient) -> None:
    await raw.call("POST", VMS, vm("vm1"))
    status, content_type, body = await _get(apiserver, VMS, TABLE)
    assert status == 200
    assert content_type.startswith("application/json;as=Table")
    assert body["kind"] == "Table"
    assert [row["cells"][0] for row in body["rows"]] == ["vm1"]  # type: ignore[index,union-attr]
    status, _, single = await _get(apiserver, f"{VMS}/vm1", TABLE)
    assert single["kind"] == "Table"


async def test_kubectl_get_watch_receives_table_rows(apiserver: ApiServer, raw: RawClient) -> None:
    await raw.call("POST", VMS, vm("vm1"))
    await raw.call("POST", VMS, vm("vm2"))
    async with aiohttp.ClientSession() as session, session.get(
            f"{apiserver.url}{VMS}?watch=true&timeoutSeconds=1",
            headers={"Accept": TABLE, "Authorization": f"Bearer {apiserver.admin_token}"},
            ssl=ssl.create_default_context(cafile=str(apiserver.ca_file))) as response:
        events = [json.loads(line) async for line in response.content if line.strip()]
    assert [(e["type"], e["object"]["kind"], e["object"]["rows"][0]["cells"][0]) for e in events] == [
        ("ADDED", "Table", "vm1"), ("ADDED", "Table", "vm2")]
    assert events[0]["object"]["columnDefinitions"]
    assert events[1]["object"]["columnDefinitions"] == []


async def test_health_endpoints_answer_ok(raw: RawClient) -> None:
    for path in ("/healthz", "/livez", "/readyz"):
        answer = await raw.call("GET", path, token=None)
        assert (answer.status, answer.body) == (200, "ok")


async def test_write_methods_on_discovery_are_not_allowed(raw: RawClient) -> None:
    answer = await raw.call("POST", "/apis", {})
    assert answer.status == 405


async def test_create_without_a_namespace_for_a_namespaced_resource_is_not_allowed(raw: RawClient) -> None:
    answer = await raw.call("POST", "/apis/kubevirt.io/v1/virtualmachines", vm("vm1"))
    assert answer.status == 405
    assert answer.body["reason"] == "MethodNotAllowed"

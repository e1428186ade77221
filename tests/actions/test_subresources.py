"""The subresource API's adapter over real TLS, wired as ``serve --apiservice`` wires it, in front of the
in-process API server.

The in-process server has no aggregation layer, so these tests play kube-apiserver's front proxy
themselves: a front-proxy CA in ``kube-system/extension-apiserver-authentication``, a client
certificate it signs, ``X-Remote-User``/``X-Remote-Group`` headers. The real aggregation layer is
exercised in ``tests/e2e/test_subresources_real.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kubernetes_asyncio.client import ApiClient, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import REGISTRY

from nichotplug import certs
from nichotplug.actions.apidocs import APISERVICE, GROUP, GROUP_VERSION, SUBRESOURCES
from nichotplug.actions.frontproxy import CONFIGMAP, NAMESPACE
from nichotplug.rules.cluster import StaticCluster
from nichotplug.service import start_subresources, start_tls_runner
from nichotplug.webhook.tls import CertReloader

from .objects import (
    create_nad,
    create_running_vm,
    events_about,
    iface,
    migrations,
    nad,
    read_vm,
    spec_interfaces,
    vm,
    vmi,
)

PROXY_NAME = "front-proxy-client"
ROOT = f"/apis/{GROUP_VERSION}/namespaces/default/virtualmachines"
POLL_SECONDS = 0.05


@dataclass
class Answer:
    status: int
    body: Any
    headers: Any


@dataclass
class FrontProxy:
    """A CA as kube-apiserver's front proxy has one, and client certificates it signs, on disk."""

    folder: Path
    ca_pem: bytes
    ca_key_pem: bytes

    @classmethod
    def make(cls, folder: Path, name: str) -> FrontProxy:
        folder.mkdir(parents=True, exist_ok=True)
        ca_pem, ca_key_pem = certs.make_ca(name)
        return cls(folder, ca_pem, ca_key_pem)

    def client(self, common_name: str = PROXY_NAME) -> tuple[Path, Path]:
        cert_pem, key_pem = certs.make_client_cert(self.ca_pem, self.ca_key_pem, common_name=common_name)
        cert, key = self.folder / f"{common_name}.crt", self.folder / f"{common_name}.key"
        cert.write_bytes(cert_pem)
        key.write_bytes(key_pem)
        return cert, key


def configmap_data(proxy: FrontProxy, allowed: list[str]) -> dict[str, str]:
    """What kube-apiserver writes with --requestheader-* flags."""
    return {"requestheader-client-ca-file": proxy.ca_pem.decode(),
            "requestheader-allowed-names": json.dumps(allowed),
            "requestheader-username-headers": json.dumps(["X-Remote-User"]),
            "requestheader-group-headers": json.dumps(["X-Remote-Group"]),
            "requestheader-extra-headers-prefix": json.dumps(["X-Remote-Extra-"])}


class Caller:
    """HTTPS calls to the served port, verifying it, with or without a client certificate."""

    def __init__(self, url: str, serving_ca: bytes) -> None:
        self.url = url
        self.serving_ca = serving_ca.decode()

    def context(self, client: tuple[Path, Path] | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.serving_ca)
        if client is not None:
            context.load_cert_chain(*client)
        return context

    async def call(self, method: str, path: str, *, client: tuple[Path, Path] | None = None, body: Any = None,
                   raw: bytes | None = None, user: str | None = "alice", groups: tuple[str, ...] = ("devs",)) -> Answer:
        headers = {"Content-Type": "application/json"}
        if user is not None:
            headers["X-Remote-User"] = user
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        async with aiohttp.ClientSession() as session:
            request_headers: Any = [*headers.items(), *(("X-Remote-Group", group) for group in groups)]
            async with session.request(method, f"{self.url}{path}", data=data, headers=request_headers,
                                       ssl=self.context(client)) as response:
                text = await response.text()
                return Answer(response.status, json.loads(text) if text else None, response.headers)


@dataclass
class Served:
    caller: Caller
    proxy: FrontProxy
    client: tuple[Path, Path]
    set_configmap: Callable[[dict[str, str] | None], Awaitable[None]]

    async def call(self, method: str, path: str, **kwargs: Any) -> Answer:
        kwargs.setdefault("client", self.client)
        return await self.caller.call(method, path, **kwargs)


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@pytest.fixture
async def served(api_client: ApiClient, tmp_path: Path) -> AsyncIterator[Served]:
    """``start_subresources`` on a TLS port (CertReloader, FrontDoor), the ConfigMap naming a front proxy."""
    core = CoreV1Api(api_client)
    try:
        await core.create_namespace({"metadata": {"name": NAMESPACE}})
    except ApiException as error:
        if error.status != 409:  # kube-system may already exist
            raise

    async def set_configmap(data: dict[str, str] | None) -> None:
        try:
            await core.delete_namespaced_config_map(CONFIGMAP, NAMESPACE)
        except ApiException as error:
            if error.status != 404:
                raise
        if data is not None:
            await core.create_namespaced_config_map(NAMESPACE, {"metadata": {"name": CONFIGMAP}, "data": data})

    proxy = FrontProxy.make(tmp_path / "proxy", "front-proxy-ca")
    await set_configmap(configmap_data(proxy, [PROXY_NAME]))
    bundle = certs.make_bundle(dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    files = certs.write_bundle(bundle, tmp_path / "serving")
    tls = CertReloader(files["tls.crt"], files["tls.key"])
    await tls.start()
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    args = argparse.Namespace(apiservice=APISERVICE, no_migrate=False)
    stop = await start_subresources(app, api_client, args, StaticCluster(), tls, poll_seconds=POLL_SECONDS)
    assert stop is not None
    runner, _door = await start_tls_runner(app, "127.0.0.1", 0, tls.context)
    port = runner.addresses[0][1]
    try:
        yield Served(Caller(f"https://127.0.0.1:{port}", bundle.ca_cert_pem), proxy, proxy.client(), set_configmap)
    finally:
        await runner.cleanup()
        await stop()
        await tls.stop()


@pytest.fixture
async def running_vm(api_client: ApiClient) -> dict[str, Any]:
    """VM default/vm1 running and eligible: a masquerade pod NIC and nic-1 on bridge NAD default/vlan1."""
    await create_nad(api_client, nad())
    return await create_running_vm(api_client, vm(), vmi())


async def assert_unchanged(api_client: ApiClient, before: dict[str, Any]) -> None:
    after = await read_vm(api_client, "default", before["metadata"]["name"])
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def assert_status(answer: Answer, code: int, reason: str, words: str = "") -> None:
    assert answer.status == code, answer.body
    body = answer.body
    assert (body["kind"], body["apiVersion"], body["status"], body["code"], body["reason"]) == (
        "Status", "v1", "Failure", code, reason)
    assert words in body["message"]


# -- the four subresources ----------------------------------------------------------------------------


async def test_addnic_without_a_name_adds_the_first_free_nic_and_the_event_names_the_user(
        served: Served, api_client: ApiClient, running_vm: dict[str, Any]) -> None:
    answer = await served.call("POST", f"{ROOT}/vm1/addnic", body={"networkName": "vlan1"})

    assert answer.status == 200, answer.body
    added = spec_interfaces(await read_vm(api_client, "default", "vm1"))[-1]
    assert answer.body["interface"] == {"name": "nic-2", "macAddress": added["macAddress"],
                                        "networkName": "default/vlan1"}
    [migration] = await migrations(api_client, "default")
    assert (answer.body["migrationRequested"], answer.body["migration"]) == (True, migration["metadata"]["name"])
    messages = [event.message for event in await events_about(api_client, "default", "vm1")]
    assert messages == [f"alice hot-plugged interface nic-2 (MAC {added['macAddress']}, network default/vlan1); "
                        f"live migration {migration['metadata']['name']} requested"]


async def test_removenic_sets_the_interface_absent_and_answers_what_it_was(
        served: Served, api_client: ApiClient, running_vm: dict[str, Any]) -> None:
    mac = spec_interfaces(running_vm)[1]["macAddress"]
    answer = await served.call("POST", f"{ROOT}/vm1/removenic", body={"interfaceName": "nic-1"})

    assert answer.status == 200, answer.body
    assert answer.body["interface"] == {"name": "nic-1", "macAddress": mac, "networkName": "default/vlan1"}
    assert spec_interfaces(await read_vm(api_client, "default", "vm1"))[1]["state"] == "absent"


async def test_hotunpluggablenics_lists_the_interfaces_that_can_go(served: Served,
                                                                   running_vm: dict[str, Any]) -> None:
    answer = await served.call("GET", f"{ROOT}/vm1/hotunpluggablenics")
    assert (answer.status, answer.body) == (200, {"interfaces": ["nic-1"]})


async def test_hotplugcheck_of_an_eligible_vm_gives_its_port_room(served: Served, running_vm: dict[str, Any]) -> None:
    answer = await served.call("GET", f"{ROOT}/vm1/hotplugcheck")
    # 1 GiB guest with 2 interfaces: KubeVirt keeps max(8 - 2, 3) hot-plug ports
    assert (answer.status, answer.body) == (200, {"eligible": True, "reasons": [], "hotplugPortsLeft": 6})


async def test_hotplugcheck_of_an_ineligible_vm_gives_every_reason_with_its_code(
        served: Served, api_client: ApiClient) -> None:
    await create_running_vm(api_client, vm(labels={"harvesterhci.io/creator": "docker-machine-driver-harvester"},
                                           interfaces=[iface("default", binding="masquerade", mac="")]),
                            vmi(live_migratable="False", migratable_reason="DisksNotLiveMigratable"))
    answer = await served.call("GET", f"{ROOT}/vm1/hotplugcheck")
    assert answer.status == 200, answer.body
    assert answer.body["eligible"] is False
    codes = [reason["code"] for reason in answer.body["reasons"]]
    assert codes == ["vm-guest-cluster", "vm-not-migratable", "vm-missing-macs"]  # SPEC order
    assert all("default/vm1" in reason["message"] for reason in answer.body["reasons"])
    assert "DisksNotLiveMigratable" in answer.body["reasons"][1]["message"]


# -- errors are metav1.Status, and change nothing -------------------------------------------------------


@pytest.mark.parametrize(("method", "sub", "kwargs", "code", "reason", "words"), [
    ("POST", "addnic", {"raw": b"{not json"}, 400, "BadRequest", "not JSON"),
    ("POST", "addnic", {"raw": b""}, 400, "BadRequest", "empty"),
    ("POST", "removenic", {"body": ["nic-1"]}, 400, "BadRequest", "JSON object"),
    ("POST", "addnic", {"body": {"interfaceName": "nic-9"}}, 422, "Invalid", "networkName"),
    ("POST", "removenic", {"body": {}}, 422, "Invalid", "interfaceName"),
    ("POST", "addnic", {"body": {"interfaceName": "nic-1", "networkName": "vlan1"}}, 409, "Conflict", "nic-1"),
    ("POST", "addnic", {"body": {"networkName": "vlan1", "pad": "x" * (1024 * 1024)}}, 413,
     "RequestEntityTooLarge", "larger than"),
    ("GET", "addnic", {}, 405, "MethodNotAllowed", "POST"),
    ("POST", "hotplugcheck", {"body": {}}, 405, "MethodNotAllowed", "GET"),
    ("POST", "attachvolume", {"body": {}}, 404, "NotFound", "no subresource"),
])
async def test_a_bad_request_is_a_status_and_changes_nothing(
        served: Served, api_client: ApiClient, running_vm: dict[str, Any], method: str, sub: str,
        kwargs: dict[str, Any], code: int, reason: str, words: str) -> None:
    answer = await served.call(method, f"{ROOT}/vm1/{sub}", **kwargs)
    assert_status(answer, code, reason, words)
    assert answer.body["details"]["name"] == "vm1"
    if code == 405:
        assert answer.headers["Allow"] == SUBRESOURCES[sub].method
    await assert_unchanged(api_client, running_vm)
    assert await migrations(api_client, "default") == []


async def test_an_unknown_vm_is_a_404_status(served: Served) -> None:
    answer = await served.call("POST", f"{ROOT}/nosuchvm/addnic", body={"networkName": "vlan1"})
    assert_status(answer, 404, "NotFound", "default/nosuchvm")


async def test_an_unknown_path_in_the_group_is_a_404_status(served: Served) -> None:
    assert_status(await served.call("GET", f"/apis/{GROUP_VERSION}/namespaces/default/pods/p/log"), 404, "NotFound")


# -- authentication -------------------------------------------------------------------------------------


async def test_without_a_client_certificate_every_call_is_401_and_changes_nothing(
        served: Served, api_client: ApiClient, running_vm: dict[str, Any]) -> None:
    for method, sub in (("POST", "addnic"), ("POST", "removenic"), ("GET", "hotplugcheck"), ("GET", "nosuch")):
        answer = await served.call(method, f"{ROOT}/vm1/{sub}", client=None, body={"interfaceName": "nic-1",
                                                                                      "networkName": "vlan1"})
        assert_status(answer, 401, "Unauthorized", "no client certificate")
    await assert_unchanged(api_client, running_vm)


async def test_a_certificate_with_a_name_not_allowed_is_401(served: Served, api_client: ApiClient,
                                                             running_vm: dict[str, Any]) -> None:
    answer = await served.call("POST", f"{ROOT}/vm1/removenic", client=served.proxy.client("someone-else"),
                               body={"interfaceName": "nic-1"})
    assert_status(answer, 401, "Unauthorized", "'someone-else' is not in requestheader-allowed-names")
    await assert_unchanged(api_client, running_vm)


async def test_a_request_naming_no_user_is_401(served: Served, running_vm: dict[str, Any]) -> None:
    answer = await served.call("GET", f"{ROOT}/vm1/hotplugcheck", user=None)
    assert_status(answer, 401, "Unauthorized", "no user")


async def test_a_certificate_from_another_ca_is_refused_at_the_handshake(
        served: Served, api_client: ApiClient, running_vm: dict[str, Any], tmp_path: Path) -> None:
    rogue = FrontProxy.make(tmp_path / "rogue", "rogue-ca")
    with pytest.raises(aiohttp.ClientError):
        await served.call("POST", f"{ROOT}/vm1/removenic", client=rogue.client(), body={"interfaceName": "nic-1"})
    await assert_unchanged(api_client, running_vm)


async def test_the_ca_is_followed_when_the_configmap_changes(
        served: Served, api_client: ApiClient, running_vm: dict[str, Any], tmp_path: Path) -> None:
    rotated = FrontProxy.make(tmp_path / "rotated", "front-proxy-ca-2")
    new_client = rotated.client()
    await served.set_configmap(configmap_data(rotated, [PROXY_NAME]))

    answer = await wait_for_status(served, new_client, 200)
    assert answer.body["eligible"] is True
    # the old CA is no longer trusted: a certificate it signed fails the handshake of a new connection
    with pytest.raises(aiohttp.ClientError):
        await served.call("POST", f"{ROOT}/vm1/removenic", body={"interfaceName": "nic-1"})
    await assert_unchanged(api_client, running_vm)


async def test_without_the_configmap_nobody_is_authenticated(served: Served, running_vm: dict[str, Any]) -> None:
    await served.set_configmap(None)
    answer = await wait_for_status(served, served.client, 401)
    assert_status(answer, 401, "Unauthorized", "front-proxy CA is not known")


async def wait_for_status(served: Served, client: tuple[Path, Path] | None, status: int) -> Answer:
    """Ask ``hotplugcheck`` until the answer has ``status`` (the ConfigMap is re-read every POLL_SECONDS)."""
    for _ in range(200):
        try:
            answer = await served.caller.call("GET", f"{ROOT}/vm1/hotplugcheck", client=client)
        except aiohttp.ClientError:  # a client certificate from a CA not yet loaded fails the handshake
            answer = Answer(0, None, None)
        if answer.status == status:
            return answer
        await asyncio.sleep(POLL_SECONDS)
    raise AssertionError(f"still {answer.status}: {answer.body}")


# -- discovery and OpenAPI: open to every caller, and what the aggregator needs ---------------------------


async def test_discovery_lists_the_group_and_the_four_subresources_without_a_certificate(served: Served) -> None:
    groups = await served.call("GET", "/apis", client=None)
    assert groups.body["kind"] == "APIGroupList"
    assert [group["name"] for group in groups.body["groups"]] == [GROUP]
    group = await served.call("GET", f"/apis/{GROUP}", client=None)
    assert group.body["preferredVersion"] == {"groupVersion": GROUP_VERSION, "version": "v1"}
    listed = await served.call("GET", f"/apis/{GROUP_VERSION}", client=None)
    assert listed.status == 200
    assert {item["name"]: (item["verbs"], item["namespaced"]) for item in listed.body["resources"]} == {
        "virtualmachines/addnic": (["create"], True), "virtualmachines/removenic": (["create"], True),
        "virtualmachines/hotunpluggablenics": (["get"], True), "virtualmachines/hotplugcheck": (["get"], True)}


async def test_openapi_documents_are_valid_and_point_at_each_other(served: Served) -> None:
    v2 = await served.call("GET", "/openapi/v2", client=None)
    assert (v2.status, v2.body["swagger"]) == (200, "2.0")
    index = await served.call("GET", "/openapi/v3", client=None)
    relative = index.body["paths"][f"apis/{GROUP_VERSION}"]["serverRelativeURL"]
    document = await served.call("GET", relative, client=None)
    assert document.body["openapi"].startswith("3.")
    operations = {path.rsplit("/", 1)[1]: set(item) - {"parameters"} for path, item in document.body["paths"].items()}
    assert operations == {name: {item.method.lower()} for name, item in SUBRESOURCES.items()}


async def test_other_routes_on_the_port_need_no_client_certificate_while_one_is_requested(served: Served) -> None:
    answer = await served.call("GET", "/healthz", client=None)
    assert answer.status == 200


@pytest.mark.parametrize(("data", "words"), [
    ({"requestheader-client-ca-file": "not a certificate"}, "front-proxy CA is not known"),
    ({"requestheader-client-ca-file": "-", "requestheader-allowed-names": "front-proxy-client"},
     "front-proxy CA is not known"),
    ({}, "front-proxy CA is not known"),
])
async def test_a_configmap_that_cannot_be_used_authenticates_nobody(
        served: Served, running_vm: dict[str, Any], data: dict[str, str], words: str) -> None:
    if data.get("requestheader-client-ca-file") == "-":  # a good CA, but the names are not a JSON list
        data = {**data, "requestheader-client-ca-file": served.proxy.ca_pem.decode()}
    await served.set_configmap(data)
    answer = await wait_for_status(served, served.client, 401)
    assert_status(answer, 401, "Unauthorized", words)


async def test_answered_requests_are_counted_by_subresource_and_code(served: Served,
                                                                    running_vm: dict[str, Any]) -> None:
    def count(subresource: str, code: str) -> float:
        return REGISTRY.get_sample_value("nichotplug_subresource_requests_total",
                                         {"subresource": subresource, "code": code}) or 0.0

    before = (count("hotplugcheck", "200"), count("hotplugcheck", "401"), count("unknown", "404"))
    await served.call("GET", f"{ROOT}/vm1/hotplugcheck")
    await served.call("GET", f"{ROOT}/vm1/hotplugcheck", client=None)
    await served.call("GET", f"{ROOT}/vm1/made-up-{id(served)}")
    after = (count("hotplugcheck", "200"), count("hotplugcheck", "401"), count("unknown", "404"))
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]

"""The action API as ``nichotplug serve`` mounts it (``service.setup_action_routes``), on the same TLS
app as our own webhooks, which are registered with the in-process API server: the action's write goes
through our mutating and validating webhooks like any write, and the service's cluster view lets
the action refuse a MAC clash before writing."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kubernetes_asyncio.client import AdmissionregistrationV1Api, ApiClient

from nichotplug.actions.http import setup_actions
from nichotplug.certs import CertBundle, server_ssl_context
from nichotplug.kube.cache import ClusterView, WatchSettings
from nichotplug.rules import nic_plans as codes
from nichotplug.service import build_webhook_app, setup_action_routes
from nichotplug.webhook.registration import webhook_configurations

from .conftest import ActionClient, client_context
from .objects import (
    create_nad,
    create_running_vm,
    iface,
    migrations,
    multus_net,
    nad,
    read_vm,
    spec_interfaces,
    vm,
    vmi,
)

FAST_WATCH = WatchSettings(watch_timeout=5.0, backoff_initial=0.02, backoff_cap=0.3, connect_timeout=2.0)
TAKEN_MAC = "02:00:00:00:99:99"


async def until(predicate: Any) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the cluster view never showed the expected state")


@pytest.fixture
async def view(api_client: ApiClient) -> AsyncIterator[ClusterView]:
    cluster_view = ClusterView(api_client, settings=FAST_WATCH)
    await cluster_view.start()
    await asyncio.wait_for(cluster_view.synced.wait(), 15)
    yield cluster_view
    await cluster_view.stop()


@pytest.fixture
async def service(aiohttp_server: Any, api_client: ApiClient, apiserver: Any, view: ClusterView,
                  serving_bundle: CertBundle) -> AsyncIterator[tuple[ActionClient, ActionClient]]:
    """(the serve app with webhooks + actions, a bare action app without the cluster view), both TLS."""
    app = build_webhook_app(view, synced=view.synced)
    setup_action_routes(app, api_client, argparse.Namespace(no_migrate=False), view)
    mounted = {route.resource.canonical for route in app.router.routes() if route.resource is not None}
    assert "/v1/harvester/vm/{namespace}/{name}" in mounted
    served = await aiohttp_server(app, ssl=server_ssl_context(serving_bundle))
    base_url = str(served.make_url("")).rstrip("/")
    mutating, validating = webhook_configurations("nichotplug", url=base_url, ca_bundle=serving_bundle.ca_cert_pem)
    admission = AdmissionregistrationV1Api(api_client)
    await admission.create_mutating_webhook_configuration(mutating)
    await admission.create_validating_webhook_configuration(validating)
    bare = web.Application()
    setup_actions(bare, api_client=api_client)  # no cluster view: only our webhook sees other VMs
    bare_served = await aiohttp_server(bare, ssl=server_ssl_context(serving_bundle))
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(serving_bundle)))
    yield (ActionClient(base_url, session, apiserver.admin_token),
           ActionClient(str(bare_served.make_url("")).rstrip("/"), session, apiserver.admin_token))
    await session.close()


@pytest.fixture
async def two_vms(api_client: ApiClient, view: ClusterView) -> None:
    """vm1 (eligible) and vm2, whose nic-1 uses TAKEN_MAC on default/vlan1 (cluster network mgmt)."""
    await create_nad(api_client, nad())
    await create_running_vm(api_client, vm(), vmi())
    await create_running_vm(api_client, vm("vm2", interfaces=[iface("nic-1", mac=TAKEN_MAC)],
                                           networks=[multus_net("nic-1", "default/vlan1")]), None)
    await until(lambda: view.get_vmi("default", "vm1") is not None and view.owners_of_mac(TAKEN_MAC))


async def test_add_nic_through_serve_passes_our_webhooks(
        service: tuple[ActionClient, ActionClient], api_client: ApiClient, two_vms: None) -> None:
    served, _ = service
    answer = await served.post("default", "vm1", "addNic", {"interfaceName": "dynif1", "networkName": "vlan1"})
    assert (answer.status, answer.body) == (204, None)
    added = spec_interfaces(await read_vm(api_client, "default", "vm1"))[-1]
    assert (added["name"], added["model"], added["bridge"]) == ("dynif1", "virtio", {})
    assert added["macAddress"] != TAKEN_MAC
    assert len(await migrations(api_client, "default")) == 1


async def test_the_cluster_view_refuses_a_mac_clash_before_writing(
        service: tuple[ActionClient, ActionClient], api_client: ApiClient, two_vms: None) -> None:
    served, _ = service
    before = await read_vm(api_client, "default", "vm1")
    answer = await served.post("default", "vm1", "addNic",
                               {"interfaceName": "dynif1", "networkName": "vlan1", "macAddress": TAKEN_MAC})
    assert answer.status == 409
    assert answer.body["code"] == codes.MAC_IN_USE
    assert "default/vm2 interface nic-1 on cluster network mgmt" in answer.body["message"]
    assert (await read_vm(api_client, "default", "vm1"))["metadata"]["resourceVersion"] == \
        before["metadata"]["resourceVersion"]


async def test_our_webhook_denial_is_passed_through_with_its_code_and_message(
        service: tuple[ActionClient, ActionClient], api_client: ApiClient, two_vms: None) -> None:
    _, bare = service
    answer = await bare.post("default", "vm1", "addNic",
                             {"interfaceName": "dynif1", "networkName": "vlan1", "macAddress": TAKEN_MAC})
    assert answer.status == 409
    assert answer.body["code"] == "AdmissionDenied"
    assert TAKEN_MAC in answer.body["message"]
    assert "vm2" in answer.body["message"]
    assert [i["name"] for i in spec_interfaces(await read_vm(api_client, "default", "vm1"))] == ["default", "nic-1"]
    assert await migrations(api_client, "default") == []

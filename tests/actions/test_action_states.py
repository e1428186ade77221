"""The action API on a stopped VM (the spec is edited, no migration), with a migration already pending
(none is added), and with nichotplug's own webhook down (the caller is told, not handed a raw 500)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from kubernetes_asyncio.client import AdmissionregistrationV1Api, ApiClient, CustomObjectsApi

from nichotplug.actions.flow import OUR_WEBHOOK_SUFFIX, webhook_unavailable
from nichotplug.certs import CertBundle
from nichotplug.kube.patch import WebhookUnreachable
from nichotplug.webhook.registration import webhook_configurations

from .conftest import ActionClient
from .objects import create_nad, create_running_vm, migrations, nad, read_vm, spec_interfaces, spec_networks, vm, vmi

pytestmark = pytest.mark.both_servers


@pytest.fixture
async def stopped_vm(api_client: ApiClient) -> dict[str, Any]:
    """VM default/vm1, halted (no VMI), with a pod NIC and nic-1 on bridge NAD default/vlan1."""
    await create_nad(api_client, nad())
    return await create_running_vm(api_client, vm(run_strategy="Halted", printable_status="Stopped"), None)


async def test_add_nic_on_a_stopped_vm_edits_the_spec_and_requests_no_migration(
        actions_client: ActionClient, api_client: ApiClient, stopped_vm: dict[str, Any]) -> None:
    answer = await actions_client.post("default", "vm1", "addNic", {"interfaceName": "dynif1", "networkName": "vlan1"})
    assert answer.status == 204, answer.body
    stored = await read_vm(api_client, "default", "vm1")
    added = spec_interfaces(stored)[-1]
    assert (added["name"], added["model"], added["bridge"]) == ("dynif1", "virtio", {})
    assert added["macAddress"]
    assert spec_networks(stored)[-1] == {"name": "dynif1", "multus": {"networkName": "default/vlan1"}}
    assert await migrations(api_client, "default") == []


async def test_remove_nic_on_a_stopped_vm_deletes_the_interface_and_its_network(
        actions_client: ActionClient, api_client: ApiClient, stopped_vm: dict[str, Any]) -> None:
    answer = await actions_client.post("default", "vm1", "removeNic", {"interfaceName": "nic-1"})
    assert answer.status == 204, answer.body
    stored = await read_vm(api_client, "default", "vm1")
    assert [item["name"] for item in spec_interfaces(stored)] == ["default"]
    assert [item["name"] for item in spec_networks(stored)] == ["default"]
    assert await migrations(api_client, "default") == []


async def test_a_second_hot_plug_while_a_migration_is_pending_requests_no_other(
        actions_client: ActionClient, api_client: ApiClient) -> None:
    await create_nad(api_client, nad())
    await create_running_vm(api_client, vm(), vmi())
    for name in ("dynif1", "dynif2"):
        answer = await actions_client.post("default", "vm1", "addNic", {"interfaceName": name, "networkName": "vlan1"})
        assert answer.status == 204, answer.body
    [pending] = await migrations(api_client, "default")
    assert pending["spec"]["vmiName"] == "vm1"
    # Once it has finished, the next change gets a migration of its own.
    await CustomObjectsApi(api_client).patch_namespaced_custom_object_status(  # as virt-controller reports it
        "kubevirt.io", "v1", "default", "virtualmachineinstancemigrations", pending["metadata"]["name"],
        {"status": {"phase": "Succeeded"}}, _content_type="application/merge-patch+json")
    answer = await actions_client.post("default", "vm1", "removeNic", {"interfaceName": "dynif1"})
    assert answer.status == 204, answer.body
    assert len(await migrations(api_client, "default")) == 2


@pytest.fixture
async def our_webhooks_down(api_client: ApiClient, serving_bundle: CertBundle) -> None:
    """nichotplug's webhook configurations registered, pointing at a port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mutating, validating = webhook_configurations("nichotplug", url=f"https://127.0.0.1:{port}",
                                                  ca_bundle=serving_bundle.ca_cert_pem)
    admission = AdmissionregistrationV1Api(api_client)
    await admission.create_mutating_webhook_configuration(mutating)
    await admission.create_validating_webhook_configuration(validating)


async def test_a_write_refused_because_our_webhook_is_down_says_so(
        actions_client: ActionClient, api_client: ApiClient, stopped_vm: dict[str, Any],
        our_webhooks_down: None) -> None:
    answer = await actions_client.post("default", "vm1", "addNic", {"interfaceName": "dynif1", "networkName": "vlan1"})
    assert answer.status == 503, answer.body
    assert answer.body["code"] == "WebhookUnavailable"
    message = answer.body["message"]
    assert message.startswith("nichotplug's admission webhook is not answering: VM writes are refused until it is "
                              "back (see its pods: kubectl get pods -A -l app.kubernetes.io/name=nichotplug). "
                              "The API server said: ")
    assert spec_interfaces(await read_vm(api_client, "default", "vm1")) == spec_interfaces(stopped_vm)


def test_the_pods_command_names_the_namespace_of_the_service_the_api_server_called() -> None:
    # kube-apiserver's wording when the Service has no ready endpoint (and, alike, for a refused connection).
    cause = ('failed to call webhook: Post "https://nichotplug.harvester-system.svc:443/v1/webhook/validation'
             '?timeout=5s": no endpoints available for service "nichotplug"')
    error = WebhookUnreachable(500, "InternalError", f'Internal error occurred: failed calling webhook '
                               f'"validate-vm{OUR_WEBHOOK_SUFFIX}": {cause}', f"validate-vm{OUR_WEBHOOK_SUFFIX}", cause)
    refusal = webhook_unavailable(error)
    assert (refusal.status, refusal.code) == (503, "WebhookUnavailable")
    pods = "kubectl -n harvester-system get pods -l app.kubernetes.io/name=nichotplug"
    assert f"(see its pods: {pods})" in refusal.message
    assert refusal.message.endswith(cause)


def test_every_webhook_we_register_is_recognised_as_ours() -> None:
    for configuration in webhook_configurations("nichotplug", url="https://127.0.0.1:1", ca_bundle=b"x"):
        assert all(webhook["name"].endswith(OUR_WEBHOOK_SUFFIX) for webhook in configuration["webhooks"])

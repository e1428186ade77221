"""The plugin's messages a person acts on: usage errors that name the flag, hints with the command to
paste, a VM looked for in the wrong namespace, a stopped VM, a pending migration, our webhook down."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from actions.objects import (
    create_nad,
    create_running_vm,
    ensure_namespace,
    grant,
    migrations,
    nad,
    read_vm,
    spec_interfaces,
    spec_networks,
    vm,
    vmi,
)
from kubernetes_asyncio.client import AdmissionregistrationV1Api, ApiClient

from nichotplug.certs import make_bundle
from nichotplug.plugin import main
from nichotplug.webhook.registration import webhook_configurations

from .test_plugin_commands import plugin

# Messages hold on the real kube-apiserver too (its wording is what the webhook-down message reads).
pytestmark = pytest.mark.both_servers


@pytest.mark.parametrize(("args", "line"), [
    (["add-nic", "vm1", "--network", "vlan1", "--mac", "zz:zz"],
     "kubectl nichotplug add-nic: error: argument --mac: 'zz:zz' is not a MAC address: write six two-digit hex "
     "groups separated by ':' or '-', e.g. 02:00:00:ab:cd:ef"),
    (["add-nic", "vm1", "--network", "vlan1", "--mac", "01:00:00:00:00:01"],
     "kubectl nichotplug add-nic: error: argument --mac: 01:00:00:00:00:01 is a multicast MAC address"),
    (["add-nic", "vm1", "--network", "vlan1", "--interface", "Bad_Name"],
     "kubectl nichotplug add-nic: error: argument --interface: 'Bad_Name' is not a valid interface name"),
    (["remove-nic", "vm1", "--interface", "Bad_Name"],
     "kubectl nichotplug remove-nic: error: argument --interface: 'Bad_Name' is not a valid interface name"),
    (["add-nic", "vm1", "--network", "a/b/c"],
     "kubectl nichotplug add-nic: error: argument --network: 'a/b/c' is not NAMESPACE/NAME or NAME"),
])
def test_a_bad_flag_value_is_a_usage_error_naming_the_flag_and_the_value_once(
        args: list[str], line: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(line)
    value = args[-1]
    assert error.count(value) == 1


@pytest.fixture
async def team_a(api_client: ApiClient) -> str:
    await ensure_namespace(api_client, "team-a")
    return "team-a"


async def test_hints_print_the_command_to_paste_with_its_namespace(
        kubeconfig: Path, api_client: ApiClient, team_a: str) -> None:
    await create_nad(api_client, nad(namespace=team_a))
    await create_running_vm(api_client, vm(namespace=team_a, host_devices=True), vmi(namespace=team_a))
    run = await plugin("add-nic", "vm1", "-n", team_a, "--network", "vlan1", kubeconfig=kubeconfig)
    assert run.code == 1
    assert (f"hint: run 'kubectl nichotplug check vm1 -n team-a --kubeconfig {kubeconfig}' to see every reason"
            in run.err)


async def test_a_vm_in_another_namespace_is_pointed_at(kubeconfig: Path, api_client: ApiClient, team_a: str) -> None:
    await create_running_vm(api_client, vm("web-1", namespace=team_a), None)
    run = await plugin("check", "web-1", kubeconfig=kubeconfig)  # the context's namespace: default
    assert run.code == 1
    assert run.err.splitlines() == [
        "error: VM default/web-1 not found",
        f"hint: a VM named web-1 is in namespace team-a: run 'kubectl nichotplug check web-1 -n team-a "
        f"--kubeconfig {kubeconfig}'",
    ]


async def test_a_namespace_that_does_not_exist_is_named(kubeconfig: Path) -> None:
    run = await plugin("check", "web-1", "-n", "nosuch", kubeconfig=kubeconfig)
    assert run.code == 1
    assert run.err.splitlines() == ["error: VM nosuch/web-1 not found", "error: namespace nosuch does not exist"]


async def test_without_rights_to_look_elsewhere_only_the_error_is_shown(
        cluster_server: Any, tmp_path: Path, api_client: ApiClient, team_a: str) -> None:
    await create_running_vm(api_client, vm("web-1", namespace=team_a), None)
    await grant(api_client, "default", "nobody", [  # may read VMs in default only
        {"apiGroups": ["kubevirt.io"], "resources": ["virtualmachines"], "verbs": ["get"]}])
    reader = cluster_server.write_kubeconfig(tmp_path / "reader.yaml", token=cluster_server.nobody_token)
    run = await plugin("check", "web-1", kubeconfig=reader)
    assert (run.code, run.err.splitlines()) == (1, ["error: VM default/web-1 not found"])


async def test_removing_an_interface_the_vm_does_not_have_lists_those_it_has(
        kubeconfig: Path, api_client: ApiClient) -> None:
    await create_nad(api_client, nad())
    await create_running_vm(api_client, vm(), vmi())
    run = await plugin("remove-nic", "vm1", "--interface", "nosuch", kubeconfig=kubeconfig)
    assert run.code == 1
    assert "error: VM default/vm1 has no interface named 'nosuch'; its interfaces: default, nic-1" in run.err


@pytest.fixture
async def stopped_vm(api_client: ApiClient) -> dict[str, Any]:
    await create_nad(api_client, nad())
    return await create_running_vm(api_client, vm(run_strategy="Halted", printable_status="Stopped"), None)


async def test_add_and_remove_on_a_stopped_vm_edit_its_spec_and_say_so(
        kubeconfig: Path, api_client: ApiClient, stopped_vm: dict[str, Any]) -> None:
    added = await plugin("add-nic", "vm1", "--network", "vlan1", kubeconfig=kubeconfig)
    assert added.code == 0, added.err
    mac = spec_interfaces(await read_vm(api_client, "default", "vm1"))[-1]["macAddress"]
    assert added.out.splitlines() == [
        f"interface nic-2 (MAC {mac}) added to the spec of VM default/vm1; the VM is stopped, so nothing is "
        "hot-plugged: it has the interface from its next start"]
    removed = await plugin("remove-nic", "vm1", "--interface", "nic-1", kubeconfig=kubeconfig)
    assert removed.code == 0, removed.err
    assert removed.out.splitlines() == [
        "interface nic-1 and its network removed from the spec of VM default/vm1; the VM is stopped, so nothing "
        "is unplugged: it starts without them"]
    stored = await read_vm(api_client, "default", "vm1")
    assert [item["name"] for item in spec_interfaces(stored)] == ["default", "nic-2"]
    assert [item["name"] for item in spec_networks(stored)] == ["default", "nic-2"]
    assert await migrations(api_client, "default") == []
    check = await plugin("check", "vm1", kubeconfig=kubeconfig)
    assert "(it is stopped: add-nic and remove-nic edit its spec instead, nothing to hot-plug)" in check.out


async def test_a_pending_migration_is_reported_not_doubled(kubeconfig: Path, api_client: ApiClient) -> None:
    await create_nad(api_client, nad())
    await create_running_vm(api_client, vm(), vmi())
    first = await plugin("add-nic", "vm1", "--network", "vlan1", kubeconfig=kubeconfig)
    second = await plugin("add-nic", "vm1", "--network", "vlan1", kubeconfig=kubeconfig)
    assert (first.code, second.code) == (0, 0), first.err + second.err
    [pending] = await migrations(api_client, "default")
    name = pending["metadata"]["name"]
    assert f"live migration {name} requested to apply it now" in first.out
    assert (f"live migration {name} is already pending and applies this change too; no other was requested"
            in second.out)


async def take_our_webhooks_down(api_client: ApiClient) -> None:
    """Register nichotplug's webhook configurations pointing at a port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bundle = make_bundle(dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    mutating, validating = webhook_configurations("nichotplug", url=f"https://127.0.0.1:{port}",
                                                  ca_bundle=bundle.ca_cert_pem)
    admission = AdmissionregistrationV1Api(api_client)
    await admission.create_mutating_webhook_configuration(mutating)
    await admission.create_validating_webhook_configuration(validating)


DOWN = ("error: nichotplug's admission webhook is not answering: VM writes are refused until it is back (see its "
        "pods: kubectl get pods -A -l app.kubernetes.io/name=nichotplug). The API server said: ")


async def test_with_our_webhook_down_add_nic_and_check_both_say_so(kubeconfig: Path, api_client: ApiClient) -> None:
    await create_nad(api_client, nad())
    await create_running_vm(api_client, vm(), vmi())
    await take_our_webhooks_down(api_client)
    added = await plugin("add-nic", "vm1", "--network", "vlan1", kubeconfig=kubeconfig)
    assert added.code == 1
    assert added.err.startswith(DOWN), added.err
    checked = await plugin("check", "vm1", kubeconfig=kubeconfig)
    assert checked.code == 1
    assert checked.out.strip() == "VM default/vm1 is eligible for NIC hot-plug and hot-unplug"
    assert checked.err.startswith(DOWN), checked.err

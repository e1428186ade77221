"""``kubectl nichotplug`` driven through real kubectl's plugin mechanism (found on PATH), against the
in-process API server. kubectl runs as a subprocess of the event loop that serves the API."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from actions.objects import (
    create_nad,
    create_running_vm,
    ensure_namespace,
    iface,
    migrations,
    multus_net,
    nad,
    read_vm,
    spec_interfaces,
    spec_networks,
    vm,
    vmi,
)
from kubernetes_asyncio.client import ApiClient

# kubectl and the plugin against both API servers (the real one too: what users run).
pytestmark = [pytest.mark.kubectl, pytest.mark.both_servers]

VENV_BIN = Path(sys.executable).parent  # where the kubectl-nichotplug console script is installed


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


async def kubectl(*args: str, kubeconfig: Path | str | None, home: Path) -> Run:
    env = {"PATH": f"{VENV_BIN}{os.pathsep}/usr/local/bin{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(home)}
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    process = await asyncio.create_subprocess_exec(
        "kubectl", *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await process.communicate()
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


@pytest.fixture
async def running_vm(api_client: ApiClient) -> dict[str, Any]:
    await create_nad(api_client, nad())
    return await create_running_vm(api_client, vm(), vmi())


async def test_kubectl_finds_the_plugin_on_path(kubeconfig: Path, home: Path) -> None:
    listed = await kubectl("plugin", "list", kubeconfig=kubeconfig, home=home)
    assert str(VENV_BIN / "kubectl-nichotplug") in listed.out


async def test_add_nic_with_a_generated_name_and_mac(kubeconfig: Path, home: Path, api_client: ApiClient,
                                                     running_vm: dict[str, Any]) -> None:
    run = await kubectl("nichotplug", "add-nic", "vm1", "--network", "default/vlan1", kubeconfig=kubeconfig, home=home)
    assert run.code == 0, run.err
    stored = await read_vm(api_client, "default", "vm1")
    added = spec_interfaces(stored)[-1]
    assert added["name"] == "nic-2"  # nic-1 is taken
    assert f"interface nic-2 (MAC {added['macAddress']}) added to VM default/vm1" in run.out
    assert spec_networks(stored)[-1] == {"name": "nic-2", "multus": {"networkName": "default/vlan1"}}
    [migration] = await migrations(api_client, "default")
    assert f"live migration {migration['metadata']['name']} requested" in run.out


async def test_add_nic_with_name_mac_and_namespace_flags(kubeconfig: Path, home: Path, api_client: ApiClient) -> None:
    await ensure_namespace(api_client, "tenant")
    await create_nad(api_client, nad(namespace="tenant"))
    await create_running_vm(api_client, vm("web", "tenant", networks=[
        {"name": "default", "pod": {}}, multus_net("nic-1", "vlan1")]), vmi("web", "tenant"))
    run = await kubectl("nichotplug", "add-nic", "web", "-n", "tenant", "--network", "vlan1", "--interface", "data",
                        "--mac", "02:AA:00:00:00:01", "--no-migrate", kubeconfig=kubeconfig, home=home)
    assert run.code == 0, run.err
    added = spec_interfaces(await read_vm(api_client, "tenant", "web"))[-1]
    assert (added["name"], added["macAddress"]) == ("data", "02:aa:00:00:00:01")
    assert "no migration requested" in run.out
    assert await migrations(api_client, "tenant") == []


async def test_namespace_comes_from_the_kubeconfig_context(cluster_server: Any, tmp_path: Path, home: Path,
                                                          api_client: ApiClient) -> None:
    await ensure_namespace(api_client, "tenant")
    await create_nad(api_client, nad(namespace="tenant"))
    await create_running_vm(api_client, vm("web", "tenant", networks=[
        {"name": "default", "pod": {}}, multus_net("nic-1", "vlan1")]), vmi("web", "tenant"))
    tenant_config = cluster_server.write_kubeconfig(tmp_path / "tenant.yaml", namespace="tenant")
    run = await kubectl("nichotplug", "check", "web", kubeconfig=tenant_config, home=home)
    assert (run.code, run.out.strip()) == (0, "VM tenant/web is eligible for NIC hot-plug and hot-unplug")


async def test_remove_nic(kubeconfig: Path, home: Path, api_client: ApiClient, running_vm: dict[str, Any]) -> None:
    run = await kubectl("nichotplug", "remove-nic", "vm1", "--interface", "nic-1", kubeconfig=kubeconfig, home=home)
    assert run.code == 0, run.err
    assert "interface nic-1 of VM default/vm1 set to state absent (unplug requested)" in run.out
    assert spec_interfaces(await read_vm(api_client, "default", "vm1"))[1]["state"] == "absent"
    assert len(await migrations(api_client, "default")) == 1


async def test_check_lists_every_reason_and_exits_1(kubeconfig: Path, home: Path, api_client: ApiClient) -> None:
    await create_nad(api_client, nad())
    machine = vm(labels={"harvesterhci.io/creator": "docker-machine-driver-harvester"},
                 node_selector={"kubernetes.io/hostname": "node1"},
                 interfaces=[iface("default", binding="masquerade"), iface("nic-1", mac="02:00:00:00:00:02")])
    await create_running_vm(api_client, machine, vmi(ready=False))
    run = await kubectl("nichotplug", "check", "vm1", kubeconfig=kubeconfig, home=home)
    assert run.code == 1
    reasons = [line for line in run.out.splitlines() if line.startswith("  - ")]
    assert len(reasons) == 4
    for words, reason in zip(["guest cluster", "not ready", "pinned to node node1", "stop the VM once"], reasons,
                             strict=True):
        assert words in reason


@pytest.mark.parametrize("args", [["nichotplug", "add-nic", "vm1"], ["nichotplug", "explode", "vm1"]])
async def test_usage_errors_exit_2(kubeconfig: Path, home: Path, args: list[str]) -> None:
    run = await kubectl(*args, kubeconfig=kubeconfig, home=home)
    assert run.code == 2
    assert "usage: kubectl nichotplug" in run.err



"""While no nichotplug pod answers, as an operator sees it through kubectl.

The chart's webhook configurations are registered calling an address where nothing listens. VM
writes are refused (validation fails closed: an unchecked write could duplicate a MAC), but a VM
that is being deleted is not held up: virt-controller's removal of its finalizer is an UPDATE that
the webhooks' match condition leaves alone, so the VM goes.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
import yaml

from .support import KUBECTL, install_url_webhooks, kubectl

pytestmark = pytest.mark.kubectl

FINALIZER = "kubevirt.io/virtualMachineControllerFinalize"


def nowhere() -> str:
    """An https URL on a local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"https://127.0.0.1:{probe.getsockname()[1]}"


def vm_manifest(name: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "default", "finalizers": [FINALIZER]},
        "spec": {"runStrategy": "Halted", "template": {"spec": {
            "domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {},
                                                   "macAddress": "02:00:00:00:00:01"}]}},
            "networks": [{"name": "default", "pod": {}}]}}},
    })


async def refused(kubeconfig: Path, *args: str) -> str:
    """Run kubectl expecting a refusal; its stderr."""
    process = await asyncio.create_subprocess_exec(
        KUBECTL, "--kubeconfig", str(kubeconfig), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode != 0, f"kubectl {' '.join(args)} was expected to fail"
    return err.decode()


async def test_an_outage_refuses_vm_edits_but_lets_deleted_vms_go(kubeconfig: Path) -> None:
    await kubectl(kubeconfig, "apply", "-f", "-", stdin=vm_manifest("vm1"))
    await install_url_webhooks(kubeconfig, nowhere())

    stderr = await refused(kubeconfig, "label", "vm", "vm1", "team=a")
    assert 'failed calling webhook "validate-vm.nichotplug.harvesterhci.io"' in stderr

    await kubectl(kubeconfig, "delete", "vm", "vm1", "--wait=false")
    deleting = json.loads(await kubectl(kubeconfig, "get", "vm", "vm1", "-o", "json"))
    assert deleting["metadata"]["deletionTimestamp"]
    await kubectl(kubeconfig, "patch", "vm", "vm1", "--type=json",
                  "-p", '[{"op": "remove", "path": "/metadata/finalizers"}]')
    assert "NotFound" in await refused(kubeconfig, "get", "vm", "vm1")

"""While no nichotplug pod answers, as an operator sees it through kubectl.

The chart's webhook configurations, as Helm renders them, are registered calling an address where
nothing listens. The
validating webhook fails closed (an unchecked write could duplicate a MAC), but its match conditions
keep it out of every write it has nothing to judge: labels, annotations, finalizers, starting and
stopping a VM go through, and so does virt-controller's removal of the finalizer of a VM being
deleted. A new VM, and an UPDATE of the interfaces, the networks or the observed-MAC annotation, are
refused until nichotplug answers again. Everything here runs on the in-process and on a real
kube-apiserver, with the same configurations.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
import yaml

from nichotplug.webhook.registration import webhook_configurations

from .support import KUBECTL, RELEASE, kubectl, render_objects

pytestmark = [pytest.mark.kubectl, pytest.mark.both_servers]

FINALIZER = "kubevirt.io/virtualMachineControllerFinalize"
REFUSED_BY_OUTAGE = 'failed calling webhook "validate-vm.nichotplug.harvesterhci.io"'
INTERFACES = "/spec/template/spec/domain/devices/interfaces"


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


async def refused(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    """Run kubectl expecting a refusal; its stderr."""
    process = await asyncio.create_subprocess_exec(
        KUBECTL, "--kubeconfig", str(kubeconfig), *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), timeout=60)
    assert process.returncode != 0, f"kubectl {' '.join(args)} was expected to fail"
    return err.decode()


def json_patch(*ops: dict[str, object]) -> tuple[str, ...]:
    return ("patch", "vm", "vm1", "--type=json", "-p", json.dumps(list(ops)))


def merge_patch(patch: dict[str, object]) -> tuple[str, ...]:
    return ("patch", "vm", "vm1", "--type=merge", "-p", json.dumps(patch))


WRITES_NOTHING_TO_JUDGE = {
    "label": ("label", "vm", "vm1", "team=a"),
    "other-annotation": ("annotate", "vm", "vm1", "example.com/owner=ops"),
    "start": merge_patch({"spec": {"runStrategy": "Always"}}),
    "stop": merge_patch({"spec": {"runStrategy": "Halted"}}),
    "finalizer-add": json_patch({"op": "add", "path": "/metadata/finalizers/-", "value": "example.com/keep"}),
    "finalizer-remove": json_patch({"op": "remove", "path": "/metadata/finalizers"}),
}

WRITES_TO_JUDGE = {
    "interface-added": json_patch({"op": "add", "path": f"{INTERFACES}/-", "value": {
        "name": "nic2", "bridge": {}, "macAddress": "02:00:00:00:00:02"}}),
    "mac-changed": json_patch({"op": "replace", "path": f"{INTERFACES}/0/macAddress", "value": "02:00:00:00:00:03"}),
    "network-changed": json_patch({"op": "add", "path": "/spec/template/spec/networks/-",
                                   "value": {"name": "nic2", "multus": {"networkName": "default/vlan1"}}}),
    "observed-mac-annotation": ("annotate", "vm", "vm1", 'harvesterhci.io/mac-address={"default":"02:00:00:00:00:09"}'),
}


async def until_in_force(kubeconfig: Path, refusal: str = REFUSED_BY_OUTAGE) -> None:
    """Wait until the API server applies the webhook configurations just written (a real one loads them
    from its watch a moment later): a server-side dry run of a new VM is refused."""
    for _ in range(100):
        process = await asyncio.create_subprocess_exec(
            KUBECTL, "--kubeconfig", str(kubeconfig), "create", "--dry-run=server", "-f", "-",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(process.communicate(vm_manifest("probe").encode()), timeout=60)
        if process.returncode != 0 and refusal in err.decode():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the webhook configurations were not in force after 10 s: {err.decode()}")


async def install_chart_webhooks(kubeconfig: Path, url: str) -> None:
    """The chart's two webhook configurations as Helm renders them, calling ``url`` instead of the Service
    (the only change: neither server here reaches a Service)."""
    for obj in render_objects():
        if obj["kind"] in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            for hook in obj["webhooks"]:
                hook["clientConfig"] = {"url": url + hook["clientConfig"]["service"]["path"]}
            await kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump(obj))


async def install_nowhere(kubeconfig: Path) -> None:
    await install_chart_webhooks(kubeconfig, nowhere())
    await until_in_force(kubeconfig)


@pytest.mark.parametrize("write", sorted(WRITES_NOTHING_TO_JUDGE))
async def test_an_outage_lets_writes_with_nothing_to_judge_through(kubeconfig: Path, write: str) -> None:
    await kubectl(kubeconfig, "apply", "-f", "-", stdin=vm_manifest("vm1"))
    await install_nowhere(kubeconfig)
    await kubectl(kubeconfig, *WRITES_NOTHING_TO_JUDGE[write])


@pytest.mark.parametrize("write", sorted(WRITES_TO_JUDGE))
async def test_an_outage_refuses_writes_the_rules_must_judge(kubeconfig: Path, write: str) -> None:
    await kubectl(kubeconfig, "apply", "-f", "-", stdin=vm_manifest("vm1"))
    before = json.loads(await kubectl(kubeconfig, "get", "vm", "vm1", "-o", "json"))
    await install_nowhere(kubeconfig)
    assert REFUSED_BY_OUTAGE in await refused(kubeconfig, *WRITES_TO_JUDGE[write])
    after = json.loads(await kubectl(kubeconfig, "get", "vm", "vm1", "-o", "json"))
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


async def test_an_outage_refuses_a_new_vm(kubeconfig: Path) -> None:
    await install_nowhere(kubeconfig)
    assert REFUSED_BY_OUTAGE in await refused(kubeconfig, "create", "-f", "-", stdin=vm_manifest("vm2"))
    assert "NotFound" in await refused(kubeconfig, "get", "vm", "vm2")


async def test_an_outage_lets_deleted_vms_go(kubeconfig: Path) -> None:
    await kubectl(kubeconfig, "apply", "-f", "-", stdin=vm_manifest("vm1"))
    await install_nowhere(kubeconfig)
    await kubectl(kubeconfig, "delete", "vm", "vm1", "--wait=false")
    deleting = json.loads(await kubectl(kubeconfig, "get", "vm", "vm1", "-o", "json"))
    assert deleting["metadata"]["deletionTimestamp"]
    await kubectl(kubeconfig, "patch", "vm", "vm1", "--type=json",
                  "-p", '[{"op": "remove", "path": "/metadata/finalizers"}]')
    assert "NotFound" in await refused(kubeconfig, "get", "vm", "vm1")


# -- a match condition that fails to evaluate: the failure policy decides, on both servers alike -------

BROKEN = {"name": "broken", "expression": "object.spec.nosuchfield == 1"}  # no has() guard: an error
BROKEN_REFUSAL = ("Error from server (Forbidden): virtualmachines.kubevirt.io \"vm1\" is forbidden: expression "
                  "'object.spec.nosuchfield == 1' resulted in error: no such key: nosuchfield")


async def install_validating(kubeconfig: Path, policy: str, conditions: list[dict[str, str]]) -> None:
    """Our validating configuration (calling nowhere) with other match conditions and failure policy."""
    validating = webhook_configurations(RELEASE, url=nowhere())[1]
    hook = validating["webhooks"][0]
    hook["failurePolicy"], hook["matchConditions"] = policy, conditions
    await kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump(validating))


async def label_until(kubeconfig: Path, *, refused: bool) -> str:
    """Label vm1 until the write is refused (its stderr) or goes through (""), for up to 10 s: a real
    API server applies a configuration written a moment ago only once its watch delivers it."""
    err = b""
    for attempt in range(100):
        process = await asyncio.create_subprocess_exec(
            KUBECTL, "--kubeconfig", str(kubeconfig), "label", "--overwrite", "vm", "vm1", f"attempt={attempt}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(process.communicate(), timeout=60)
        if (process.returncode != 0) == refused:
            return err.decode()
        await asyncio.sleep(0.1)
    raise AssertionError(f"a label write was still {'allowed' if refused else 'refused'} after 10 s: {err.decode()}")


async def test_a_condition_that_fails_to_evaluate_refuses_the_write_under_fail(kubeconfig: Path) -> None:
    await kubectl(kubeconfig, "apply", "-f", "-", stdin=vm_manifest("vm1"))
    await install_validating(kubeconfig, "Fail", [BROKEN])
    assert BROKEN_REFUSAL in await label_until(kubeconfig, refused=True)


@pytest.mark.parametrize(("policy", "conditions"), [
    ("Ignore", [BROKEN]),
    ("Fail", [BROKEN, {"name": "never", "expression": "false"}]),
], ids=["ignore", "a-false-condition-wins"])
async def test_a_condition_that_fails_to_evaluate_skips_the_webhook_otherwise(
        kubeconfig: Path, policy: str, conditions: list[dict[str, str]]) -> None:
    await kubectl(kubeconfig, "apply", "-f", "-", stdin=vm_manifest("vm1"))
    await install_validating(kubeconfig, "Fail", [BROKEN])
    await label_until(kubeconfig, refused=True)  # in force: the same error refuses the write under Fail
    await install_validating(kubeconfig, policy, conditions)
    assert await label_until(kubeconfig, refused=False) == ""

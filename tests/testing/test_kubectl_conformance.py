"""The real kubectl (v1.32) against the in-process API server: what a user types must just work.

Each test drives ``/usr/bin/kubectl`` with the fixture's admin kubeconfig and a cache directory
in ``tmp_path`` (so discovery and OpenAPI are fetched from this server, never from a cache), and
compares what kubectl asks with ``fixtures/kubectl/requests-v8.txt`` recorded against a real
kube-apiserver.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from nichotplug.testing.fixtures import SHARED_FIXTURES
from nichotplug.testing.server import ApiServer

from .admission_support import ScriptedWebhook, configuration, tls_bundle, webhook
from .api_support import vm

pytestmark = [pytest.mark.kubectl,
              pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")]

KUBECTL_FIXTURES = SHARED_FIXTURES / "kubectl"

VM_NAME = "kv-vm"


def vm_manifest(name: str = VM_NAME, run_strategy: str = "Halted", labels: dict[str, str] | None = None,
                namespace: str = "default") -> str:
    return yaml.safe_dump(vm(name, namespace, labels=labels or {"app": "demo"}, run_strategy=run_strategy))


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Kubectl:
    """Runs kubectl without blocking the event loop the API server lives on."""

    kubeconfig: Path
    workdir: Path

    async def __call__(self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.workdir),
                       "TMPDIR": str(self.workdir), "KUBECONFIG": "/nonexistent", **(env or {})}
        process = await asyncio.create_subprocess_exec(
            "kubectl", "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.workdir / "cache"), *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=environment)
        out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin is not None else None), 60)
        assert process.returncode is not None
        return Result(process.returncode, out.decode(), err.decode())

    async def ok(self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
        result = await self(*args, env=env, stdin=stdin)
        assert result.returncode == 0, f"kubectl {' '.join(args)} failed:\n{result.stderr}"
        return result

    async def get_vm(self, name: str = VM_NAME) -> dict[str, Any]:
        return dict(json.loads((await self.ok("get", "vm", name, "-n", "default", "-o", "json")).stdout))

    def write(self, file_name: str, text: str) -> Path:
        path = self.workdir / file_name
        path.write_text(text)
        return path


@pytest.fixture
def kubectl(kubeconfig: Path, tmp_path: Path) -> Kubectl:
    return Kubectl(kubeconfig, tmp_path)


@pytest.fixture
async def scripted_webhook() -> AsyncIterator[ScriptedWebhook]:
    server = ScriptedWebhook(tls_bundle())
    await server.start()
    yield server
    await server.stop()


# ----------------------------------------------------------------------- the recorded request flow

def _recorded_requests(section: str) -> list[str]:
    """``METHOD path`` lines of one command in requests-v8.txt, without hashes and timeouts."""
    text = (KUBECTL_FIXTURES / "requests-v8.txt").read_text()
    block = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return [_normalised(line) for line in block.splitlines() if re.match(r"^(GET|POST|PUT|PATCH|DELETE) /", line)]


def _normalised(request_line: str) -> str:
    method, _, url = request_line.partition(" ")
    path = re.sub(r"https://[^/]+", "", url)
    path = re.sub(r"hash=[0-9A-F]+&?", "", path)
    path = re.sub(r"[?&]?timeout=32s", "", path).rstrip("?&")
    return f"{method} {path}"


def _requests_in_log(stderr: str) -> list[str]:
    lines = re.findall(r"round_trippers\.go:\d+\] ((?:GET|POST|PUT|PATCH|DELETE) https://\S+)", stderr)
    return [_normalised(line) for line in lines]


@pytest.mark.skipif(not KUBECTL_FIXTURES.is_dir(), reason="recorded fixtures not on this machine")
async def test_apply_asks_what_it_asks_a_real_server(kubectl: Kubectl, tmp_path: Path) -> None:
    # The namespace is made by another kubectl (its own cache), so the recorded one starts cold.
    (tmp_path / "setup").mkdir()
    setup = Kubectl(kubectl.kubeconfig, tmp_path / "setup")
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kv7"}}
    await setup.ok("apply", "-f", str(setup.write("ns.yaml", yaml.safe_dump(namespace))))

    manifest = kubectl.write("vm.yaml", vm_manifest(namespace="kv7"))
    result = await kubectl.ok("apply", "-f", str(manifest), "-v=8")
    recorded = _recorded_requests("kubectl apply -f kv7.yaml")
    assert _requests_in_log(result.stderr) == recorded
    assert result.stdout.strip() == "virtualmachine.kubevirt.io/kv-vm created"
    assert "failed to download openapi" not in result.stderr


@pytest.mark.skipif(not KUBECTL_FIXTURES.is_dir(), reason="recorded fixtures not on this machine")
async def test_get_edit_patch_delete_ask_what_they_ask_a_real_server(kubectl: Kubectl, tmp_path: Path) -> None:
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kv7"}}
    await kubectl.ok("apply", "-f", str(kubectl.write("ns.yaml", yaml.safe_dump(namespace))))
    await kubectl.ok("apply", "-f", str(kubectl.write("vm.yaml", vm_manifest(namespace="kv7"))))
    editor = _editor_script(tmp_path, "s/runStrategy: Halted/runStrategy: Always/")
    commands = {
        "kubectl get vm kv-vm -n kv7 -o yaml": ("get", "vm", VM_NAME, "-n", "kv7", "-o", "yaml"),
        "kubectl edit vm kv-vm -n kv7": ("edit", "vm", VM_NAME, "-n", "kv7"),
        "kubectl patch vm kv-vm -n kv7 --type=json": (
            "patch", "vm", VM_NAME, "-n", "kv7", "--type=json",
            "-p", '[{"op":"add","path":"/metadata/labels/c","value":"d1"}]'),
        "kubectl delete vm kv-vm -n kv7": ("delete", "vm", VM_NAME, "-n", "kv7"),
    }
    for section, args in commands.items():
        result = await kubectl.ok(*args, "-v=8", env={"EDITOR": str(editor)})
        assert _requests_in_log(result.stderr) == _recorded_requests(section), section


# ----------------------------------------------------------------------------- the user's commands

async def test_apply_get_patch_delete_round_trip(kubectl: Kubectl) -> None:
    manifest = kubectl.write("vm.yaml", vm_manifest())
    await kubectl.ok("apply", "-f", str(manifest))

    as_yaml = yaml.safe_load((await kubectl.ok("get", "vm", VM_NAME, "-o", "yaml")).stdout)
    assert as_yaml["spec"]["runStrategy"] == "Halted"
    assert as_yaml["metadata"]["labels"] == {"app": "demo"}
    assert as_yaml["metadata"]["generation"] == 1
    assert "kubectl.kubernetes.io/last-applied-configuration" in as_yaml["metadata"]["annotations"]

    patched = await kubectl.ok("patch", "vm", VM_NAME, "--type=json",
                               "-p", '[{"op":"add","path":"/metadata/labels/c","value":"d1"}]')
    assert patched.stdout.strip() == "virtualmachine.kubevirt.io/kv-vm patched"
    assert (await kubectl.get_vm())["metadata"]["labels"] == {"app": "demo", "c": "d1"}

    await kubectl.ok("patch", "vm", VM_NAME, "--type=merge", "-p", '{"spec":{"runStrategy":"Always"}}')
    after_merge = await kubectl.get_vm()
    assert after_merge["spec"]["runStrategy"] == "Always"
    assert after_merge["metadata"]["generation"] == 2

    # re-applying the manifest puts back what it owns and keeps what others added
    reapplied = await kubectl.ok("apply", "-f", str(manifest))
    assert reapplied.stdout.strip() == "virtualmachine.kubevirt.io/kv-vm configured"
    after_apply = await kubectl.get_vm()
    assert after_apply["spec"]["runStrategy"] == "Halted"
    assert after_apply["metadata"]["labels"] == {"app": "demo", "c": "d1"}

    deleted = await kubectl.ok("delete", "vm", VM_NAME)
    assert deleted.stdout.strip() == 'virtualmachine.kubevirt.io "kv-vm" deleted'
    missing = await kubectl("get", "vm", VM_NAME)
    assert missing.returncode == 1
    assert 'virtualmachines.kubevirt.io "kv-vm" not found' in missing.stderr


async def test_a_failed_json_patch_test_changes_nothing(kubectl: Kubectl) -> None:
    await kubectl.ok("apply", "-f", str(kubectl.write("vm.yaml", vm_manifest())))
    before = await kubectl.get_vm()
    result = await kubectl("patch", "vm", VM_NAME, "--type=json", "-p",
                           '[{"op":"test","path":"/spec/runStrategy","value":"Always"},'
                           '{"op":"replace","path":"/spec/runStrategy","value":"Manual"}]')
    assert result.returncode == 1
    # what kubectl prints for the real server's answer (fixtures/apiserver/06: 422 Invalid, no causes)
    assert result.stderr.strip() == ("The request is invalid: "
                                     "the server rejected our request due to an error in our request")
    assert await kubectl.get_vm() == before


async def test_edit_with_an_editor_script_changes_the_vm(kubectl: Kubectl, tmp_path: Path) -> None:
    await kubectl.ok("apply", "-f", str(kubectl.write("vm.yaml", vm_manifest())))
    editor = _editor_script(tmp_path, "s/runStrategy: Halted/runStrategy: Always/")
    result = await kubectl.ok("edit", "vm", VM_NAME, env={"EDITOR": str(editor)})
    assert result.stdout.strip() == "virtualmachine.kubevirt.io/kv-vm edited"
    vm = await kubectl.get_vm()
    assert vm["spec"]["runStrategy"] == "Always"
    assert vm["metadata"]["generation"] == 2


async def test_edit_without_changes_leaves_the_vm_alone(kubectl: Kubectl, tmp_path: Path) -> None:
    await kubectl.ok("apply", "-f", str(kubectl.write("vm.yaml", vm_manifest())))
    before = await kubectl.get_vm()
    result = await kubectl.ok("edit", "vm", VM_NAME, env={"EDITOR": str(_editor_script(tmp_path, "s/^$//"))})
    assert "Edit cancelled, no changes made." in result.stderr
    assert await kubectl.get_vm() == before


async def test_edit_into_a_schema_violation_is_refused(kubectl: Kubectl, tmp_path: Path) -> None:
    await kubectl.ok("apply", "-f", str(kubectl.write("vm.yaml", vm_manifest())))
    before = await kubectl.get_vm()
    editor = _editor_script(tmp_path, "s/guest: 1Gi/guest: [1, 2]/")
    result = await kubectl("edit", "vm", VM_NAME, env={"EDITOR": str(editor)})
    assert result.returncode == 1
    assert 'virtualmachines.kubevirt.io "kv-vm" is invalid' in result.stderr
    assert await kubectl.get_vm() == before


def _editor_script(directory: Path, sed_expression: str) -> Path:
    script = directory / "editor.sh"
    script.write_text(f"#!/bin/sh\nsed -i '{sed_expression}' \"$1\"\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


async def test_create_dry_run_server_stores_nothing(kubectl: Kubectl) -> None:
    manifest = kubectl.write("vm.yaml", vm_manifest())
    result = await kubectl.ok("create", "--dry-run=server", "-f", str(manifest))
    assert result.stdout.strip() == "virtualmachine.kubevirt.io/kv-vm created (server dry run)"
    assert (await kubectl("get", "vm", VM_NAME)).returncode == 1


async def test_server_side_apply_of_the_crds_and_a_vm(kubectl: Kubectl) -> None:
    result = await kubectl.ok("apply", "--server-side", "-f", str(kubectl.write("vm.yaml", vm_manifest())))
    assert result.stdout.strip() == "virtualmachine.kubevirt.io/kv-vm serverside-applied"
    assert (await kubectl.get_vm())["spec"]["runStrategy"] == "Halted"


async def test_discovery_short_names_and_categories(kubectl: Kubectl) -> None:
    await kubectl.ok("apply", "-f", str(kubectl.write("vm.yaml", vm_manifest())))
    resources = (await kubectl.ok("api-resources", "--api-group=kubevirt.io", "-o", "name")).stdout.split()
    assert resources == ["virtualmachineinstancemigrations.kubevirt.io", "virtualmachineinstances.kubevirt.io",
                         "virtualmachines.kubevirt.io"]
    by_short_name = await kubectl.ok("get", "vms", "-o", "name")
    assert by_short_name.stdout.strip() == "virtualmachine.kubevirt.io/kv-vm"
    by_category = await kubectl.ok("get", "all", "-o", "name")
    assert "virtualmachine.kubevirt.io/kv-vm" in by_category.stdout.split()


async def test_get_prints_the_crd_printer_columns(kubectl: Kubectl) -> None:
    await kubectl.ok("apply", "-f", str(kubectl.write("vm.yaml", vm_manifest())))
    listed = (await kubectl.ok("get", "vm")).stdout.splitlines()
    assert listed[0].split() == ["NAME", "AGE", "STATUS", "READY"]
    assert listed[1].split()[0] == VM_NAME
    assert re.fullmatch(r"\d+s", listed[1].split()[1])
    single = (await kubectl.ok("get", "vm", VM_NAME)).stdout.splitlines()
    assert single[0].split() == ["NAME", "AGE", "STATUS", "READY"]
    vmi = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
           "metadata": {"name": VM_NAME, "namespace": "default"},
           "spec": {"domain": {"devices": {}}}}
    await kubectl.ok("apply", "-f", str(kubectl.write("vmi.yaml", yaml.safe_dump(vmi))))
    narrow = (await kubectl.ok("get", "vmi")).stdout.splitlines()[0].split()
    assert narrow == ["NAME", "AGE", "PHASE", "IP", "NODENAME", "READY"]
    wide = (await kubectl.ok("get", "vmi", "-o", "wide")).stdout.splitlines()[0].split()
    assert wide == ["NAME", "AGE", "PHASE", "IP", "NODENAME", "READY", "LIVE-MIGRATABLE", "PAUSED"]


async def test_explain_reads_the_crd_schema(kubectl: Kubectl) -> None:
    result = await kubectl.ok("explain", "vm.spec.runStrategy")
    assert "KIND:       VirtualMachine" in result.stdout
    assert "runStrategy" in result.stdout


async def test_a_new_crd_is_usable_at_once(kubectl: Kubectl) -> None:
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "gizmos.example.com"},
           "spec": {"group": "example.com", "scope": "Namespaced",
                    "names": {"plural": "gizmos", "singular": "gizmo", "kind": "Gizmo", "shortNames": ["gz"]},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                        "type": "object", "properties": {"spec": {"type": "object", "properties": {
                            "size": {"type": "integer"}}}}}}}]}}
    await kubectl.ok("apply", "-f", str(kubectl.write("crd.yaml", yaml.safe_dump(crd))))
    gizmo = {"apiVersion": "example.com/v1", "kind": "Gizmo", "metadata": {"name": "g1", "namespace": "default"},
             "spec": {"size": 3}}
    await kubectl.ok("apply", "-f", str(kubectl.write("gizmo.yaml", yaml.safe_dump(gizmo))))
    assert (await kubectl.ok("get", "gz", "g1", "-o", "jsonpath={.spec.size}")).stdout == "3"
    strict = dict(gizmo, spec={"size": 3, "colour": "red"})
    refused = await kubectl("apply", "-f", str(kubectl.write("gizmo2.yaml", yaml.safe_dump(strict))))
    assert refused.returncode == 1
    assert 'unknown field "spec.colour"' in refused.stderr


# ------------------------------------------------------------------- admission as kubectl shows it

async def _register(kubectl: Kubectl, *configs: dict[str, Any]) -> None:
    text = "\n---\n".join(yaml.safe_dump(config) for config in configs)
    await kubectl.ok("apply", "-f", str(kubectl.write("webhooks.yaml", text)))


async def test_webhook_denial_as_kubectl_prints_it(kubectl: Kubectl, scripted_webhook: ScriptedWebhook) -> None:
    hook = scripted_webhook
    await _register(kubectl, configuration("ValidatingWebhookConfiguration", "deny", webhook(
        "deny.nichotplug.test", hook.url("deny", code=403, message="interface%20nic-1%20is%20not%20bridged"),
        hook.ca_bundle)))
    result = await kubectl("apply", "-f", str(kubectl.write("vm.yaml", vm_manifest())))
    assert result.returncode == 1
    assert ('Error from server (Forbidden): error when creating "' + str(kubectl.workdir / "vm.yaml") +
            '": admission webhook "deny.nichotplug.test" denied the request: interface nic-1 is not bridged'
            ) in result.stderr
    assert (await kubectl("get", "vm", VM_NAME)).returncode == 1


async def _edit_denied(kubectl: Kubectl, hook: ScriptedWebhook, tmp_path: Path, code: int, message: str,
                       name: str = "deny") -> Result:
    """``kubectl edit`` of a Halted VM into Always, with a webhook that denies UPDATEs with ``code``."""
    await kubectl.ok("apply", "-f", str(kubectl.write("vm.yaml", vm_manifest())))
    await _register(kubectl, configuration("ValidatingWebhookConfiguration", f"{name}-updates", webhook(
        f"{name}.nichotplug.test", hook.url("deny", code=code, message=message), hook.ca_bundle,
        operations=("UPDATE",))))
    editor = _editor_script(tmp_path, "s/runStrategy: Halted/runStrategy: Always/")
    return await kubectl("edit", "vm", VM_NAME, env={"EDITOR": str(editor)})


async def test_webhook_denial_of_an_edit(kubectl: Kubectl, scripted_webhook: ScriptedWebhook,
                                         tmp_path: Path) -> None:
    result = await _edit_denied(kubectl, scripted_webhook, tmp_path, 409, "mac%20already%20used")
    assert result.returncode == 1
    assert 'admission webhook "deny.nichotplug.test" denied the request: mac already used' in result.stderr
    assert (await kubectl.get_vm())["spec"]["runStrategy"] == "Halted"


async def test_webhook_warning_as_kubectl_prints_it(kubectl: Kubectl, scripted_webhook: ScriptedWebhook) -> None:
    hook = scripted_webhook
    await _register(kubectl, configuration("ValidatingWebhookConfiguration", "warn", webhook(
        "warn.nichotplug.test", hook.url("warn", text="more%20than%203%20hot-plugged%20interfaces"),
        hook.ca_bundle)))
    result = await kubectl.ok("apply", "-f", str(kubectl.write("vm.yaml", vm_manifest())))
    assert "Warning: more than 3 hot-plugged interfaces" in result.stderr
    assert result.stdout.strip() == "virtualmachine.kubevirt.io/kv-vm created"


async def test_mutating_webhook_patch_is_stored_and_dry_run_is_sent(
        kubectl: Kubectl, scripted_webhook: ScriptedWebhook) -> None:
    hook = scripted_webhook
    await _register(kubectl, configuration("MutatingWebhookConfiguration", "label", webhook(
        "label.nichotplug.test", hook.url("patch", label="mutated", value="yes"), hook.ca_bundle)))
    manifest = kubectl.write("vm.yaml", vm_manifest())
    dry = await kubectl.ok("create", "--dry-run=server", "-f", str(manifest), "-o", "json")
    assert json.loads(dry.stdout)["metadata"]["labels"] == {"app": "demo", "mutated": "yes"}
    assert hook.calls[-1][1]["dryRun"] is True
    assert (await kubectl("get", "vm", VM_NAME)).returncode == 1

    await kubectl.ok("create", "-f", str(manifest))
    assert hook.calls[-1][1]["dryRun"] is False
    assert (await kubectl.get_vm())["metadata"]["labels"] == {"app": "demo", "mutated": "yes"}


async def test_unreachable_webhook_with_fail_policy(kubectl: Kubectl, apiserver: ApiServer) -> None:
    bundle = tls_bundle()
    gone = ScriptedWebhook(bundle)
    await gone.start()
    url = gone.url("allow")
    await gone.stop()
    await _register(kubectl, configuration("ValidatingWebhookConfiguration", "gone", webhook(
        "gone.nichotplug.test", url, gone.ca_bundle)))
    result = await kubectl("apply", "-f", str(kubectl.write("vm.yaml", vm_manifest())))
    assert result.returncode == 1
    assert ('Error from server (InternalError): error when creating "' + str(kubectl.workdir / "vm.yaml") +
            '": Internal error occurred: failed calling webhook "gone.nichotplug.test": failed to call webhook: '
            f'Post "{url}?timeout=10s": ') in result.stderr


async def test_reapplying_a_changed_builtin_object_is_quiet(kubectl: Kubectl) -> None:
    # kubectl computes a strategic merge patch for built-ins; it must not trip over our OpenAPI.
    first = configuration("ValidatingWebhookConfiguration", "quiet", webhook(
        "quiet.nichotplug.test", "https://127.0.0.1:1/never", None, failure_policy="Ignore"))
    await kubectl.ok("apply", "-f", str(kubectl.write("first.yaml", yaml.safe_dump(first))))
    second = json.loads(json.dumps(first))
    second["webhooks"][0]["timeoutSeconds"] = 3
    result = await kubectl.ok("apply", "-f", str(kubectl.write("second.yaml", yaml.safe_dump(second))))
    assert result.stdout.strip() == (
        "validatingwebhookconfiguration.admissionregistration.k8s.io/quiet configured")
    assert result.stderr == ""
    timeout = await kubectl.ok("get", "validatingwebhookconfiguration", "quiet",
                               "-o", "jsonpath={.webhooks[0].timeoutSeconds}")
    assert timeout.stdout == "3"


async def test_a_webhook_with_side_effects_cannot_be_registered(kubectl: Kubectl,
                                                                scripted_webhook: ScriptedWebhook) -> None:
    # admissionregistration.k8s.io/v1 only knows webhooks without side effects (or none on dry run),
    # which is why the dry-run refusal for the others is unreachable through this API.
    hook = scripted_webhook
    manifest = kubectl.write("webhooks.yaml", yaml.safe_dump(configuration(
        "ValidatingWebhookConfiguration", "effects",
        webhook("effects.nichotplug.test", hook.url("allow"), hook.ca_bundle, side_effects="Some"))))
    result = await kubectl("apply", "-f", str(manifest))
    assert result.returncode == 1
    assert ('The ValidatingWebhookConfiguration "effects" is invalid: webhooks[0].sideEffects: Unsupported value: '
            '"Some": supported values: "None", "NoneOnDryRun"') in result.stderr


async def test_edit_denied_with_422_shows_only_that_the_object_is_invalid(
        kubectl: Kubectl, scripted_webhook: ScriptedWebhook, tmp_path: Path) -> None:
    # Why nichotplug never denies with 422 (SPEC): kubectl edit drops the webhook's message then.
    result = await _edit_denied(kubectl, scripted_webhook, tmp_path, 422, "the%20real%20reason", name="invalid")
    assert result.returncode == 1
    assert 'error: virtualmachines.kubevirt.io "kv-vm" is invalid' in result.stderr
    assert "the real reason" not in result.stderr

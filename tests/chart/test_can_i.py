"""What the chart's service account may and may not do, asked of a real kube-apiserver with
``kubectl auth can-i`` as that account: least privilege, Secrets above all (create, and read or
update only its own TLS Secret, by name).

Real server only: the in-process one has no SelfSubjectAccessReview. The access objects are the
chart's own, applied with kubectl; the real server's reset removes them after each test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import render_chart

NAMESPACE = "nichotplug-system"
RELEASE = "nichotplug"
ACCESS_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")

pytestmark = pytest.mark.kubectl

# (verb, resource[/name], namespace or None for all namespaces)
MUST = [
    ("create", "secrets", NAMESPACE),
    ("get", "secrets/nichotplug-tls", NAMESPACE),
    ("update", "secrets/nichotplug-tls", NAMESPACE),
    ("create", "leases.coordination.k8s.io", NAMESPACE),
    ("update", "leases.coordination.k8s.io/nichotplug-controller", NAMESPACE),
    ("list", "virtualmachines.kubevirt.io", None),
    ("watch", "virtualmachineinstances.kubevirt.io", None),
    ("patch", "virtualmachines.kubevirt.io", "default"),
    ("list", "network-attachment-definitions.k8s.cni.cncf.io", None),
    ("create", "events", "default"),
    ("patch", "mutatingwebhookconfigurations.admissionregistration.k8s.io/nichotplug", None),
    ("patch", "validatingwebhookconfigurations.admissionregistration.k8s.io/nichotplug", None),
]
MUST_NOT = [
    ("get", "secrets/someone-elses", NAMESPACE),
    ("update", "secrets/someone-elses", NAMESPACE),
    ("patch", "secrets/someone-elses", NAMESPACE),
    ("list", "secrets", NAMESPACE),
    ("watch", "secrets", NAMESPACE),
    ("delete", "secrets/nichotplug-tls", NAMESPACE),
    ("get", "secrets/nichotplug-tls", "kube-system"),
    ("create", "secrets", "default"),
    ("update", "leases.coordination.k8s.io/another-lease", NAMESPACE),
    ("delete", "virtualmachines.kubevirt.io", "default"),
    ("patch", "mutatingwebhookconfigurations.admissionregistration.k8s.io/someone-elses", None),
    ("delete", "validatingwebhookconfigurations.admissionregistration.k8s.io/nichotplug", None),
]


async def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        "kubectl", "--kubeconfig", str(kubeconfig), *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), timeout=60)
    return int(process.returncode or 0), out.decode()


@pytest.fixture
def real(real_apiserver: Any) -> Iterator[Any]:
    try:
        yield real_apiserver
    finally:
        real_apiserver.reset()


async def account_kubeconfig(server: Any, tmp_path: Path, values: dict[str, Any]) -> Path:
    """Apply the chart's access objects; a kubeconfig of its ServiceAccount."""
    admin = server.write_kubeconfig(tmp_path / "admin")
    objects = [obj for obj in render_chart(values, release=RELEASE, namespace=NAMESPACE).objects
               if obj["kind"] in ACCESS_KINDS]
    await kubectl(admin, "create", "namespace", NAMESPACE)  # it may exist already: namespaces outlive tests
    code, out = await kubectl(admin, "apply", "-f", "-", stdin=yaml.safe_dump_all(objects))
    assert code == 0, out
    (account,) = [obj["metadata"]["name"] for obj in objects if obj["kind"] == "ServiceAccount"]
    token = server.service_account_token(NAMESPACE, account)
    return Path(server.write_kubeconfig(tmp_path / "account", token=token))


async def can_i(kubeconfig: Path, verb: str, resource: str, namespace: str | None) -> bool:
    where = ["--all-namespaces"] if namespace is None else ["-n", namespace]
    code, out = await kubectl(kubeconfig, "auth", "can-i", verb, resource, *where)
    assert out.strip() in ("yes", "no"), out
    return code == 0


async def test_the_account_may_do_what_the_code_needs_and_nothing_more(real: Any, tmp_path: Path) -> None:
    account = await account_kubeconfig(real, tmp_path, {})
    allowed = {check: await can_i(account, *check) for check in MUST + MUST_NOT}
    assert [check for check in MUST if not allowed[check]] == []
    assert [check for check in MUST_NOT if allowed[check]] == []


async def test_cert_manager_mode_grants_no_secret_or_webhook_rights(real: Any, tmp_path: Path) -> None:
    account = await account_kubeconfig(real, tmp_path, {"certificates": {"mode": "cert-manager"}})
    for check in [("create", "secrets", NAMESPACE), ("get", "secrets/nichotplug-tls", NAMESPACE),
                  ("patch", "validatingwebhookconfigurations.admissionregistration.k8s.io/nichotplug", None)]:
        assert not await can_i(account, *check), check
    assert await can_i(account, "list", "virtualmachines.kubevirt.io", None)

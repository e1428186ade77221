"""The chart's rendered objects are accepted by an API server's validation (server-side dry run).

Rendering proves the templates produce YAML; only the API server proves the objects are valid
Kubernetes: field names, enum values, selectors, webhook rules, RBAC references. The whole chart is
checked on the real kube-apiserver only: the in-process server serves just the resources nichotplug
itself touches (no Deployments, Services or PodDisruptionBudgets). The objects it does serve — the
access objects and the webhook configurations — are checked on both.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart.test_chart import OPTIONS

from nichotplug.testing.envtest import RealApiServer

from .support import ACCESS_KINDS, NAMESPACE, create_namespace, kubectl, render_objects

pytestmark = pytest.mark.kubectl

# Kinds of other projects the chart can render; a real cluster has their CRDs (cert-manager, the
# Prometheus operator). Here they get permissive stand-ins, so the dry run still judges every
# built-in object the chart renders beside them.
FOREIGN_KINDS = {
    ("cert-manager.io", "Certificate"): "certificates",
    ("cert-manager.io", "Issuer"): "issuers",
    ("monitoring.coreos.com", "ServiceMonitor"): "servicemonitors",
    ("monitoring.coreos.com", "PrometheusRule"): "prometheusrules",
}


def _stand_in_crd(group: str, kind: str, plural: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]},
    }


def _install_stand_ins(server: RealApiServer, tmp_path: Path) -> None:
    path = tmp_path / "stand-ins.yaml"
    path.write_text(yaml.safe_dump_all([_stand_in_crd(group, kind, plural)
                                        for (group, kind), plural in FOREIGN_KINDS.items()]))
    server.install_crd_file(path)


@pytest.mark.parametrize("option", sorted(OPTIONS))
async def test_every_rendered_object_passes_the_real_servers_validation(
        option: str, real_apiserver: RealApiServer, tmp_path: Path) -> None:
    await asyncio.to_thread(_install_stand_ins, real_apiserver, tmp_path)
    kubeconfig = real_apiserver.write_kubeconfig(tmp_path / "kubeconfig")
    await create_namespace(kubeconfig)
    objects = render_objects(OPTIONS[option])

    out = await kubectl(kubeconfig, "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump_all(objects))

    accepted = [line for line in out.splitlines() if line.endswith("(server dry run)")]
    assert len(accepted) == len(objects), out
    # Nothing was made: a dry run stores nothing.
    listed = await kubectl(kubeconfig, "get", "deployments,services", "-n", NAMESPACE, "-o", "name")
    assert listed.strip() == ""


@pytest.mark.both_servers
async def test_access_objects_and_webhook_configurations_pass_validation(kubeconfig: Path) -> None:
    await create_namespace(kubeconfig)
    objects = [obj for obj in render_objects() if obj["kind"] in
               (*ACCESS_KINDS, "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")]

    out = await kubectl(kubeconfig, "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump_all(objects))

    assert sorted(line.split(" ")[0] for line in out.splitlines()) == sorted(
        f"{obj['kind'].lower()}.{_group_of(obj)}/{obj['metadata']['name']}".replace("./", "/") for obj in objects)
    assert all(line.endswith("(server dry run)") for line in out.splitlines()), out


def _group_of(obj: dict[str, Any]) -> str:
    api_version: str = obj["apiVersion"]
    return api_version.split("/")[0] if "/" in api_version else ""

"""Install the chart's objects into the in-process API server the way an operator would: with kubectl.

Everything that drives kubectl runs it as an asyncio subprocess: the API server lives in the test's own
event loop, so a blocking call would wait for an answer that can never come.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from nichotplug.testing import ApiServer
from nichotplug.testing.envtest import RealApiServer
from nichotplug.webhook.registration import webhook_configurations

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "nichotplug"
RELEASE = "nichotplug"
NAMESPACE = "nichotplug-system"
KUBECTL = "/usr/bin/kubectl"
ACCESS_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


async def create_namespace(kubeconfig: Path) -> None:
    # `kubectl apply`, not `kubectl create namespace`: the latter sends protobuf, which the
    # in-process API server does not speak.
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    await kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump(namespace))


def render_objects(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every object `helm install` of the chart would create in NAMESPACE."""
    with helm.Chart.load(CHART_DIR) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [doc for path, text in sorted(manifests.items()) if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]


def deployment_args(objects: Sequence[dict[str, Any]]) -> list[str]:
    """The chart's `nichotplug serve` arguments with $(POD_NAMESPACE) expanded as the kubelet would."""
    (deployment,) = [obj for obj in objects if obj["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return [arg.replace("$(POD_NAMESPACE)", NAMESPACE) for arg in args]


async def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        KUBECTL, "--kubeconfig", str(kubeconfig), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), timeout=60)
    assert process.returncode == 0, f"kubectl {' '.join(args)} failed: {err.decode()}"
    return out.decode()


async def install_access(server: ApiServer | RealApiServer, kubeconfig: Path,
                         values: dict[str, Any] | None = None) -> str:
    """Apply the chart's namespace-level access objects; return a token of its ServiceAccount."""
    objects = [obj for obj in render_objects(values) if obj["kind"] in ACCESS_KINDS]
    await create_namespace(kubeconfig)
    await kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump_all(objects))
    (account,) = [obj for obj in objects if obj["kind"] == "ServiceAccount"]
    name = account["metadata"]["name"]
    if isinstance(server, RealApiServer):
        # A TokenRequest to another process: off the event loop, which may serve the in-process server.
        return await asyncio.to_thread(server.service_account_token, NAMESPACE, name)
    return server.service_account_token(NAMESPACE, name)


async def install_url_webhooks(kubeconfig: Path, url: str, ca_bundle: bytes = b"") -> None:
    """The chart's two webhook configurations, but calling `url` (a local serve) instead of the Service."""
    for obj in webhook_configurations(RELEASE, url=url, ca_bundle=ca_bundle,
                                      excluded_namespaces=("kube-system", "harvester-system")):
        await kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump(obj))


async def overwrite_ca_bundles(kubeconfig: Path, ca_bundle: bytes) -> None:
    """Someone else sets both caBundles (a JSON patch, like a careless script or tool would)."""
    value = base64.b64encode(ca_bundle).decode()
    op = json.dumps([{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": value}])
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        await kubectl(kubeconfig, "patch", kind, RELEASE, "--type=json", "-p", op)


def ca_bundles(objects: Sequence[dict[str, Any]]) -> list[bytes]:
    """The decoded caBundle of every webhook in the given configurations (b"" when unset)."""
    return [base64.b64decode(hook["clientConfig"].get("caBundle", ""))
            for obj in objects for hook in obj["webhooks"]]

"""End to end: the chart's access objects and webhooks in an API server (the in-process one and a real
kube-apiserver, whose RBAC is the real judge of the chart's roles), `nichotplug serve` run as a separate
process with the chart's arguments and the ServiceAccount's restricted token.

What an operator sees after `helm install`: the service creates its certificate Secret, fills both
caBundles, becomes ready, and VMs created with kubectl get MACs. Then its certificate is replaced
before it expires while VM writes keep going through both webhooks without a single failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import re
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubernetes_asyncio.client import ApiClient, CoreV1Api, CustomObjectsApi

from nichotplug.kube.certificates import TlsMaterial
from nichotplug.rules.mac import check_unicast_mac
from nichotplug.testing import ApiServer
from nichotplug.testing.envtest import RealApiServer

from .support import (
    NAMESPACE,
    ca_bundles,
    deployment_args,
    install_access,
    install_url_webhooks,
    kubectl,
    render_objects,
)

pytestmark = [pytest.mark.slow, pytest.mark.both_servers]

VM_NAMESPACE = "vms"
WAIT_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def eventually(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll until check() returns something truthy (the API server runs in this loop: never block it)."""
    async with asyncio.timeout(WAIT_SECONDS):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(0.2)
    raise AssertionError(f"never saw {what}")  # pragma: no cover - asyncio.timeout raises first


def vm(name: str) -> dict[str, Any]:
    """A stopped VM without MACs, as a user would write it."""
    return {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": VM_NAMESPACE},
        "spec": {"runStrategy": "Halted", "template": {"spec": {
            "domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {}, "model": "virtio"}]},
                       "memory": {"guest": "1Gi"}},
            "networks": [{"name": "default", "pod": {}}],
        }}},
    }


def spec_macs(obj: dict[str, Any]) -> list[str | None]:
    return [iface.get("macAddress") for iface in obj["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]]


@dataclass
class Service:
    """A running `nichotplug serve` subprocess and how to reach it."""

    process: asyncio.subprocess.Process
    port: int
    log_file: Path
    admin: ApiClient
    secret_name: str
    served: list[bytes] = field(default_factory=list)  # distinct serving certificates seen, in order

    def log(self) -> str:
        return self.log_file.read_text()

    async def material(self) -> TlsMaterial | None:
        try:
            secret = await CoreV1Api(self.admin).read_namespaced_secret(self.secret_name, NAMESPACE)
        except Exception:
            return None
        return TlsMaterial.from_secret_data(secret.data)

    def _ssl(self, ca_pem: bytes) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=ca_pem.decode())

    async def ready(self) -> bool:
        material = await self.material()
        if material is None:
            return False
        try:
            async with aiohttp.ClientSession() as session, session.get(
                f"https://127.0.0.1:{self.port}/readyz", ssl=self._ssl(material.ca_bundle_pem)) as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    async def serving_certificate(self, ca_pem: bytes) -> bytes:
        """The certificate a TLS handshake gets now (verified against the CA, host name 127.0.0.1)."""
        _reader, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=self._ssl(ca_pem),
                                                        server_hostname="127.0.0.1")
        try:
            der: bytes = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
        pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
        if not self.served or self.served[-1] != pem:
            self.served.append(pem)
        return pem


@pytest_asyncio.fixture
async def service(cluster_server: ApiServer | RealApiServer, kubeconfig: Path, api_client: ApiClient,
                  tmp_path: Path) -> AsyncIterator[Service]:
    """The chart installed (access objects + URL webhooks) and `nichotplug serve` started with its args."""
    token = await install_access(cluster_server, kubeconfig)
    service_kubeconfig = cluster_server.write_kubeconfig(tmp_path / "service-kubeconfig", token=token)
    port = free_port()
    await install_url_webhooks(kubeconfig, f"https://127.0.0.1:{port}")
    await kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": VM_NAMESPACE}}))

    chart_args = deployment_args(render_objects())
    secret_name = next(arg.split("=", 1)[1] for arg in chart_args if arg.startswith("--tls-secret="))
    # The chart's arguments, then what differs outside a pod: later flags win in argparse.
    args = [*chart_args, "--kubeconfig", str(service_kubeconfig), "--host", "127.0.0.1", "--port", str(port),
            "--metrics-port", "0", "--tls-cert-file", str(tmp_path / "tls" / "tls.crt"),
            "--tls-key-file", str(tmp_path / "tls" / "tls.key"), "--cert-extra-name", "127.0.0.1",
            "--cert-check-interval", "1s"]
    log_file = tmp_path / "serve.log"
    env = {**os.environ, "POD_NAME": "nichotplug-test-0", "POD_NAMESPACE": NAMESPACE}
    with log_file.open("wb") as log:
        process = await asyncio.create_subprocess_exec(sys.executable, "-m", "nichotplug", "serve", *args,
                                                       stdout=log, stderr=log, env=env)
    running = Service(process, port, log_file, api_client, secret_name)
    try:
        yield running
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=30)
            except TimeoutError:
                process.kill()
                await process.wait()


async def wait_ready(service: Service) -> TlsMaterial:
    async def ready() -> bool:
        assert service.process.returncode is None, f"serve exited:\n{service.log()}"
        return await service.ready()

    await eventually(ready, "nichotplug serve ready")
    material = await service.material()
    assert material is not None
    return material


async def test_helm_install_makes_a_working_service(service: Service, kubeconfig: Path,
                                                    api_client: ApiClient) -> None:
    material = await wait_ready(service)

    # The Secret it created, and both caBundles set to its CA.
    webhooks = [yaml.safe_load(await kubectl(kubeconfig, "get", kind, "nichotplug", "-o", "yaml"))
                for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration")]
    assert ca_bundles(webhooks) == [material.ca_bundle_pem] * 2
    assert await service.serving_certificate(material.ca_bundle_pem) == material.cert_pem

    # A VM created through kubectl comes back with a MAC the mutating webhook generated.
    await kubectl(kubeconfig, "create", "-f", "-", stdin=yaml.safe_dump(vm("web-1")))
    created = json.loads(await kubectl(kubeconfig, "get", "vm", "web-1", "-n", VM_NAMESPACE, "-o", "json"))
    (mac,) = spec_macs(created)
    assert mac is not None
    assert check_unicast_mac(mac) == mac

    # And the restricted account was enough for everything serve did (cache, leader election, certs).
    log = service.log()
    assert not re.search(r"HTTP 403|[Ff]orbidden| ERROR |Traceback", log), log


def nearly_expired(material: TlsMaterial, *, crosses_threshold_in: datetime.timedelta) -> TlsMaterial:
    """A serving certificate from the same CA that is fine now and falls under a third of its life later."""
    ca_cert = x509.load_pem_x509_certificates(material.ca_bundle_pem)[0]
    ca_key = serialization.load_pem_private_key(material.ca_key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    current = x509.load_pem_x509_certificate(material.cert_pem)
    now = datetime.datetime.now(datetime.UTC)
    past = datetime.timedelta(minutes=20)
    # remaining - t < (past + remaining) / 3 from t on  <=>  remaining = (3 t + past) / 2
    remaining = (3 * crosses_threshold_in + past) / 2
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(current.subject).issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - past).not_valid_after(now + remaining)
        .add_extension(current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value,
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return TlsMaterial(material.ca_bundle_pem, material.ca_key_pem,
                       cert.public_bytes(serialization.Encoding.PEM), key_pem)


async def test_certificate_rotation_keeps_every_api_call_working(service: Service, api_client: ApiClient) -> None:
    first = await wait_ready(service)
    expiring = nearly_expired(first, crosses_threshold_in=datetime.timedelta(seconds=15))
    secret = await CoreV1Api(api_client).read_namespaced_secret(service.secret_name, NAMESPACE)
    secret.data = expiring.secret_data()
    await CoreV1Api(api_client).replace_namespaced_secret(service.secret_name, NAMESPACE, secret)

    objects = CustomObjectsApi(api_client)
    created: list[str] = []
    failures: list[str] = []

    async def write_vms_until_rotated() -> bool:
        name = f"vm-{len(created) + len(failures)}"
        try:
            obj = await objects.create_namespaced_custom_object("kubevirt.io", "v1", VM_NAMESPACE,
                                                                "virtualmachines", vm(name))
        except Exception as error:  # every failure is a finding: the webhooks must answer throughout
            failures.append(f"{name}: {error}")
        else:
            created.append(name)
            if None in spec_macs(obj):
                failures.append(f"{name}: created without MACs (mutating webhook not reached)")
        current = await service.material()
        assert current is not None
        served = await service.serving_certificate(first.ca_bundle_pem)
        return current.cert_pem not in (first.cert_pem, expiring.cert_pem) and served == current.cert_pem

    await eventually(write_vms_until_rotated, "the expiring certificate replaced and served")

    rotated = await service.material()
    assert rotated is not None
    assert failures == []
    assert len(created) > 1
    assert service.served[0] == first.cert_pem
    assert service.served[-1] == rotated.cert_pem
    assert expiring.cert_pem in service.served, "the expiring certificate was served until it was replaced"
    assert rotated.ca_bundle_pem == first.ca_bundle_pem, "same CA: the caBundle never had to change"
    assert "Traceback" not in service.log()

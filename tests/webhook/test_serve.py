"""``nichotplug serve`` as a real process, registered with the in-process API server, driven by kubectl.

One story (controller and action API running too): the server becomes ready once its cluster view has synced; ``kubectl
create`` of a VM without MACs stores it with MACs (our mutation); a second VM
reusing one of them is refused with our 409 message as kubectl prints it;
/metrics counted both; SIGTERM lets a request that is in flight finish, then the
process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nichotplug.certs import CertBundle, make_bundle, write_bundle
from nichotplug.cli import main
from nichotplug.controller.scope import ControllerScope
from nichotplug.testing.server import ApiServer
from nichotplug.webhook.registration import VALIDATION_PATH, webhook_configurations

from .webhook_support import HalfSentBody, admission_review, check_review, vm

pytestmark = [pytest.mark.kubectl, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServeProcess:
    """``python -m nichotplug serve`` with its stderr collected line by line."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, metrics_port: int) -> None:
        self.process = process
        self.port = port
        self.metrics_port = metrics_port
        self.lines: list[str] = []
        self._new_line = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())
            self._new_line.set()

    async def wait_for_line(self, text: str) -> None:
        async with asyncio.timeout(20):
            while not any(text in line for line in self.lines):
                self._new_line.clear()
                await self._new_line.wait()

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            code = await self.process.wait()
        await self._reader
        return code


async def _kubectl(kubeconfig: Path, workdir: Path, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        "kubectl", "--kubeconfig", str(kubeconfig), "--cache-dir", str(workdir / "kubectl-cache"), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(stdin.encode() if stdin else None)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
def serving_bundle(tmp_path: Path) -> CertBundle:
    bundle = make_bundle(dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    write_bundle(bundle, tmp_path / "certs")
    return bundle


@contextlib.asynccontextmanager
async def serving(kubeconfig: Path, tmp_path: Path, *extra: str) -> AsyncIterator[ServeProcess]:
    """``nichotplug serve`` on free ports with the certificates in ``tmp_path/certs``; killed at the end."""
    port, metrics_port = _free_port(), _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nichotplug", "serve", "--kubeconfig", str(kubeconfig), "--host", "127.0.0.1",
        "--port", str(port), "--metrics-port", str(metrics_port), "--namespace", "default",
        "--tls-cert-file", str(tmp_path / "certs" / "tls.crt"), "--tls-key-file", str(tmp_path / "certs" / "tls.key"),
        "--shutdown-delay", "1.5", *extra,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "TZ": "Asia/Tokyo"},  # a node far from UTC
    )
    served = ServeProcess(process, port, metrics_port)
    try:
        yield served
    finally:
        print("\n".join(served.lines))  # the server's log, shown when the test fails
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.fixture
async def served(apiserver: ApiServer, kubeconfig: Path, tmp_path: Path,
                 serving_bundle: CertBundle) -> AsyncIterator[ServeProcess]:
    async with serving(kubeconfig, tmp_path) as process:
        yield process


async def _wait_ready(session: aiohttp.ClientSession, served: ServeProcess) -> None:
    async with asyncio.timeout(30):
        while True:
            assert served.process.returncode is None, "\n".join(served.lines)
            try:
                async with session.get(f"https://127.0.0.1:{served.port}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass  # not listening yet
            await asyncio.sleep(0.1)


def _vm_manifest(name: str, mac: str | None) -> str:
    obj = vm(name, (mac, None))
    return json.dumps(obj)


async def test_serve_end_to_end_with_kubectl_then_drain_on_sigterm(
    served: ServeProcess, apiserver: ApiServer, kubeconfig: Path, tmp_path: Path, serving_bundle: CertBundle
) -> None:
    client_ssl = ssl.create_default_context(cadata=serving_bundle.ca_cert_pem.decode())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl)) as session:
        await _wait_ready(session, served)
        await served.wait_for_line("cluster view synced: ")
        assert any(re.search(r"INFO nichotplug.service: cluster view synced: \d+ VirtualMachines, \d+ "
                             r"VirtualMachineInstances, \d+ NetworkAttachmentDefinitions, \d+ MACs$", line)
                   for line in served.lines), served.lines
        assert not any("cyclic GC" in line for line in served.lines)  # a detail, at DEBUG
        # The log says where it really listens, and how far the controller's writes reach.
        await served.wait_for_line(f"serving webhooks and actions on https://127.0.0.1:{served.port}; "
                                   f"metrics on http://127.0.0.1:{served.metrics_port}/metrics")
        await served.wait_for_line("controller: writing VMs in all namespaces (Lease default/nichotplug-controller)")
        # Every log line is stamped in UTC, ISO 8601, whatever the node's time zone.
        assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) ", line)
                   for line in served.lines if line), served.lines
        stamped = datetime.datetime.strptime(served.lines[0][:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.UTC)
        assert abs((datetime.datetime.now(datetime.UTC) - stamped).total_seconds()) < 120

        for configuration in webhook_configurations(
            "nichotplug", ca_bundle=serving_bundle.ca_cert_pem, url=f"https://127.0.0.1:{served.port}",
        ):
            code, _, err = await _kubectl(kubeconfig, tmp_path, "create", "-f", "-", stdin=json.dumps(configuration))
            assert code == 0, err

        # Our mutation gives both interfaces a MAC on the way into storage.
        code, _, err = await _kubectl(kubeconfig, tmp_path, "create", "-f", "-", stdin=_vm_manifest("first", None))
        assert code == 0, err
        code, out, err = await _kubectl(kubeconfig, tmp_path, "get", "vm", "first", "-o", "json")
        assert code == 0, err
        interfaces: list[dict[str, Any]] = json.loads(out)["spec"]["template"]["spec"]["domain"]["devices"][
            "interfaces"]
        taken = interfaces[0]["macAddress"]
        assert all(interface.get("macAddress") for interface in interfaces), interfaces

        # A second VM reusing that MAC is refused once the view has seen "first" (it watches, so retry).
        async with asyncio.timeout(20):
            while True:
                code, _, err = await _kubectl(kubeconfig, tmp_path, "create", "-f", "-",
                                              stdin=_vm_manifest("second", taken))
                if code != 0:
                    break
                await _kubectl(kubeconfig, tmp_path, "delete", "vm", "second")
        assert 'admission webhook "validate-vm.nichotplug.harvesterhci.io" denied the request' in err, err
        assert taken in err
        assert "first" in err

        async with aiohttp.ClientSession() as plain, plain.get(
            f"http://127.0.0.1:{served.metrics_port}/metrics"
        ) as response:
            metrics = await response.text()
        decisions = {
            (s.labels["webhook"], s.labels["result"], s.labels["reason"]): s.value
            for family in text_string_to_metric_families(metrics) for s in family.samples
            if s.name == "nichotplug_admission_decisions_total" and s.labels["operation"] == "CREATE"
        }
        assert decisions["mutation", "patched", "macs-assigned"] == 2  # "first", then "second"'s nic1
        assert decisions["validation", "denied", "mac-collision"] == 1
        assert "_created" not in metrics
        assert "\nnichotplug_leader{name=\"nichotplug-controller\"} " in metrics

        # The action API is mounted on the same TLS port and acts with the caller's token.
        async with session.post(
            f"https://127.0.0.1:{served.port}/v1/harvester/vm/default/first?action=findHotunpluggableNics",
            headers={"Authorization": f"Bearer {apiserver.admin_token}"},
        ) as response:
            assert response.status == 200, await response.text()
            assert await response.json() == {"interfaces": []}  # "first" is not running: nothing to unplug

        # SIGTERM while a request is half sent: it is still answered, then the process exits 0.
        body = HalfSentBody(json.dumps(admission_review(vm("third", ("02:00:00:00:00:33",)))).encode())

        async def post_slowly() -> tuple[int, Any]:
            async with session.post(f"https://127.0.0.1:{served.port}{VALIDATION_PATH}", data=body.chunks(),
                                    headers={"Content-Type": "application/json"}) as response:
                return response.status, await response.json()

        in_flight = asyncio.create_task(post_slowly())
        await body.first_part_sent.wait()
        await asyncio.sleep(0.2)  # let the server start the handler; its log line below is the real signal
        served.process.send_signal(signal.SIGTERM)
        # First the pod leaves the Service's endpoints: not ready, but a call routed here meanwhile, on a
        # new connection, is still answered.
        await served.wait_for_line("stopping: /readyz fails from now on; still answering for 1.5 s")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl)) as late:
            async with late.get(f"https://127.0.0.1:{served.port}/readyz") as response:
                assert response.status == 503
            review = json.dumps(admission_review(vm("fourth", ("02:00:00:00:00:44",)))).encode()
            async with late.post(f"https://127.0.0.1:{served.port}{VALIDATION_PATH}", data=review,
                                 headers={"Content-Type": "application/json"}) as response:
                assert response.status == 200
                assert check_review(await response.json(), uid="uid-1", webhook="validation")["allowed"] is True
        await served.wait_for_line("stopping: draining requests in flight")
        body.release()
        status, answer = await in_flight
        assert status == 200
        assert check_review(answer, uid="uid-1", webhook="validation")["allowed"] is True
        assert await served.stop() == 0, "\n".join(served.lines)
        assert served.lines[-1].endswith(" INFO nichotplug.service: stopped"), served.lines[-3:]


@pytest.mark.parametrize(("extra", "message"), [
    (["--tls-cert-file", "/nonexistent/tls.crt"], "give both --tls-cert-file and --tls-key-file, or neither"),
    ([], "give --tls-cert-file and --tls-key-file (or --self-managed-certs): webhooks are served over TLS only"),
    (["--tls-cert-file", "a", "--tls-key-file", "b", "--port", "70000"], "--port 70000 is not a usable port"),
    (["--tls-cert-file", "a", "--tls-key-file", "b", "--shutdown-delay", "-1"],
     "--shutdown-delay -1 must not be negative"),
    (["--tls-cert-file", "a", "--tls-key-file", "b", "--controller-namespace", "Team_A"],
     "--controller-namespace 'Team_A' is not a namespace name (lowercase letters, digits, '-')"),
    (["--tls-cert-file", "a", "--tls-key-file", "b", "--controller-namespace", "team-a", "--no-controller"],
     "--controller-namespace limits the controller, which --no-controller turns off: give one of them"),
])
def test_serve_refuses_unusable_arguments_with_one_clear_line(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", *extra]) == 2
    assert capsys.readouterr().err.strip() == f"nichotplug serve: {message}"


async def test_serve_without_credentials_or_certificate_says_which(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nichotplug", "serve", "--kubeconfig", str(tmp_path / "missing"),
        "--tls-cert-file", str(tmp_path / "tls.crt"), "--tls-key-file", str(tmp_path / "tls.key"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "KUBECONFIG": str(tmp_path / "missing")},
    )
    _, err = await process.communicate()
    assert process.returncode == 1
    assert "nichotplug serve: KubeConfigError: no Kubernetes credentials" in err.decode()


async def _scrape(served: ServeProcess) -> str:
    async with aiohttp.ClientSession() as plain, plain.get(
        f"http://127.0.0.1:{served.metrics_port}/metrics"
    ) as response:
        return await response.text()


async def test_serve_without_controller_says_so_and_exports_no_audit(
    apiserver: ApiServer, kubeconfig: Path, tmp_path: Path, serving_bundle: CertBundle,
) -> None:
    async with serving(kubeconfig, tmp_path, "--no-controller") as served:
        await served.wait_for_line("controller: off (--no-controller): nichotplug writes no VM on its own")
        await served.wait_for_line("cluster view synced: ")
        metrics = await _scrape(served)
        assert '\nnichotplug_leader{name="nichotplug-controller"} 0.0\n' in metrics
        assert "nichotplug_duplicate_macs " not in metrics  # no audit ran: no figure that reads "none found"
        assert await served.stop() == 0


async def test_serve_with_controller_namespaces_names_them_and_their_lease(
    apiserver: ApiServer, kubeconfig: Path, tmp_path: Path, serving_bundle: CertBundle,
) -> None:
    lease = ControllerScope.of(["team-b", "team-a"]).lease_name
    async with serving(kubeconfig, tmp_path, "--controller-namespace", "team-b",
                       "--controller-namespace", "team-a") as served:
        await served.wait_for_line(f"controller: writing VMs in team-a, team-b (Lease default/{lease})")
        await served.wait_for_line("cluster view synced: ")
        async with asyncio.timeout(20):
            while True:  # it leads its own Lease, the scope's
                if f'nichotplug_leader{{name="{lease}"}} 1.0' in await _scrape(served):
                    break
                await asyncio.sleep(0.2)
        assert await served.stop() == 0

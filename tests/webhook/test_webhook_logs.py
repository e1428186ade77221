"""What the webhooks write to the log: an allowed hot-plug is worth a line, a caller hanging up is no error."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from nichotplug.rules.cluster import StaticCluster
from nichotplug.service import build_webhook_app

from .webhook_support import ServeFn, admission_review

BRIDGE = json.dumps({"cniVersion": "0.3.1", "name": "vlan1", "type": "bridge", "bridge": "mgmt-br"})
NAD = {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
       "metadata": {"name": "vlan1", "namespace": "default"}, "spec": {"config": BRIDGE}}
VMI = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
       "metadata": {"name": "vm1", "namespace": "default"},
       "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"},
                                                     {"type": "LiveMigratable", "status": "True"}]}}


def running_vm(*extra_nics: str) -> dict[str, Any]:
    interfaces: list[dict[str, Any]] = [
        {"name": "default", "model": "virtio", "masquerade": {}, "macAddress": "02:00:00:00:01:01"}]
    networks: list[dict[str, Any]] = [{"name": "default", "pod": {}}]
    for number, name in enumerate(extra_nics, start=2):
        interfaces.append({"name": name, "model": "virtio", "bridge": {}, "macAddress": f"02:00:00:00:01:0{number}"})
        networks.append({"name": name, "multus": {"networkName": "default/vlan1"}})
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "vm1", "namespace": "default", "resourceVersion": "7"},
            "spec": {"runStrategy": "Always",
                     "template": {"spec": {"domain": {"devices": {"interfaces": interfaces}}, "networks": networks}}},
            "status": {"printableStatus": "Running"}}


async def _post(session: aiohttp.ClientSession, port: int, review: dict[str, Any]) -> dict[str, Any]:
    async with session.post(f"https://127.0.0.1:{port}/v1/webhook/validation", json=review) as response:
        assert response.status == 200
        answer: dict[str, Any] = await response.json()
        return answer


async def test_an_allowed_hot_plug_is_logged_at_info_a_plain_allow_is_not(
    serve_tls: ServeFn, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:
    served = await serve_tls(build_webhook_app(StaticCluster(vmis=[VMI], nads=[NAD])))
    caplog.set_level(logging.INFO, logger="nichotplug.webhook.http")
    hotplug = admission_review(running_vm("nic-1", "nic-2"), operation="UPDATE", oldObject=running_vm("nic-1"))
    assert (await _post(session, served.port, hotplug))["response"]["allowed"] is True
    relabel_old = running_vm("nic-1")
    relabel = copy.deepcopy(relabel_old)
    relabel["metadata"]["labels"] = {"team": "a"}
    assert (await _post(session, served.port, admission_review(relabel, operation="UPDATE", uid="uid-2",
                                                               oldObject=relabel_old)))["response"]["allowed"]
    lines = [record.getMessage() for record in caplog.records if record.levelno == logging.INFO]
    assert lines == ["validation UPDATE VirtualMachine default/vm1 by alice (uid uid-1): allowed (hotplug-allowed)"]


async def _until(condition: Callable[[], bool]) -> None:
    while True:
        if condition():
            return
        await asyncio.sleep(0.01)


async def test_a_caller_hanging_up_mid_request_is_one_info_line_not_an_error(
    serve_tls: ServeFn, client_ssl: ssl.SSLContext, caplog: pytest.LogCaptureFixture,
) -> None:
    served = await serve_tls(build_webhook_app(StaticCluster()))
    caplog.set_level(logging.DEBUG)
    _, writer = await asyncio.open_connection("127.0.0.1", served.port, ssl=client_ssl,
                                                   server_hostname="localhost")
    writer.write(b"POST /v1/webhook/validation HTTP/1.1\r\nHost: localhost\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"apiVersion\": ")
    await writer.drain()
    async with asyncio.timeout(10):
        await _until(lambda: served.door.in_flight == 1)  # the handler is reading the body
        writer.transport.abort()  # a reset, as an API server that gave up on the call does
        await _until(lambda: served.door.in_flight == 0)
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING], caplog.text
    assert "validation webhook: the caller closed the connection before the answer was ready" in caplog.text
    assert "Traceback" not in caplog.text

"""Behaviour the in-process API server must share with the real one, asserted on both."""

from __future__ import annotations

import json
import ssl

import aiohttp

from nichotplug.testing.envtest import RealApiServer
from nichotplug.testing.server import ApiServer

VMS = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines"


def _vm(name: str) -> dict[str, object]:
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {}}}}}}


async def test_a_watch_from_a_resource_version_before_the_window_gets_an_expired_error_event(
        any_apiserver: ApiServer | RealApiServer) -> None:
    context = ssl.create_default_context(cafile=str(any_apiserver.ca_file))
    headers = {"Authorization": f"Bearer {any_apiserver.admin_token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(f"{any_apiserver.url}{VMS}", json=_vm("watched"), ssl=context) as created:
            assert created.status == 201

        url = f"{any_apiserver.url}/apis/kubevirt.io/v1/virtualmachines?watch=true&resourceVersion=1&timeoutSeconds=2"
        async with session.get(url, ssl=context) as watch:
            assert watch.status == 200  # the refusal is an event in the stream, not an HTTP error
            first = json.loads(await watch.content.readline())

    assert first["type"] == "ERROR"
    status = first["object"]
    assert (status["kind"], status["status"], status["reason"], status["code"]) == ("Status", "Failure", "Expired", 410)
    assert status["message"].startswith("too old resource version: 1 (")

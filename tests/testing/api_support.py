"""Shared helpers for the in-process API server's own tests: raw HTTPS calls and sample objects."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from nichotplug.testing import ApiServer

VMS = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


@dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: Any

    @property
    def warnings(self) -> list[str]:
        return self.headers.getall("Warning", [])


class RawClient:
    """Plain HTTPS against the server, verifying its certificate with its CA."""

    def __init__(self, server: ApiServer) -> None:
        self.server = server
        self._ssl = ssl.create_default_context(cafile=str(server.ca_file))
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        await self._session.close()

    async def call(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
                   token: str | None = "admin") -> Answer:
        headers = {}
        if token == "admin":
            token = self.server.admin_token
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes | str) else json.dumps(body)
            headers["Content-Type"] = content_type
        async with self._session.request(method, self.server.url + path, data=data, headers=headers,
                                         ssl=self._ssl) as response:
            text = await response.read()
            try:
                decoded = json.loads(text) if text else None
            except ValueError:
                decoded = text.decode()
            return Answer(response.status, response.headers, decoded)

    async def stream(self, path: str, token: str | None = "admin") -> AsyncIterator[dict[str, Any]]:
        """The events of a watch, one decoded JSON line at a time."""
        headers = {"Authorization": f"Bearer {self.server.admin_token if token == 'admin' else token}"}
        async with self._session.get(self.server.url + path, headers=headers, ssl=self._ssl,
                                     timeout=aiohttp.ClientTimeout(total=30)) as response:
            assert response.status == 200
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)


def vm(name: str, namespace: str = "default", *, labels: dict[str, str] | None = None,
       run_strategy: str = "Halted") -> dict[str, Any]:
    """A minimal VirtualMachine the recorded CRD schema accepts."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = labels
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": metadata,
        "spec": {
            "runStrategy": run_strategy,
            "template": {"spec": {
                "domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {}}]},
                           "memory": {"guest": "1Gi"}},
                "networks": [{"name": "default", "pod": {}}],
            }},
        },
    }

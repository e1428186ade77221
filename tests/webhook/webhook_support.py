"""Shared by the webhook tests: what the API server requires of an answer, the fixture folder, test doubles."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable, Collection, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from nichotplug.rules.cluster import MacOwner
from nichotplug.rules.views import NadView, VmiView
from nichotplug.serving import FrontDoor
from nichotplug.testing.fixtures import SHARED_FIXTURES

FIXTURES = SHARED_FIXTURES / "admission"



@dataclass(frozen=True)
class Served:
    """An app served over TLS by ``start_tls_runner`` (the ``serve_tls`` fixture)."""

    runner: web.AppRunner
    door: FrontDoor
    port: int


ServeFn = Callable[[web.Application], Coroutine[Any, Any, Served]]


class HalfSentBody:
    """A request body sent in two parts: the first at once, the rest only after ``release()``.

    Pass ``chunks()`` as aiohttp's ``data=``; ``first_part_sent`` is set once the server can have
    the headers and part of the body, which is what a drain must wait for.
    """

    def __init__(self, body: bytes, first_part: int = 100) -> None:
        self.body = body
        self.first_part = first_part
        self.first_part_sent = asyncio.Event()
        self._released = asyncio.Event()

    def release(self) -> None:
        self._released.set()

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self.body[:self.first_part]
        self.first_part_sent.set()
        await self._released.wait()
        yield self.body[self.first_part:]

RESPONSE_KEYS = {"uid", "allowed", "status", "patch", "patchType", "warnings"}


def check_review(answer: Any, *, uid: str, webhook: str) -> dict[str, Any]:
    """Assert ``answer`` is an AdmissionReview the API server accepts for ``uid``; return its response."""
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert set(response) <= RESPONSE_KEYS, f"unexpected fields {set(response) - RESPONSE_KEYS}"
    assert response["uid"] == uid
    assert isinstance(response["allowed"], bool)
    if response["allowed"]:
        assert "status" not in response
    else:
        status = response["status"]
        assert isinstance(status["code"], int)
        assert 400 <= status["code"] < 600
        # kubectl drops a webhook's message on 422 ("<vm>" was not valid): never answer it.
        assert status["code"] != 422
        assert isinstance(status["message"], str)
        assert status["message"]
    for warning in response.get("warnings", []):
        assert isinstance(warning, str)
        assert warning
    if "patch" in response or "patchType" in response:
        assert webhook == "mutation", "a validating webhook must not send a patch"
        assert response["allowed"] is True
        assert response["patchType"] == "JSONPatch"
        ops = decode_patch(response["patch"])
        assert ops, "an empty patch is omitted, never sent"
    return dict(response)


def decode_patch(patch: str) -> list[dict[str, Any]]:
    ops = json.loads(base64.b64decode(patch, validate=True))
    assert isinstance(ops, list)
    for op in ops:
        assert op["op"] in {"add", "remove", "replace", "move", "copy", "test"}
        assert isinstance(op["path"], str)
        assert op["path"].startswith("/")
    return ops


class ExplodingCluster:
    """A ClusterState whose every answer is a crash: stands in for a bug anywhere under the rules."""

    def get_vmi(self, namespace: str, name: str) -> VmiView | None:
        raise RuntimeError("cluster view exploded")

    def get_nad(self, namespace: str, name: str) -> NadView | None:
        raise RuntimeError("cluster view exploded")

    def owners_of_mac(self, mac: str) -> Collection[MacOwner]:
        raise RuntimeError("cluster view exploded")

    def mac_numbers_in_use(self, numbers: Collection[int]) -> bool:
        raise RuntimeError("cluster view exploded")


def vm(name: str = "vm1", macs: tuple[str | None, ...] = (None,), run_strategy: str = "Halted") -> dict[str, Any]:
    interfaces = []
    for index, mac in enumerate(macs):
        interface: dict[str, Any] = {"name": f"nic{index}", "bridge": {}, "model": "virtio"}
        if mac:
            interface["macAddress"] = mac
        interfaces.append(interface)
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "runStrategy": run_strategy,
            "template": {"spec": {
                "domain": {"devices": {"interfaces": interfaces}},
                "networks": [{"name": f"nic{i}", "pod": {}} for i in range(len(macs))],
            }},
        },
    }


def admission_review(obj: Any, *, operation: str = "CREATE", uid: str = "uid-1", **extra: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "uid": uid,
        "kind": {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachine"},
        "resource": {"group": "kubevirt.io", "version": "v1", "resource": "virtualmachines"},
        "operation": operation,
        "name": "vm1",
        "namespace": "default",
        "userInfo": {"username": "alice"},
        "object": obj,
        "oldObject": None,
        **extra,
    }
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}

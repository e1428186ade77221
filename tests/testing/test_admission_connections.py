"""How the in-process API server connects to webhooks: kept-alive, like kube-apiserver.

A webhook sees one TLS connection for a run of writes (not a handshake per call), and a write
made after the webhook dropped its idle connection still goes through on a fresh one.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from nichotplug.certs import CertBundle

from .admission_support import configuration, tls_bundle, webhook
from .api_support import VMS, RawClient, vm


@dataclass
class CountingWebhook:
    """Allows everything and records the client port of every call (one port = one connection)."""

    bundle: CertBundle
    keepalive_seconds: float
    peers: list[int] = field(default_factory=list)
    port: int = 0
    runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/allow", self.allow)
        self.runner = web.AppRunner(app, keepalive_timeout=self.keepalive_seconds)
        await self.runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*tls_files(self.bundle))
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    async def allow(self, request: web.Request) -> web.Response:
        review: dict[str, Any] = await request.json()
        self.peers.append(request.transport.get_extra_info("peername")[1] if request.transport else -1)
        return web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                  "response": {"uid": review["request"]["uid"], "allowed": True}})

    def configuration(self) -> dict[str, Any]:
        entry = webhook("count.nichotplug.test", f"https://127.0.0.1:{self.port}/allow",
                        base64.b64encode(self.bundle.ca_cert_pem).decode(), operations=("CREATE",))
        return configuration("ValidatingWebhookConfiguration", "count", entry)


def tls_files(bundle: CertBundle) -> tuple[str, str]:
    folder = Path(tempfile.mkdtemp(prefix="counting-webhook-"))
    (folder / "tls.crt").write_bytes(bundle.cert_pem)
    (folder / "tls.key").write_bytes(bundle.key_pem)
    return str(folder / "tls.crt"), str(folder / "tls.key")



async def registered(raw: RawClient, keepalive_seconds: float) -> CountingWebhook:
    hook = CountingWebhook(tls_bundle(), keepalive_seconds)
    await hook.start()
    answer = await raw.call("POST", "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
                            hook.configuration())
    assert answer.status == 201, answer.body
    return hook


async def create_vms(raw: RawClient, names: list[str]) -> None:
    for name in names:
        answer = await raw.call("POST", VMS, vm(name))
        assert answer.status == 201, answer.body


async def test_a_run_of_writes_reuses_one_connection_to_the_webhook(raw: RawClient) -> None:
    hook = await registered(raw, keepalive_seconds=75)
    try:
        await create_vms(raw, [f"vm-{n}" for n in range(5)])
    finally:
        assert hook.runner is not None
        await hook.runner.cleanup()

    assert len(hook.peers) == 5
    assert len(set(hook.peers)) == 1


async def test_a_write_after_the_webhook_closed_its_idle_connection_still_goes_through(raw: RawClient) -> None:
    hook = await registered(raw, keepalive_seconds=0.2)
    try:
        await create_vms(raw, ["before"])
        await asyncio.sleep(0.6)  # the webhook closes the idle kept-alive connection meanwhile
        await create_vms(raw, ["after"])
    finally:
        assert hook.runner is not None
        await hook.runner.cleanup()

    assert len(hook.peers) == 2
    assert hook.peers[0] != hook.peers[1]

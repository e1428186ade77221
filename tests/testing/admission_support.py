"""A real HTTPS admission webhook for tests, whose answer the URL path chooses.

``/allow``, ``/deny?code=409&message=...``, ``/patch?label=k&value=v``, ``/warn?text=...``,
``/slow?seconds=2``, ``/wrong-uid``, ``/http-500``, ``/not-json``, ``/bad-patch``,
``/validate-patch``; any extra path segment is free text (``/allow/first``) so one server can
stand for many webhooks, and every call is recorded as (path, AdmissionReview request).
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from nichotplug.certs import CertBundle, make_bundle, server_ssl_context


def tls_bundle(*, dns_names: tuple[str, ...] = (), ip_addresses: tuple[str, ...] = ("127.0.0.1",)) -> CertBundle:
    return make_bundle(dns_names=list(dns_names), ip_addresses=list(ip_addresses))


def _encoded_patch(operations: list[dict[str, Any]]) -> str:
    return base64.b64encode(json.dumps(operations).encode()).decode()


def _label_patch(request: dict[str, Any], key: str, value: str) -> list[dict[str, Any]]:
    metadata = (request.get("object") or {}).get("metadata") or {}
    escaped = key.replace("~", "~0").replace("/", "~1")
    if "labels" not in metadata:
        return [{"op": "add", "path": "/metadata/labels", "value": {key: value}}]
    return [{"op": "add", "path": f"/metadata/labels/{escaped}", "value": value}]


@dataclass
class ScriptedWebhook:
    """The webhook server; ``await start()``, then ``url("deny", code=409)``, ``await stop()``."""

    bundle: CertBundle
    host: str = "127.0.0.1"
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def ca_bundle(self) -> str:
        return base64.b64encode(self.bundle.ca_cert_pem).decode()

    def url(self, behaviour: str, *, url_host: str | None = None, **query: object) -> str:
        text = "&".join(f"{key}={value}" for key, value in query.items())
        return f"https://{url_host or self.host}:{self.port}/{behaviour}" + (f"?{text}" if text else "")

    def called_paths(self) -> list[str]:
        return [path for path, _ in self.calls]

    async def start(self) -> None:
        context = server_ssl_context(self.bundle)
        app = web.Application()
        app.router.add_post("/{behaviour}", self._handle)
        app.router.add_post("/{behaviour}/{label:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0, ssl_context=context)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        review = await request.json()
        self.calls.append((request.path, review["request"]))
        behaviour = request.match_info["behaviour"]
        uid = review["request"]["uid"]
        response: dict[str, Any] = {"uid": uid, "allowed": True}
        query = request.query
        if behaviour == "deny":
            status: dict[str, Any] = {}
            if "code" in query:
                status["code"] = int(query["code"])
            if "message" in query:
                status["message"] = query["message"]
            if "reason" in query:
                status["reason"] = query["reason"]
            response = {"uid": uid, "allowed": False, "status": status}
            if "warning" in query:
                response["warnings"] = [query["warning"]]
        elif behaviour == "patch":
            response["patchType"] = "JSONPatch"
            response["patch"] = _encoded_patch(_label_patch(review["request"], query["label"], query["value"]))
        elif behaviour == "warn":
            response["warnings"] = [query["text"]]
        elif behaviour == "slow":
            await asyncio.sleep(float(query.get("seconds", "2")))
        elif behaviour == "wrong-uid":
            response["uid"] = "not-" + uid
        elif behaviour == "http-500":
            return web.Response(status=500, text="webhook crashed")
        elif behaviour == "not-json":
            return web.Response(status=200, text="<html>hello</html>", content_type="text/html")
        elif behaviour == "bad-patch":
            response["patchType"] = "JSONPatch"
            response["patch"] = _encoded_patch([{"op": "remove", "path": "/spec/doesNotExist"}])
        elif behaviour == "validate-patch":
            response["patchType"] = "JSONPatch"
            response["patch"] = _encoded_patch([{"op": "add", "path": "/metadata/labels", "value": {}}])
        return web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                  "response": response})


def webhook(name: str, url: str, ca_bundle: str | None, *, resources: tuple[str, ...] = ("virtualmachines",),
            operations: tuple[str, ...] = ("CREATE", "UPDATE", "DELETE"),
            api_groups: tuple[str, ...] = ("kubevirt.io",),
            api_versions: tuple[str, ...] = ("v1",), scope: str | None = None, failure_policy: str | None = None,
            side_effects: str = "None", timeout_seconds: int | None = None,
            namespace_selector: dict[str, Any] | None = None, object_selector: dict[str, Any] | None = None,
            **extra: Any) -> dict[str, Any]:
    """One webhook entry of a Mutating/ValidatingWebhookConfiguration."""
    rule: dict[str, Any] = {"apiGroups": list(api_groups), "apiVersions": list(api_versions),
                            "operations": list(operations), "resources": list(resources)}
    if scope is not None:
        rule["scope"] = scope
    client_config: dict[str, Any] = {"url": url}
    if ca_bundle is not None:
        client_config["caBundle"] = ca_bundle
    entry: dict[str, Any] = {"name": name, "clientConfig": client_config, "rules": [rule],
                             "sideEffects": side_effects, "admissionReviewVersions": ["v1"]}
    if failure_policy is not None:
        entry["failurePolicy"] = failure_policy
    if timeout_seconds is not None:
        entry["timeoutSeconds"] = timeout_seconds
    if namespace_selector is not None:
        entry["namespaceSelector"] = namespace_selector
    if object_selector is not None:
        entry["objectSelector"] = object_selector
    entry.update(extra)
    return entry


def configuration(kind: str, name: str, *webhooks: dict[str, Any]) -> dict[str, Any]:
    """A MutatingWebhookConfiguration or ValidatingWebhookConfiguration object."""
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind, "metadata": {"name": name},
            "webhooks": list(webhooks)}

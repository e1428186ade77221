"""The NIC actions as subresources of ``virtualmachines`` in ``subresources.nichotplug.io/v1``, served to
kube-apiserver's aggregation layer on the same HTTPS port as the webhooks (SPEC "Subresource API").

kube-apiserver authenticates the user and authorises the subresource with its own RBAC (e.g.
``create`` on ``virtualmachines/addnic``), then proxies the request here. This module:

* believes the request only when it carries the front-proxy client certificate
  (:mod:`nichotplug.actions.frontproxy`); anything else is a 401 and nothing is read or written;
* routes ``POST addnic``, ``POST removenic``, ``GET hotunpluggablenics`` and ``GET hotplugcheck`` to the
  one action flow (:class:`~nichotplug.actions.flow.HotplugFlow`), which reads and writes with the
  service's own account, so the write passes the same rules and webhooks as every other, and the
  Event it records on the VM names the user who asked;
* answers discovery and OpenAPI (:mod:`nichotplug.actions.apidocs`), open to every caller: they
  describe the API and nothing else, and the aggregator reads them to mark the APIService Available;
* answers every error as a ``metav1.Status``, as every Kubernetes API does, so kubectl prints it as
  it prints its own: 400 body not JSON, 401, 404 unknown subresource or VM, 405 wrong method,
  409 refused by the cluster's state, 413 body over 1 MiB, 422 a field missing or malformed.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from aiohttp import hdrs, web
from kubernetes_asyncio.client import ApiClient

from nichotplug.actions import apidocs, metrics
from nichotplug.actions.flow import ActionFailed, ActionResult, EventSink, HotplugFlow
from nichotplug.actions.frontproxy import FrontProxyAuthenticator, NotAuthenticated, RemoteUser
from nichotplug.kube.events import EventRecorder
from nichotplug.rules.cluster import ClusterState
from nichotplug.rules.decision import status_reason
from nichotplug.rules.nic_plans import ActionRefusal, HotplugCheck

log = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 1024 * 1024  # a request body is a few fields; more is a mistake or an attack
BAD_REQUEST: Final = "BadRequest"
NOT_FOUND_PATH: Final = "NotFound"
_STATUS_KIND: Final = {"kind": "Status", "apiVersion": "v1", "metadata": {}}
SUBRESOURCES_BY_NAME: Final = apidocs.SUBRESOURCES


def status_response(refusal: ActionRefusal, *, name: str = "",
                    headers: Mapping[str, str] | None = None) -> web.Response:
    """A failed ``metav1.Status``; our machine-readable code goes in ``details.causes[0].reason``."""
    details: dict[str, Any] = {"group": apidocs.GROUP, "kind": apidocs.RESOURCE,
                               "causes": [{"reason": refusal.code, "message": refusal.message}]}
    if name:
        details["name"] = name
    body = {**_STATUS_KIND, "status": "Failure", "message": refusal.message,
            "reason": status_reason(refusal.status) or "Unknown", "details": details, "code": refusal.status}
    return web.json_response(body, status=refusal.status, headers=headers)


def peer_certificate(request: web.BaseRequest) -> bytes | None:
    """The client certificate of the request's TLS connection (DER), None when it sent none."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    return ssl_object.getpeercert(binary_form=True)


async def _read_limited(request: web.BaseRequest) -> bytes:
    """The body, refusing (413) one over :data:`MAX_BODY_BYTES` before reading it all."""
    too_large = ActionFailed(ActionRefusal(
        413, "RequestEntityTooLarge", f"the request body is larger than {MAX_BODY_BYTES} bytes"))
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def json_object_body(request: web.BaseRequest) -> Mapping[str, Any]:
    """The body as a JSON object; 400 when it is empty, not JSON or not an object, 413 when too large."""
    raw = await _read_limited(request)
    if not raw.strip():
        raise ActionFailed(ActionRefusal(400, BAD_REQUEST, "the request body is empty: send a JSON object"))
    try:
        decoded = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise ActionFailed(ActionRefusal(400, BAD_REQUEST, f"the request body is not JSON: {error}")) from error
    if not isinstance(decoded, dict):
        raise ActionFailed(ActionRefusal(
            400, BAD_REQUEST, f"the request body must be a JSON object, not {type(decoded).__name__}"))
    return decoded


def _interface_answer(result: ActionResult) -> dict[str, Any]:
    return {
        "interface": {"name": result.interface, "macAddress": result.mac, "networkName": result.network},
        "migrationRequested": bool(result.migration) and not result.migration_pending,
        "migration": result.migration or "",
        "migrationPending": result.migration_pending,  # an earlier migration of the VMI applies this one too
        "vmStopped": result.stopped,  # the spec was edited; the VM's next start applies it
        **({"migrationError": result.migration_error} if result.migration_error else {}),
    }


def _check_answer(check: HotplugCheck) -> dict[str, Any]:
    return {"eligible": check.eligible,
            "reasons": [{"code": found.reason, "message": found.message} for found in check.reasons],
            "hotplugPortsLeft": check.ports_left}


class SubresourceHandler:
    """Serves the four subresources for kube-apiserver's front proxy, writing with ``api`` (our account)."""

    def __init__(self, api: ApiClient, authenticator: FrontProxyAuthenticator, *, events: EventSink,
                 cluster: ClusterState | None, migrate: bool) -> None:
        self._api = api
        self._authenticator = authenticator
        self._events = events
        self._cluster = cluster
        self._migrate = migrate

    def authenticate(self, request: web.BaseRequest) -> RemoteUser:
        try:
            return self._authenticator.authenticate(peer_certificate(request), request.headers)
        except NotAuthenticated as error:
            log.info("refused %s %s: %s", request.method, request.path, error)
            raise ActionFailed(ActionRefusal(401, "Unauthorized", str(error))) from error

    async def handle(self, request: web.Request) -> web.Response:
        """``/apis/subresources.nichotplug.io/v1/namespaces/{namespace}/virtualmachines/{name}/{subresource}``."""
        response = await self._respond(request)
        wanted = request.match_info["subresource"]
        metrics.observe_subresource(wanted, wanted in SUBRESOURCES_BY_NAME, response.status)
        return response

    async def _respond(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            return await self._answer(request, name)
        except ActionFailed as failure:
            subresource = SUBRESOURCES_BY_NAME.get(request.match_info["subresource"])
            allow = {"Allow": subresource.method} if failure.refusal.status == 405 and subresource else None
            return status_response(failure.refusal, name=name, headers=allow)
        except Exception:  # a bug still answers as an API does, and is logged
            log.exception("subresource %s %s failed unexpectedly", request.method, request.path)
            return status_response(ActionRefusal(500, "InternalError", "internal error; see nichotplug's log"),
                                   name=name)

    async def not_found(self, request: web.Request) -> web.Response:
        """Any other path in the group: 401 without the front proxy's certificate, else 404."""
        try:
            self.authenticate(request)
        except ActionFailed as failure:
            return status_response(failure.refusal)
        return status_response(ActionRefusal(404, NOT_FOUND_PATH, f"the server could not find {request.path}"))

    async def _answer(self, request: web.Request, name: str) -> web.Response:
        user = self.authenticate(request)
        namespace, wanted = request.match_info["namespace"], request.match_info["subresource"]
        subresource = SUBRESOURCES_BY_NAME.get(wanted)
        if subresource is None:
            raise ActionFailed(ActionRefusal(404, NOT_FOUND_PATH, f"virtualmachines has no subresource {wanted!r}: "
                                                                  f"use one of {', '.join(SUBRESOURCES_BY_NAME)}"))
        if request.method != subresource.method:
            raise ActionFailed(ActionRefusal(405, "MethodNotAllowed", f"{wanted} answers {subresource.method} "
                                                                     f"only, not {request.method}"))
        flow = HotplugFlow(self._api, migrate=self._migrate, events=self._events, known_macs=self._cluster,
                           requested_by=user.name)
        answer = await self._run(flow, subresource, namespace, name, request)
        log.info("%s %s on VM %s/%s for %s done", request.method, wanted, namespace, name, user.name)
        return web.json_response(answer)

    @staticmethod
    async def _run(flow: HotplugFlow, subresource: apidocs.Subresource, namespace: str, name: str,
                   request: web.Request) -> dict[str, Any]:
        if subresource is apidocs.HOTUNPLUGGABLE_NICS:
            return {"interfaces": list((await flow.find_hotunpluggable_nics(namespace, name)).interfaces)}
        if subresource is apidocs.HOTPLUG_CHECK:
            return _check_answer(await flow.check_hotplug(namespace, name))
        body = await json_object_body(request)
        if subresource is apidocs.ADD_NIC:
            return _interface_answer(await flow.add_nic(namespace, name, body, name_optional=True))
        return _interface_answer(await flow.remove_nic(namespace, name, body))


def _document_route(document: Mapping[str, Any]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A handler answering ``document`` (encoded once: it never changes while the process runs)."""
    text = json.dumps(document)

    async def answer(_request: web.Request) -> web.Response:
        return web.json_response(text=text)

    return answer


def setup_subresources(
    app: web.Application,
    *,
    api_client: ApiClient,
    authenticator: FrontProxyAuthenticator,
    cluster: ClusterState | None = None,
    migrate: bool = True,
    events: EventSink | None = None,
) -> SubresourceHandler:
    """Add discovery, OpenAPI and the subresource routes to ``app``.

    ``api_client`` is the service's own: the flow reads and writes with it (kube-apiserver already
    authorised the user on the subresource). ``authenticator`` holds the front-proxy settings, which
    the caller keeps current. ``events`` defaults to an ``EventRecorder`` on ``api_client``.
    """
    handler = SubresourceHandler(api_client, authenticator, events=events or EventRecorder(api_client),
                                 cluster=cluster, migrate=migrate)
    base = f"/apis/{apidocs.GROUP}"
    for path, document in (("/apis", apidocs.api_group_list()), (base, apidocs.api_group()),
                           (f"{base}/{apidocs.VERSION}", apidocs.api_resource_list()),
                           ("/openapi/v2", apidocs.openapi_v2()), ("/openapi/v3", apidocs.openapi_v3_index()),
                           (apidocs.OPENAPI_V3_GROUP_PATH, apidocs.openapi_v3_group())):
        app.router.add_get(path, _document_route(document))
    app.router.add_route(hdrs.METH_ANY, f"{apidocs.VM_PATH}/{{subresource}}", handler.handle)
    app.router.add_route(hdrs.METH_ANY, f"{base}/{{tail:.*}}", handler.not_found)
    return handler


__all__ = ["MAX_BODY_BYTES", "SubresourceHandler", "json_object_body", "setup_subresources", "status_response"]

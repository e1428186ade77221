"""The action API over HTTP: aiohttp routes that turn a request into one :class:`HotplugFlow` call.

``POST /v1/harvester/kubevirt.io.virtualmachines/{namespace}/{name}?action=...`` and the short form
``POST /v1/harvester/vm/{namespace}/{name}?action=...`` (SPEC "Action API"). This module only
authenticates (a bearer token is required; it is handed on, never checked here: the Kubernetes API
server decides with the caller's RBAC), decodes the body and encodes the answer: 204 for addNic and
removeNic, 200 ``{"interfaces": [...]}`` for findHotunpluggableNics, and for every failure
``{"type": "error", "status": N, "code": "...", "message": "..."}`` with ``N`` as the HTTP status.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from aiohttp import web
from kubernetes_asyncio.client import ApiClient

from nichotplug.actions import metrics
from nichotplug.actions.flow import ActionFailed, ActionResult, EventSink, HotplugFlow, known_action
from nichotplug.kube.client import api_client_with_token, bearer_credential
from nichotplug.kube.events import EventRecorder
from nichotplug.rules import nic_plans as plan
from nichotplug.rules.cluster import ClusterState
from nichotplug.rules.nic_plans import ActionRefusal

log = logging.getLogger(__name__)

ROUTE_PATHS: Final = (
    "/v1/harvester/kubevirt.io.virtualmachines/{namespace}/{name}",
    "/v1/harvester/vm/{namespace}/{name}",
)
UNAUTHORIZED: Final = "Unauthorized"
SERVER_ERROR: Final = "ServerError"
REQUEST_TOO_LARGE: Final = "RequestTooLarge"

ApiClientFactory = Callable[[str], ApiClient]  # bearer token -> client acting as that caller
EventSinkFactory = Callable[[ApiClient], EventSink]  # the caller's client -> where Events go


def error_response(refusal: ActionRefusal) -> web.Response:
    """The JSON error body of SPEC "Action API", with the refusal's status as the HTTP status."""
    body = {"type": "error", "status": refusal.status, "code": refusal.code, "message": refusal.message}
    return web.json_response(body, status=refusal.status)


def bearer_token(request: web.Request) -> str:
    """The caller's bearer token, or :class:`ActionFailed` 401 when there is none."""
    token = bearer_credential(request.headers.get("Authorization", ""))
    if not token:
        raise ActionFailed(ActionRefusal(
            401, UNAUTHORIZED, "send the caller's Kubernetes credentials as 'Authorization: Bearer <token>'",
        ))
    return token


async def _json_object_body(request: web.Request) -> Mapping[str, Any]:
    """The request body as a JSON object, or a 422 (413 when over the app's size limit)."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as error:
        raise ActionFailed(ActionRefusal(413, REQUEST_TOO_LARGE, f"request body too large: {error.text}")) from error
    if not raw.strip():
        raise ActionFailed(ActionRefusal(422, plan.INVALID_BODY, "the request body is empty: send a JSON object"))
    try:
        decoded = json.loads(raw)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError; RecursionError: too deep
        raise ActionFailed(ActionRefusal(422, plan.INVALID_BODY, f"the request body is not JSON: {error}")) from error
    if not isinstance(decoded, dict):
        raise ActionFailed(ActionRefusal(
            422, plan.INVALID_BODY, f"the request body must be a JSON object, not {type(decoded).__name__}",
        ))
    return decoded


def _success_response(action: str, result: ActionResult) -> web.Response:
    if action == plan.FIND_HOTUNPLUGGABLE_NICS:
        return web.json_response({"interfaces": list(result.interfaces)})
    return web.Response(status=204)


class ActionHandler:
    """One aiohttp handler for both route forms; holds how to reach the API as the caller."""

    def __init__(self, api_client_factory: ApiClientFactory, *, migrate: bool,
                 events_factory: EventSinkFactory, cluster: ClusterState | None) -> None:
        self._api_client_factory = api_client_factory
        self._cluster = cluster
        self._migrate = migrate
        self._events_factory = events_factory

    async def handle(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        action = request.query.get("action", "")
        try:
            response = await self._answer(request, action)
        except ActionFailed as failure:
            response = error_response(failure.refusal)
        except Exception:  # a bug must still answer in the documented shape, and be logged
            log.exception("action %r on %s failed unexpectedly", action, request.path)
            response = error_response(ActionRefusal(500, SERVER_ERROR, "internal error; see the service's log"))
        metrics.observe(action, response.status, time.perf_counter() - started)
        return response

    async def _answer(self, request: web.Request, action: str) -> web.Response:
        token = bearer_token(request)
        known_action(action)
        # findHotunpluggableNics takes no body; the UI may send none, or anything.
        body = {} if action == plan.FIND_HOTUNPLUGGABLE_NICS else await _json_object_body(request)
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        try:
            api = self._api_client_factory(token)
        except ValueError as error:
            raise ActionFailed(ActionRefusal(401, UNAUTHORIZED, str(error))) from error
        try:
            flow = HotplugFlow(api, migrate=self._migrate, events=self._events_factory(api), known_macs=self._cluster)
            result = await flow.run(action, namespace, name, body)
        finally:
            await api.close()
        log.info("action %s on VM %s/%s done (migration: %s)", action, namespace, name,
                 result.migration or result.migration_error or "none")
        return _success_response(action, result)


def setup_actions(
    app: web.Application,
    *,
    api_client: ApiClient | None = None,
    api_client_factory: ApiClientFactory | None = None,
    cluster: ClusterState | None = None,
    migrate: bool = True,
    events_factory: EventSinkFactory | None = None,
) -> None:
    """Add the action routes to ``app``.

    Each request acts as its caller: ``api_client_factory(token)`` builds that client (default:
    ``kube.client.api_client_with_token(api_client, token)``, same server and CA as the service's
    ``api_client``); the handler closes it after the request. ``cluster`` (the service's
    ``ClusterView``) is consulted only for MACs used by other VMs; the VM, its VMI and NADs are
    always read fresh with the caller's token. ``migrate=False`` leaves the change to KubeVirt's
    LiveUpdate rollout instead of requesting a migration. ``events_factory(caller_client)`` says
    where the Event about a failed migration request goes: by default an ``EventRecorder`` on the
    service's ``api_client`` (an Event is our report, not the caller's write), else on the caller's.
    """
    if api_client_factory is None:
        if api_client is None:
            raise ValueError("setup_actions needs api_client or api_client_factory")
        base = api_client

        def api_client_factory(token: str) -> ApiClient:
            return api_client_with_token(base, token)

    if events_factory is None:
        if api_client is not None:
            shared = EventRecorder(api_client)

            def events_factory(_caller: ApiClient) -> EventSink:
                return shared
        else:
            events_factory = EventRecorder
    handler = ActionHandler(api_client_factory, migrate=migrate, events_factory=events_factory, cluster=cluster)
    for path in ROUTE_PATHS:
        app.router.add_post(path, handler.handle)

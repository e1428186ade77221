"""An in-process Kubernetes API server (aiohttp, TLS on loopback) for tests and the demo.

It answers what nichotplug, kubernetes-asyncio and kubectl ask, the way kube-apiserver v1.36
does (compare ``fixtures/apiserver``): CRUD, patch, list and watch on built-in and custom
resources, schema validation, admission webhooks, bearer tokens with RBAC, discovery and
OpenAPI. It can be restarted on the same port with its data, and told to fail or delay
chosen requests.

Request flow: injected fault -> authentication -> routing (``routing``) -> authorisation -> the
verb: reads in ``read_verbs``, writes in ``write_verbs``; other paths are health or discovery
(``discovery``, ``openapi``). Writes: decode / apply the patch -> mutating admission -> schema
validation -> validating admission -> store. :class:`ApiServer` keeps the lifecycle, the registry
of served resources and the dispatch.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import secrets
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from nichotplug import certs
from nichotplug.testing import admission, discovery, read_verbs, validation, write_verbs, writes
from nichotplug.testing.auth import (
    DEFAULT_RBAC,
    DEFAULT_USERS,
    NOBODY_TOKEN,
    VIEWER_TOKEN,
    Authenticator,
    Authorizer,
    ResourceRequest,
    Rule,
    UserInfo,
    service_account_user,
)
from nichotplug.testing.errors import (
    StatusError,
    forbidden,
    forbidden_path,
    method_not_allowed,
    not_found_resource,
    unauthorized,
)
from nichotplug.testing.faults import Faults
from nichotplug.testing.resources import (
    BUILTIN_RESOURCES,
    CRD_GR,
    MUTATING_GR,
    NAMESPACE_GR,
    VALIDATING_GR,
    ResourceInfo,
    resources_from_crd,
)
from nichotplug.testing.routing import (
    Call,
    Target,
    is_resource_path,
    json_response,
    route,
    status_response,
    verb_of,
)
from nichotplug.testing.store import GroupResource, Store

__all__ = [  # Target, Call and the special group-resources stay importable from here
    "CRD_GR",
    "MUTATING_GR",
    "NAMESPACE_GR",
    "VALIDATING_GR",
    "ApiServer",
    "Call",
    "Target",
    "bundled_crds",
]

log = logging.getLogger(__name__)
CRD_DIR = Path(__file__).parent / "crds"
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
RBAC_GROUP = "rbac.authorization.k8s.io"
MAX_BODY = 256 * 1024 * 1024

Verb = Callable[["ApiServer", Call], Awaitable[web.StreamResponse]]
VERBS: dict[str, Verb] = {
    "get": read_verbs.get, "list": read_verbs.list_objects, "watch": read_verbs.watch,
    "create": write_verbs.create, "update": write_verbs.update, "patch": write_verbs.patch,
    "delete": write_verbs.delete, "deletecollection": write_verbs.delete_collection,
}


@functools.cache
def _shared_bundled_crds() -> tuple[dict[str, Any], ...]:
    """The shipped CRDs, parsed once per process (the YAML is 1 MB); never mutated, shared by servers."""
    documents = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for doc in yaml.load_all(path.read_bytes(), Loader=yaml.CSafeLoader):
            if doc:
                documents.append(doc)
    return tuple(documents)


def bundled_crds() -> list[dict[str, Any]]:
    """Fresh copies of the CRDs in ``nichotplug/testing/crds``."""
    return [writes.deep_copy(crd) for crd in _shared_bundled_crds()]


class ApiServer:
    """An in-process kube-apiserver (see the module docstring and ARCHITECTURE.md "nichotplug.testing").

    ``users`` maps bearer tokens to callers (default: a read-only ``viewer``); ``rbac`` maps user
    names to static :class:`Rule` lists; stored RBAC objects apply as well. ``crds=True`` installs
    the bundled KubeVirt and NAD CRDs (or pass CRD objects). ``watch_history`` is how many changes
    a watch can resume across before it gets 410 Expired. The admin token is generated per server.
    """

    kind = "inprocess"  # which server a test runs on (the real one says "real")

    def __init__(
        self,
        users: Mapping[str, UserInfo] | None = None,
        rbac: Mapping[str, Sequence[Rule]] | None = None,
        crds: bool | Iterable[Mapping[str, Any]] = True,
        port: int = 0,
        watch_history: int = 1000,
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = port
        self.store = Store(watch_history)
        self.authn = Authenticator(tokens=dict(DEFAULT_USERS if users is None else users))
        self.authz = Authorizer(DEFAULT_RBAC if rbac is None else rbac, self._rbac_objects)
        self.faults = Faults()
        self.bookmark_interval = 60.0  # seconds between BOOKMARK events on watches that allow them
        self._resources: dict[tuple[str, str, str], ResourceInfo] = {}
        self._validators: dict[ResourceInfo, validation.SchemaValidator] = {}
        self._storage_versions: dict[GroupResource, ResourceInfo | None] = {}  # cache, reset with the resources
        self._runner: web.AppRunner | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="nichotplug-apiserver-")
        self._bundle: certs.CertBundle | None = None
        self.webhook_client = admission.WebhookClient()  # kept-alive connections to webhooks
        self.streams: set[asyncio.Task[Any]] = set()  # the tasks serving open watches: stop() cancels them
        for info in BUILTIN_RESOURCES:
            self._resources[(info.group, info.version, info.plural)] = info
        for name in INITIAL_NAMESPACES:
            self.store_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        if crds is True:
            for shared in _shared_bundled_crds():
                # The parsed spec is shared by every server's ResourceInfo schemas: nothing mutates it.
                self._install(dict(shared, metadata=dict(shared["metadata"])))
        else:
            for crd in crds or ():
                self.install_crd(crd)

    # -- public API ---------------------------------------------------------------------------
    @property
    def admin_token(self) -> str:
        return self.authn.admin_token

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ca_file(self) -> Path:
        return Path(self._tmp.name) / certs.CA_FILE

    @property
    def ca_pem(self) -> bytes:
        return self._tls_bundle().ca_cert_pem

    @property
    def resources(self) -> list[ResourceInfo]:
        return list(self._resources.values())

    @property
    def viewer_token(self) -> str:
        """A user who may read everything and write nothing."""
        return VIEWER_TOKEN

    @property
    def nobody_token(self) -> str:
        """An authenticated user with no rights at all."""
        if NOBODY_TOKEN not in self.authn.tokens:
            self.authn.add(NOBODY_TOKEN, "nobody")
        return NOBODY_TOKEN

    def add_user(self, token: str, username: str, groups: Sequence[str] = ()) -> UserInfo:
        return self.authn.add(token, username, groups)

    def service_account_token(self, namespace: str, name: str) -> str:
        """A bearer token that authenticates as ``system:serviceaccount:<namespace>:<name>``."""
        token = f"sa-{namespace}-{name}-{secrets.token_urlsafe(16)}"
        username, groups = service_account_user(namespace, name)
        self.authn.add(token, username, groups)
        return token

    def write_kubeconfig(self, path: Path | str, token: str | None = None, namespace: str = "default") -> Path:
        path = Path(path)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "nichotplug-test", "cluster": {
                "server": self.url,
                "certificate-authority-data": base64.b64encode(self.ca_pem).decode(),
            }}],
            "users": [{"name": "nichotplug-test-user", "user": {"token": token or self.admin_token}}],
            "contexts": [{"name": "nichotplug-test", "context": {
                "cluster": "nichotplug-test", "user": "nichotplug-test-user", "namespace": namespace,
            }}],
            "current-context": "nichotplug-test",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    def install_crd(self, crd: Mapping[str, Any]) -> dict[str, Any]:
        """Store a CRD (as if created through the API by the admin) and serve its resources."""
        return self._install(writes.deep_copy(crd))

    def _install(self, crd: dict[str, Any]) -> dict[str, Any]:
        writes.prepare_create(crd, namespace="", keeps_status=False)
        return self.store_crd(crd)

    def preload(self, objects: Iterable[Mapping[str, Any]]) -> int:
        """Store objects directly, skipping HTTP, admission and validation: for large benchmarks.

        Each object gets its server metadata (uid, creationTimestamp, resourceVersion, ...) and a
        watch event, like a create; a missing namespace is created. Returns how many were stored.
        """
        by_kind = {(info.group_version, info.kind): info for info in self._resources.values()}
        stored = 0
        for original in objects:
            info = by_kind.get((original.get("apiVersion", ""), original.get("kind", "")))
            if info is None:
                raise ValueError(f"no served resource for {original.get('apiVersion')} {original.get('kind')}")
            obj = writes.deep_copy(original)
            namespace = obj.get("metadata", {}).get("namespace", "") if info.namespaced else ""
            if namespace and not self.store.exists(NAMESPACE_GR, "", namespace):
                self.store_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
            writes.prepare_create(obj, namespace=namespace, keeps_status=True)
            write_verbs.put(self, info, obj)
            stored += 1
        return stored

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("the API server is already running")
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=self._ssl_context(), reuse_address=True)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        await self.webhook_client.start()

    async def stop(self) -> None:
        """Stop serving (the data stays); every open watch ends."""
        if self._runner is None:
            return
        self.store.close_watchers()
        for task in list(self.streams):
            task.cancel()
        runner, self._runner = self._runner, None
        await runner.cleanup()
        await self.webhook_client.close()

    async def restart(self) -> None:
        """Stop and start on the same port, keeping the data; watches must list again, as after a real restart."""
        await self.stop()
        self.store.open_windows_after_restart({(info.group, info.plural) for info in self._resources.values()})
        await self.start()

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- TLS ----------------------------------------------------------------------------------
    def _tls_bundle(self) -> certs.CertBundle:
        if self._bundle is None:
            self._bundle = certs.make_bundle(dns_names=["localhost"], ip_addresses=[self.host])
            paths = certs.write_bundle(self._bundle, Path(self._tmp.name))
            assert paths[certs.CA_FILE] == self.ca_file
        return self._bundle

    def _ssl_context(self) -> ssl.SSLContext:
        self._tls_bundle()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        directory = Path(self._tmp.name)
        context.load_cert_chain(directory / certs.CERT_FILE, directory / certs.KEY_FILE)
        return context

    # -- resource registry --------------------------------------------------------------------
    def store_crd(self, crd: dict[str, Any]) -> dict[str, Any]:
        """Store a CRD as Established and serve its resources (replacing what an older one served)."""
        names = crd["spec"]["names"]
        crd["status"] = {
            "acceptedNames": {k: names[k] for k in ("kind", "listKind", "plural", "singular", "shortNames",
                                                    "categories") if k in names},
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": writes.now_rfc3339()},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": writes.now_rfc3339()},
            ],
            "storedVersions": [v["name"] for v in crd["spec"].get("versions", []) if v.get("storage")],
        }
        old = self.store.get(CRD_GR, "", crd["metadata"]["name"])
        if old is not None:
            self.unregister_crd(old)
        for info in resources_from_crd(crd):
            self._resources[(info.group, info.version, info.plural)] = info
            self.store.open_window((info.group, info.plural))
        self._storage_versions.clear()
        return self.store.put(CRD_GR, crd)

    def unregister_crd(self, crd: Mapping[str, Any]) -> None:
        """Stop serving the resources of a CRD (its objects stay in the store until dropped)."""
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        for key in [k for k in self._resources if k[0] == group and k[2] == plural]:
            del self._resources[key]
        for info in [i for i in self._validators if i.group == group and i.plural == plural]:
            del self._validators[info]
        self._storage_versions.clear()

    def store_namespace(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store a Namespace with what kube-apiserver adds: its name label, the kubernetes finalizer, Active."""
        if "uid" not in obj["metadata"]:
            writes.prepare_create(obj, namespace="", keeps_status=False)
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
        obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        obj.setdefault("status", {"phase": "Active"})
        return self.store.put(NAMESPACE_GR, obj)

    def storage_info(self, group: str, plural: str) -> ResourceInfo | None:
        """The version a resource is stored in (None when it is not served)."""
        key = (group, plural)
        if key not in self._storage_versions:
            candidates = [i for (g, _, p), i in self._resources.items() if g == group and p == plural]
            self._storage_versions[key] = next((i for i in candidates if i.storage),
                                               candidates[0] if candidates else None)
        return self._storage_versions[key]

    def validator(self, info: ResourceInfo) -> validation.SchemaValidator:
        """The schema validator of a resource that has a schema; built once per server and resource."""
        # Hashing a 600 KB schema takes milliseconds: once per server and resource, not per write.
        found = self._validators.get(info)
        if found is None:
            assert info.schema is not None
            found = self._validators[info] = validation.validator_for(info.schema)
        return found

    def _rbac_objects(self, plural: str) -> Iterable[Mapping[str, Any]]:
        return self.store.objects((RBAC_GROUP, plural))

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        obj = self.store.get(NAMESPACE_GR, "", namespace)
        labels: Mapping[str, str] = (obj or {}).get("metadata", {}).get("labels") or {}
        return labels

    # -- HTTP entry point ---------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            fault = self.faults.take(request.method, request.path_qs)
            if fault is not None:
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                error = fault.error()
                if error is not None:
                    raise error
            user = self.authn.authenticate(request.headers.get("Authorization"))
            if user is None:
                raise unauthorized()
            if request.path.startswith(("/api/", "/apis/")) and is_resource_path(request.path):
                return await self._serve_resource(request, user)
            return self._serve_non_resource(request, user)
        except StatusError as error:
            return status_response(error)
        except Exception as error:  # a bug here must still answer a Status, as kube-apiserver's panic filter does
            log.exception("internal error serving %s %s", request.method, request.path_qs)
            return status_response(StatusError(500, "InternalError", f"Internal error occurred: {error}", {
                "causes": [{"message": str(error)}]}))

    def _serve_non_resource(self, request: web.Request, user: UserInfo) -> web.Response:
        path = request.path.rstrip("/") or "/"
        if not self.authz.allowed_path(user, path):
            raise forbidden_path(user.username, request.method.lower(), path)
        if request.method != "GET":
            raise method_not_allowed()
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok", content_type="text/plain")
        if path in ("/api", "/apis") and discovery.wants_aggregated(request.headers.get("Accept")):
            aggregated = discovery.aggregated(self.resources, core=path == "/api")
            return json_response(aggregated, content_type=discovery.AGGREGATED_MEDIA_TYPE)
        document = discovery.document(path, self.resources, server_address=f"{self.host}:{self.port}")
        if document is None:
            raise not_found_resource()
        return json_response(document)

    async def _serve_resource(self, request: web.Request, user: UserInfo) -> web.StreamResponse:
        target = route(self._resources, request.path)
        verb = verb_of(request, target)
        if not self.authz.allowed(user, ResourceRequest(
                verb, target.info.group, target.info.plural, target.subresource, target.namespace, target.name)):
            raise forbidden(username=user.username, verb=verb, resource=target.info.plural,
                            subresource=target.subresource, group=target.info.group,
                            namespace=target.namespace, name=target.name)
        call = Call(request, user, target)
        try:
            return await VERBS[verb](self, call)
        except StatusError as error:
            # Warnings gathered before a failure (a mutating webhook's, say) still reach the client.
            return status_response(error, [*call.warnings, *getattr(error, "warnings", ())])

"""An in-process Kubernetes API server (aiohttp, TLS on loopback) for tests and the demo.

It answers what nichotplug, kubernetes-asyncio and kubectl ask, the way kube-apiserver v1.36
does (compare ``fixtures/apiserver``): CRUD, patch, list and watch on built-in and custom
resources, schema validation, admission webhooks, bearer tokens with RBAC, discovery and
OpenAPI. It can be restarted on the same port with its data, and told to fail or delay
chosen requests.

Request flow: injected fault -> authentication -> routing -> authorisation -> the verb.
Writes: decode / apply the patch -> mutating admission -> schema validation -> validating
admission -> store.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import secrets
import ssl
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiohttp import web
from multidict import CIMultiDict

from nichotplug import certs
from nichotplug.testing import admission, discovery, openapi, patching, tables, validation, writes
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
from nichotplug.testing.builtins import builtin_causes
from nichotplug.testing.errors import (
    StatusError,
    already_exists,
    bad_request,
    conflict,
    expired,
    forbidden,
    forbidden_path,
    invalid,
    method_not_allowed,
    namespace_not_found,
    namespace_terminating,
    not_found,
    not_found_resource,
    unauthorized,
)
from nichotplug.testing.faults import Faults
from nichotplug.testing.resources import BUILTIN_RESOURCES, ResourceInfo, resources_from_crd
from nichotplug.testing.selectors import Matcher, combine, field_matcher, label_matcher
from nichotplug.testing.store import ADDED, DELETED, MODIFIED, Entry, GroupResource, Store, StoreEvent, TooOld, Watcher

log = logging.getLogger(__name__)
CRD_DIR = Path(__file__).parent / "crds"
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
CRD_GR: GroupResource = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACE_GR: GroupResource = ("", "namespaces")
MUTATING_GR: GroupResource = ("admissionregistration.k8s.io", "mutatingwebhookconfigurations")
VALIDATING_GR: GroupResource = ("admissionregistration.k8s.io", "validatingwebhookconfigurations")
RBAC_GROUP = "rbac.authorization.k8s.io"
JSON = "application/json"
MAX_BODY = 256 * 1024 * 1024
GO_TRUE = ("1", "t", "T", "true", "TRUE", "True")  # what Go's strconv.ParseBool reads as true


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


MAX_WRITE_ATTEMPTS = 5


class _ChangedMeanwhile(Exception):
    """The object changed while a write was in admission: the write starts again from the new one."""


@dataclass(frozen=True)
class Target:
    """What a resource URL names."""

    info: ResourceInfo
    namespace: str  # "" for cluster-scoped or all namespaces
    name: str  # "" for the collection
    subresource: str = ""

    @property
    def gr(self) -> GroupResource:
        return (self.info.group, self.info.plural)


@dataclass
class Call:
    """One request being served: who, what, and the warnings to send back."""

    request: web.Request
    user: UserInfo
    target: Target
    warnings: list[str] = field(default_factory=list)

    @property
    def query(self) -> Mapping[str, str]:
        return self.request.query

    @property
    def dry_run(self) -> bool:
        return "All" in self.request.query.getall("dryRun", [])


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
        self._webhook_client = admission.WebhookClient()  # kept-alive connections to webhooks
        self._streams: set[asyncio.Task[Any]] = set()
        for info in BUILTIN_RESOURCES:
            self._resources[(info.group, info.version, info.plural)] = info
        for name in INITIAL_NAMESPACES:
            self._store_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
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
        return self._store_crd(crd)

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
                self._store_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
            writes.prepare_create(obj, namespace=namespace, keeps_status=True)
            self._put(info, obj)
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
        await self._webhook_client.start()

    async def stop(self) -> None:
        """Stop serving (the data stays); every open watch ends."""
        if self._runner is None:
            return
        self.store.close_watchers()
        for task in list(self._streams):
            task.cancel()
        runner, self._runner = self._runner, None
        await runner.cleanup()
        await self._webhook_client.close()

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
    def _store_crd(self, crd: dict[str, Any]) -> dict[str, Any]:
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
            self._unregister(old)
        for info in resources_from_crd(crd):
            self._resources[(info.group, info.version, info.plural)] = info
            self.store.open_window((info.group, info.plural))
        self._storage_versions.clear()
        return self.store.put(CRD_GR, crd)

    def _unregister(self, crd: Mapping[str, Any]) -> None:
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        for key in [k for k in self._resources if k[0] == group and k[2] == plural]:
            del self._resources[key]
        for info in [i for i in self._validators if i.group == group and i.plural == plural]:
            del self._validators[info]
        self._storage_versions.clear()

    def _store_namespace(self, obj: dict[str, Any]) -> dict[str, Any]:
        if "uid" not in obj["metadata"]:
            writes.prepare_create(obj, namespace="", keeps_status=False)
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
        obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        obj.setdefault("status", {"phase": "Active"})
        return self.store.put(NAMESPACE_GR, obj)

    def _storage_info(self, group: str, plural: str) -> ResourceInfo | None:
        key = (group, plural)
        if key not in self._storage_versions:
            candidates = [i for (g, _, p), i in self._resources.items() if g == group and p == plural]
            self._storage_versions[key] = next((i for i in candidates if i.storage),
                                               candidates[0] if candidates else None)
        return self._storage_versions[key]

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
            if request.path.startswith(("/api/", "/apis/")) and self._is_resource_path(request.path):
                return await self._serve_resource(request, user)
            return self._serve_non_resource(request, user)
        except StatusError as error:
            return _status_response(error)
        except Exception as error:  # a bug here must still answer a Status, as kube-apiserver's panic filter does
            log.exception("internal error serving %s %s", request.method, request.path_qs)
            return _status_response(StatusError(500, "InternalError", f"Internal error occurred: {error}", {
                "causes": [{"message": str(error)}]}))

    def _is_resource_path(self, path: str) -> bool:
        parts = [p for p in path.split("/") if p]
        return len(parts) >= (3 if parts[0] == "api" else 4)

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
            return _json_response(aggregated, content_type=discovery.AGGREGATED_MEDIA_TYPE)
        document = self._discovery_document(path)
        if document is None:
            raise not_found_resource()
        return _json_response(document)

    def _discovery_document(self, path: str) -> dict[str, Any] | None:
        resources = self.resources
        parts = [p for p in path.split("/") if p]
        if path == "/version":
            return dict(discovery.version())
        if path == "/api":
            return dict(discovery.core_versions(server_address=f"{self.host}:{self.port}"))
        if path == "/apis":
            return dict(discovery.group_list(resources))
        if parts[0] == "apis" and len(parts) == 2:
            found = discovery.group(resources, parts[1])
            return dict(found) if found is not None else None
        if parts[0] == "api" and len(parts) == 2:
            found = discovery.resource_list(resources, "", parts[1])
            return dict(found) if found is not None else None
        if parts[0] == "apis" and len(parts) == 3:
            found = discovery.resource_list(resources, parts[1], parts[2])
            return dict(found) if found is not None else None
        if parts[:2] == ["openapi", "v3"]:
            if len(parts) == 2:
                return dict(openapi.v3_index(resources))
            if parts[2] == "api" and len(parts) == 4:
                found = openapi.v3_document(resources, "", parts[3])
            elif parts[2] == "apis" and len(parts) == 5:
                found = openapi.v3_document(resources, parts[3], parts[4])
            else:
                found = None
            return dict(found) if found is not None else None
        return None

    # -- routing ------------------------------------------------------------------------------
    def _route(self, path: str) -> Target:
        parts = [p for p in path.split("/") if p]
        if parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        else:
            group, version, rest = parts[1], parts[2], parts[3:]
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces" and (group, version, rest[2]) in self._resources:
            namespace, rest = rest[1], rest[2:]
            if not self._resources[(group, version, rest[0])].namespaced:
                raise not_found_resource()
        info = self._resources.get((group, version, rest[0]))
        if info is None or len(rest) > 3:
            raise not_found_resource()
        name = rest[1] if len(rest) > 1 else ""
        subresource = rest[2] if len(rest) > 2 else ""
        if subresource and subresource not in info.subresources and not _token_request(info, subresource):
            raise not_found_resource()
        return Target(info, namespace, name, subresource)

    async def _serve_resource(self, request: web.Request, user: UserInfo) -> web.StreamResponse:
        target = self._route(request.path)
        verb = _verb(request, target)
        if not self.authz.allowed(user, ResourceRequest(
                verb, target.info.group, target.info.plural, target.subresource, target.namespace, target.name)):
            raise forbidden(username=user.username, verb=verb, resource=target.info.plural,
                            subresource=target.subresource, group=target.info.group,
                            namespace=target.namespace, name=target.name)
        call = Call(request, user, target)
        handlers = {
            "get": self._get, "list": self._list, "watch": self._watch, "create": self._create,
            "update": self._update, "patch": self._patch, "delete": self._delete,
            "deletecollection": self._delete_collection,
        }
        try:
            return await handlers[verb](call)
        except StatusError as error:
            # Warnings gathered before a failure (a mutating webhook's, say) still reach the client.
            return _status_response(error, [*call.warnings, *getattr(error, "warnings", ())])

    # -- reads --------------------------------------------------------------------------------
    def _render(self, info: ResourceInfo, obj: Mapping[str, Any]) -> Mapping[str, Any]:
        if obj.get("apiVersion") == info.group_version:
            return obj
        return {**obj, "apiVersion": info.group_version}

    def _existing(self, target: Target) -> dict[str, Any]:
        obj = self.store.get(target.gr, target.namespace, target.name)
        if obj is None:
            raise not_found(target.info.plural, target.info.group, target.name)
        return obj

    async def _get(self, call: Call) -> web.StreamResponse:
        obj = self._render(call.target.info, self._existing(call.target))
        table = self._table(call, [obj], resource_version="")
        if table is not None:
            return table
        return _json_response(obj, warnings=call.warnings)

    def _wants_table(self, call: Call) -> bool:
        return bool(tables.wants_table(call.request.headers.get("Accept")))

    def _table(self, call: Call, objects: Sequence[Mapping[str, Any]], *, resource_version: str,
               continue_token: str = "") -> web.Response | None:
        """The meta.k8s.io Table ``kubectl get`` asks for, when the resource has printer columns."""
        if not tables.wants_table(call.request.headers.get("Accept")):
            return None
        table = tables.table(call.target.info, objects, resource_version=resource_version,
                             continue_token=continue_token, include_object=call.query.get("includeObject", "Metadata"))
        if table is None:
            return None
        return _json_response(table, warnings=call.warnings, content_type=tables.TABLE_MEDIA_TYPE)

    def _matcher(self, call: Call) -> Matcher | None:
        return combine(label_matcher(call.query.get("labelSelector")),
                       field_matcher(call.query.get("fieldSelector")))

    async def _list(self, call: Call) -> web.StreamResponse:
        target, query = call.target, call.query
        if target.name:
            raise method_not_allowed()
        matcher = self._matcher(call)
        limit = _int_param(query, "limit")
        after = None
        if query.get("continue"):
            _, after = writes.decode_continue(query["continue"], target.info.namespaced)
        namespace = target.namespace if target.info.namespaced and target.namespace else None
        keys = self.store.keys(target.gr, namespace, after)
        bucket = self.store.bucket(target.gr)
        selected: list[Entry] = []
        stopped_at = None
        for index, key in enumerate(keys):
            entry = bucket[key]
            if matcher is not None and not matcher(entry.head):
                continue
            if limit and len(selected) == limit:
                stopped_at = index
                break
            selected.append(entry)
        metadata: dict[str, Any] = {}
        if stopped_at is not None:
            last = selected[-1].head["metadata"]
            metadata["continue"] = writes.encode_continue(self.store.resource_version,
                                                          (last["namespace"], last["name"]))
            if matcher is None:
                metadata["remainingItemCount"] = len(keys) - stopped_at
        elif _is_custom(target.info):
            metadata["continue"] = ""  # custom resource lists always carry it (fixtures 21, 22)
        metadata["resourceVersion"] = str(self.store.resource_version)
        if self._wants_table(call):
            table = self._table(call, [self._render(target.info, e.decode()) for e in selected],
                                resource_version=metadata["resourceVersion"],
                                continue_token=metadata.get("continue", ""))
            if table is not None:
                return table
        # Assembled from the stored JSON: no decoding or re-encoding of 100,000 objects.
        body = b"".join((
            b'{"apiVersion":', orjson.dumps(target.info.group_version), b',"items":[',
            b",".join(self._raw(target.info, entry) for entry in selected),
            b'],"kind":', orjson.dumps(target.info.effective_list_kind), b',"metadata":', orjson.dumps(metadata), b"}",
        ))
        return _bytes_response(body, warnings=call.warnings)

    def _raw(self, info: ResourceInfo, entry: Entry) -> bytes:
        """An entry's JSON as ``info``'s version shows it (re-encoded only for a non-storage version)."""
        storage = self._storage_info(info.group, info.plural)
        if storage is None or storage.version == info.version:
            return entry.raw
        return orjson.dumps(self._render(info, entry.decode()))

    async def _watch(self, call: Call) -> web.StreamResponse:
        target, query = call.target, call.query
        matcher = self._matcher(call)
        if target.name:
            matcher = combine(matcher, field_matcher(f"metadata.name={target.name}"))
        rv_param = query.get("resourceVersion", "")
        since = None if rv_param in ("", "0") else _int_param(query, "resourceVersion")
        timeout = _int_param(query, "timeoutSeconds")
        bookmarks = query.get("allowWatchBookmarks") in GO_TRUE
        namespace = target.namespace if target.info.namespaced and target.namespace else None
        response = web.StreamResponse(status=200, headers={"Content-Type": JSON})
        await response.prepare(call.request)
        try:
            watcher, initial = self.store.watch(target.gr, namespace, since)
        except TooOld as too_old:
            error = expired(rv_param, too_old.oldest_retained)
            await response.write(orjson.dumps({"type": "ERROR", "object": error.to_status()}) + b"\n")
            return response
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
        try:
            await self._stream_events(response, call, watcher, initial, matcher, timeout, bookmarks)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.unwatch(watcher)
            if task is not None:
                self._streams.discard(task)
        return response

    async def _stream_events(self, response: web.StreamResponse, call: Call, watcher: Watcher,
                             initial: list[StoreEvent], matcher: Matcher | None, timeout_seconds: int | None,
                             bookmarks: bool) -> None:
        info = call.target.info
        encode = self._event_encoder(call)
        # Initial events go out in large writes: one write per event took seconds for 100,000 objects.
        batch: list[bytes] = []
        for event in initial:
            event_type = _visible_type(event, matcher)
            if event_type is not None:
                batch.append(encode(event, event_type))
            if len(batch) >= 1000:
                await response.write(b"".join(batch))
                batch = []
        if batch:
            await response.write(b"".join(batch))
        if bookmarks and call.query.get("sendInitialEvents") == "true":
            await self._send_bookmark(response, info, initial_events_end=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_seconds if timeout_seconds else None
        while True:
            wait = self.bookmark_interval if bookmarks else None
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                wait = min(wait, remaining) if wait is not None else remaining
            try:
                change = await asyncio.wait_for(watcher.queue.get(), wait)
            except TimeoutError:
                if bookmarks:
                    await self._send_bookmark(response, info)
                continue
            if change is None:
                return
            event_type = _visible_type(change, matcher)
            if event_type is not None:
                await response.write(encode(change, event_type))

    def _event_encoder(self, call: Call) -> Callable[[StoreEvent, str], bytes]:
        """How this watch writes one event: the stored JSON, or a one-row Table for ``kubectl get -w``."""
        info = call.target.info
        if not self._wants_table(call) or tables.columns_of(info) is None:
            def plain(event: StoreEvent, event_type: str) -> bytes:
                return b'{"type":"' + event_type.encode() + b'","object":' + self._raw(info, event.entry) + b"}\n"
            return plain
        first = [True]

        def as_table(event: StoreEvent, event_type: str) -> bytes:
            table = tables.table(info, [self._render(info, event.entry.decode())],
                                 include_object=call.query.get("includeObject", "Metadata"))
            assert table is not None  # columns_of(info) was checked above
            if not first[0]:
                table["columnDefinitions"] = []  # kube-apiserver sends the columns with the first event only
            first[0] = False
            return orjson.dumps({"type": event_type, "object": table}) + b"\n"
        return as_table

    async def _send_bookmark(self, response: web.StreamResponse, info: ResourceInfo,
                             initial_events_end: bool = False) -> None:
        metadata: dict[str, Any] = {"resourceVersion": str(self.store.resource_version)}
        if initial_events_end:
            metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
        bookmark = {"kind": info.kind, "apiVersion": info.group_version, "metadata": metadata}
        await response.write(orjson.dumps({"type": "BOOKMARK", "object": bookmark}) + b"\n")

    # -- writes -------------------------------------------------------------------------------
    async def _create(self, call: Call) -> web.StreamResponse:
        target = call.target
        if _token_request(target.info, target.subresource):
            return self._token_request(call)
        if target.name or (target.info.namespaced and not target.namespace):
            raise method_not_allowed()
        obj = _decode_object(await call.request.read(), call.request.content_type)
        created = await self._create_object(call, obj)
        return _json_response(self._render(target.info, created), status=201, warnings=call.warnings)

    async def _create_object(self, call: Call, obj: dict[str, Any]) -> dict[str, Any]:
        target, info = call.target, call.target.info
        self._check_type(obj, info)
        meta = obj.get("metadata")
        if isinstance(meta, dict) and meta.get("namespace") and meta["namespace"] != target.namespace:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
        if info.namespaced:
            self._check_namespace_open(target.namespace, info, (obj.get("metadata") or {}).get("name", ""))
        writes.prepare_create(obj, namespace=target.namespace, keeps_status="status" not in info.subresources)
        self._prune(call, obj)
        obj = await self._admit(call, "CREATE", obj, None)
        self._validate(info, obj, old=None)
        obj = await self._admit(call, "CREATE", obj, None, validating=True)
        name = obj["metadata"]["name"]
        if self.store.exists(target.gr, target.namespace, name):
            raise already_exists(info.plural, info.group, name)
        if call.dry_run:
            return obj
        return self._put(info, obj)

    def _check_namespace_open(self, namespace: str, info: ResourceInfo, name: str) -> None:
        namespace_obj = self.store.get(NAMESPACE_GR, "", namespace)
        if namespace_obj is None:
            raise namespace_not_found(namespace)
        if namespace_obj["metadata"].get("deletionTimestamp"):
            raise namespace_terminating(info.plural, info.group, name, namespace)

    def _put(self, info: ResourceInfo, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object in its storage version, with the side effects of special resources."""
        storage = self._storage_info(info.group, info.plural) or info
        obj["apiVersion"] = storage.group_version
        writes.drop_empty_metadata(obj)
        if (info.group, info.plural) == CRD_GR:
            return self._store_crd(obj)
        if (info.group, info.plural) == NAMESPACE_GR:
            return self._store_namespace(obj)
        return self.store.put((info.group, info.plural), obj)

    async def _update(self, call: Call) -> web.StreamResponse:
        target = call.target
        body = _decode_object(await call.request.read(), call.request.content_type)
        body_rv = (body.get("metadata") or {}).get("resourceVersion")
        for _ in range(MAX_WRITE_ATTEMPTS):
            old = self._existing(target)
            if body_rv and body_rv != old["metadata"]["resourceVersion"]:
                raise conflict(target.info.plural, target.info.group, target.name)
            call.warnings.clear()
            try:
                result, status = await self._write_update(call, old, writes.deep_copy(body))
            except _ChangedMeanwhile:
                continue
            return _json_response(self._render(target.info, result), status=status, warnings=call.warnings)
        raise conflict(target.info.plural, target.info.group, target.name)

    async def _patch(self, call: Call) -> web.StreamResponse:
        target, info = call.target, call.target.info
        kind, patch = patching.decode_patch(call.request.headers.get("Content-Type"), await call.request.read(),
                                            custom_resource=_is_custom(info))
        if kind == patching.APPLY_PATCH and not call.query.get("fieldManager"):
            raise invalid("PatchOptions", "meta.k8s.io", "", [{
                "reason": "FieldValueRequired", "message": "Required value: is required for apply patch",
                "field": "fieldManager"}])
        for _ in range(MAX_WRITE_ATTEMPTS):
            old = self.store.get(target.gr, target.namespace, target.name)
            if old is None:
                if kind != patching.APPLY_PATCH or target.subresource:
                    raise not_found(info.plural, info.group, target.name)
                created = await self._create_object(call, {**patch, "metadata": {**(patch.get("metadata") or {}),
                                                                                 "name": target.name}})
                return _json_response(self._render(info, created), status=201, warnings=call.warnings)
            # Like etcd's GuaranteedUpdate: a patch is applied to the object as it is when it is stored.
            patched = patching.apply_patch(kind, self._render(info, old), patch, object_kind=info.kind)
            patched_rv = (patched.get("metadata") or {}).get("resourceVersion")
            if patched_rv and patched_rv != old["metadata"]["resourceVersion"]:
                raise conflict(info.plural, info.group, target.name)
            call.warnings.clear()
            try:
                result, status = await self._write_update(call, old, patched)
            except _ChangedMeanwhile:
                continue
            return _json_response(self._render(info, result), status=status, warnings=call.warnings)
        raise conflict(info.plural, info.group, target.name)

    async def _write_update(self, call: Call, old: dict[str, Any],
                            new: dict[str, Any]) -> tuple[Mapping[str, Any], int]:
        """The common tail of PUT and PATCH: status rules, admission, validation, store."""
        target, info = call.target, call.target.info
        self._check_type(new, info)
        new_meta = new.get("metadata") or {}
        if new_meta.get("namespace", target.namespace) != target.namespace:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
        if new_meta.get("name", target.name) != target.name:
            raise bad_request(f"the name of the object ({new_meta.get('name')}) does not match the name on the URL "
                              f"({target.name})")
        if call.request.method == "PUT" and not new_meta.get("resourceVersion") and not info.unconditional_update:
            # The registry's AllowUnconditionalUpdate: a PUT must say which version it replaces.
            raise invalid(info.kind, info.group, target.name, [{
                "reason": "FieldValueInvalid", "field": "metadata.resourceVersion",
                "message": "Invalid value: 0x0: must be specified for an update"}])
        if new_meta.get("uid") and new_meta["uid"] != old["metadata"]["uid"]:
            writes.check_preconditions({"preconditions": {"uid": new_meta["uid"]}}, old, info.qualified_name)
        has_status = "status" in info.subresources
        new = writes.split_status(new, old, subresource=target.subresource, has_status=has_status)
        writes.carry_system_metadata(new, old)
        self._prune(call, new)
        new = await self._admit(call, "UPDATE", new, old)
        writes.carry_system_metadata(new, old)
        self._validate(info, new, old=old)
        new = await self._admit(call, "UPDATE", new, old, validating=True)
        writes.check_no_new_finalizers(new, old, info)
        writes.bump_generation(new, old, has_status=has_status)
        new["apiVersion"] = old["apiVersion"]
        if self.store.version_of(target.gr, target.namespace, target.name) != old["metadata"]["resourceVersion"]:
            raise _ChangedMeanwhile  # someone else wrote while the webhooks were being called

        if writes.unchanged(new, old):
            return old, 200
        if call.dry_run:
            return new, 200
        if old["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            stored = self._put(info, new)
            return self._remove(info, stored) or stored, 200
        return self._put(info, new), 200

    async def _delete(self, call: Call) -> web.StreamResponse:
        target, info = call.target, call.target.info
        options = _decode_options(await call.request.read())
        old = self._existing(target)
        writes.check_preconditions(options, old, info.qualified_name)
        await self._admit(call, "DELETE", None, old, options=options)
        await self._admit(call, "DELETE", None, old, options=options, validating=True)
        old = self._existing(target)  # as it is now, after the webhooks' awaits
        writes.check_preconditions(options, old, info.qualified_name)
        result = self._delete_object(call, old)
        if result is not None:
            return _json_response(self._render(info, result), warnings=call.warnings)
        details: dict[str, Any] = {"name": target.name}
        if info.group:
            details["group"] = info.group
        details["kind"] = info.plural
        details["uid"] = old["metadata"]["uid"]
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
        return _json_response(status, warnings=call.warnings)

    def _delete_object(self, call: Call, old: dict[str, Any]) -> Mapping[str, Any] | None:
        """Delete or mark deleting; returns the object when it stays (finalizers), else None."""
        info = call.target.info
        if (info.group, info.plural) == NAMESPACE_GR:
            return old if call.dry_run else self._terminate_namespace(old)
        if old["metadata"].get("finalizers"):
            if old["metadata"].get("deletionTimestamp") or call.dry_run:
                return old
            return self._put(info, writes.mark_deleting(old))
        if not call.dry_run:
            self._remove(info, old)
        return None

    def _remove(self, info: ResourceInfo, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        meta = obj["metadata"]
        gr = (info.group, info.plural)
        if gr == CRD_GR:
            self._unregister(obj)
            self.store.drop_resource((obj["spec"]["group"], obj["spec"]["names"]["plural"]))
        removed = self.store.remove(gr, meta.get("namespace", ""), meta["name"])
        if meta.get("namespace"):
            self._finish_namespace(meta["namespace"])
        return removed

    def _terminate_namespace(self, namespace_obj: dict[str, Any]) -> Mapping[str, Any]:
        """Namespace deletion as the namespace controller does it: Terminating, contents deleted, then gone.

        Objects with finalizers are only marked; the namespace goes once the last of them does.
        """
        name = namespace_obj["metadata"]["name"]
        if not namespace_obj["metadata"].get("deletionTimestamp"):
            terminating = writes.mark_deleting(namespace_obj)
            terminating["status"] = {"phase": "Terminating"}
            namespace_obj = self.store.put(NAMESPACE_GR, terminating)
        for gr in self.store.group_resources():
            for obj in list(self.store.objects(gr, name)) if gr != NAMESPACE_GR else ():
                if not obj["metadata"].get("finalizers"):
                    self.store.remove(gr, name, obj["metadata"]["name"])
                elif not obj["metadata"].get("deletionTimestamp"):
                    self.store.put(gr, writes.mark_deleting(obj))
        self._finish_namespace(name)
        return namespace_obj

    def _finish_namespace(self, name: str) -> None:
        """Remove a terminating namespace once nothing is left in it."""
        namespace_obj = self.store.get(NAMESPACE_GR, "", name)
        if namespace_obj is None or not namespace_obj["metadata"].get("deletionTimestamp"):
            return
        if any(self.store.keys(gr, name) for gr in self.store.group_resources() if gr != NAMESPACE_GR):
            return
        self.store.remove(NAMESPACE_GR, "", name)

    async def _delete_collection(self, call: Call) -> web.StreamResponse:
        target = call.target
        options = _decode_options(await call.request.read())
        matcher = self._matcher(call)
        namespace = target.namespace if target.info.namespaced and target.namespace else None
        for obj in list(self.store.objects(target.gr, namespace)):
            if matcher is None or matcher(obj):
                one = Call(call.request, call.user, Target(target.info, obj["metadata"].get("namespace", ""),
                                                           obj["metadata"]["name"]), call.warnings)
                await self._admit(one, "DELETE", None, obj, options=options)
                await self._admit(one, "DELETE", None, obj, options=options, validating=True)
                self._delete_object(one, obj)
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        return _json_response(status, warnings=call.warnings)

    def _token_request(self, call: Call) -> web.StreamResponse:
        target = call.target
        self._existing(Target(target.info, target.namespace, target.name))
        token = self.service_account_token(target.namespace, target.name)
        body = {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": target.name, "namespace": target.namespace},
                "spec": {"audiences": [], "expirationSeconds": 3600},
                "status": {"token": token, "expirationTimestamp": writes.now_rfc3339()}}
        return _json_response(body, status=201)

    # -- checks -------------------------------------------------------------------------------
    def _check_type(self, obj: dict[str, Any], info: ResourceInfo) -> None:
        """apiVersion/kind must name this resource; built-ins may leave them out (typed clients do)."""
        writes.check_metadata_shape(obj)
        is_custom = _is_custom(info)
        if is_custom and not obj.get("kind"):
            raise bad_request(f"Object 'Kind' is missing in '{orjson.dumps(obj).decode()[:200]}'")
        obj.setdefault("apiVersion", info.group_version)
        obj.setdefault("kind", info.kind)
        if obj["kind"] != info.kind:
            raise bad_request(
                f"the kind of the object ({obj['kind']}) does not match the kind on the URL ({info.kind})")
        if obj["apiVersion"] != info.group_version:
            raise bad_request(f"the API version in the data ({obj['apiVersion']}) does not match the expected API "
                              f"version ({info.group_version})")

    def _prune(self, call: Call, obj: dict[str, Any]) -> None:
        info = call.target.info
        if info.schema is None:
            return
        unknown = self._validator(info).prune(obj)
        if not unknown:
            return
        mode = call.query.get("fieldValidation", "Warn")
        if mode == "Strict":
            raise validation.strict_error(info.kind, info.version, unknown)
        if mode == "Warn":
            call.warnings.extend(f'unknown field "{path}"' for path in unknown)

    def _validator(self, info: ResourceInfo) -> validation.SchemaValidator:
        # Hashing a 600 KB schema takes milliseconds: once per server and resource, not per write.
        found = self._validators.get(info)
        if found is None:
            assert info.schema is not None
            found = self._validators[info] = validation.validator_for(info.schema)
        return found

    def _validate(self, info: ResourceInfo, obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
        is_namespace = (info.group, info.plural) == NAMESPACE_GR
        causes = validation.metadata_causes(obj, dns_label=is_namespace) if old is None else []
        if info.schema is not None:
            causes += self._validator(info).causes(obj)
        causes += builtin_causes(info.group, info.plural, obj)
        if causes:
            raise invalid(info.kind, info.group, obj.get("metadata", {}).get("name", ""), causes)

    async def _admit(self, call: Call, operation: str, obj: dict[str, Any] | None, old: Mapping[str, Any] | None,
                     *, validating: bool = False, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run the stored webhook configurations; returns the (possibly mutated) object."""
        mutating = [] if validating else list(self.store.objects(MUTATING_GR))
        validating_configs = list(self.store.objects(VALIDATING_GR)) if validating else []
        if not (mutating or validating_configs):
            return obj if obj is not None else {}
        target = call.target
        name = (obj or old or {}).get("metadata", {}).get("name", target.name)
        attrs = admission.AdmissionAttributes(
            operation=operation, resource=target.info, subresource=target.subresource, namespace=target.namespace,
            name=name, obj=obj, old_obj=old, user=call.user, dry_run=call.dry_run,
            options=dict(options) if options is not None else _options_for(operation, call.query),
        )
        result = await admission.admit(attrs, mutating, validating_configs, self.namespace_labels,
                                       self._webhook_client)
        call.warnings.extend(result.warnings)
        admitted: dict[str, Any] | None = result.obj
        return admitted if admitted is not None else (obj if obj is not None else {})


def _visible_type(event: StoreEvent, matcher: Matcher | None) -> str | None:
    """The event type a selective watch shows, or None when it does not see the change."""
    if matcher is None:
        return event.type
    matches_now = matcher(event.entry.head)
    if event.type == MODIFIED and event.previous is not None and matcher(event.previous) != matches_now:
        # As the watch cache does: an object entering the selection is ADDED, one leaving it DELETED.
        return ADDED if matches_now else DELETED
    return event.type if matches_now else None


_BUILTIN_GROUP_RESOURCES = frozenset((info.group, info.plural) for info in BUILTIN_RESOURCES)


def _is_custom(info: ResourceInfo) -> bool:
    # A set lookup: comparing ResourceInfo dataclasses field by field showed up in write profiles.
    return (info.group, info.plural) not in _BUILTIN_GROUP_RESOURCES


def _token_request(info: ResourceInfo, subresource: str) -> bool:
    return info.group == "" and info.plural == "serviceaccounts" and subresource == "token"


def _verb(request: web.Request, target: Target) -> str:
    method = request.method
    if method == "GET":
        if request.query.get("watch") in GO_TRUE:
            return "watch"
        return "get" if target.name else "list"
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if target.name else "deletecollection"
    raise method_not_allowed()


def _int_param(query: Mapping[str, str], name: str) -> int | None:
    value = query.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise bad_request(f"invalid {name} {value!r}: must be an integer") from exc


def _decode_object(body: bytes, content_type: str) -> dict[str, Any]:
    try:
        obj = yaml.load(body, Loader=yaml.CSafeLoader) if "yaml" in content_type else orjson.loads(body)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise bad_request(f"couldn't get version/kind; json parse error: {exc}") from exc
    if not isinstance(obj, dict):
        raise bad_request("couldn't get version/kind; json parse error: the body must be a JSON object")
    if "metadata" in obj and not isinstance(obj["metadata"], dict):
        raise bad_request("metadata must be an object")
    return obj


def _decode_options(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        options = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"error decoding DeleteOptions: {exc}") from exc
    return options if isinstance(options, dict) else {}


def _options_for(operation: str, query: Mapping[str, str]) -> dict[str, Any]:
    kind = {"CREATE": "CreateOptions", "UPDATE": "UpdateOptions"}.get(operation, "DeleteOptions")
    options: dict[str, Any] = {"kind": kind, "apiVersion": "meta.k8s.io/v1"}
    if query.get("fieldManager"):
        options["fieldManager"] = query["fieldManager"]
    if "dryRun" in query:
        options["dryRun"] = ["All"]
    return options


def _bytes_response(body: bytes, status: int = 200, warnings: Sequence[str] = (),
                    content_type: str = JSON) -> web.Response:
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": content_type})
    for text in warnings:
        # An HTTP quoted-string, escaped as kube-apiserver's NewWarningHeader does.
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        headers.add("Warning", f'299 - "{escaped}"')
    return web.Response(body=body, status=status, headers=headers)


def _json_response(body: Mapping[str, Any], status: int = 200, warnings: Sequence[str] = (),
                   content_type: str = JSON) -> web.Response:
    return _bytes_response(orjson.dumps(body), status, warnings, content_type)


def _status_response(error: StatusError, warnings: Sequence[str] = ()) -> web.Response:
    return _json_response(error.to_status(), status=error.code, warnings=warnings)

"""ClusterView: the in-memory picture of VMs, VMIs and NADs that the webhook and controller read.

It implements ``rules.ClusterState`` (``get_vmi``, ``get_nad``, ``owners_of_mac``) from a list+watch
of three resources in all namespaces, so the webhook never calls the API server per request.

What is kept is slim on purpose (100,000 VMs must fit in well under 300 MB): one frozen ``VmView``
per VM built from a trimmed copy of the object (no ``managedFields``, no
``last-applied-configuration``, only the annotations nichotplug reads), one ``VmiView`` per VMI, one
``NadView`` per NAD, and a MAC index (``rules.macindex`` semantics, compact storage). Whole objects
are dropped as soon as their view is built; equal parts (networks, labels, NAD references, a VM's
and its VMI's MAC maps) are stored once.

Every change goes through :meth:`ClusterView.apply_event`, whether it came from a list, a watch or a
benchmark; listeners are called after the cache is updated, and only when the view changed (a VMI
status heartbeat that changes nothing the rules read wakes nobody).

Resilience follows client-go's reflector: each resource is listed in pages (``limit`` and
``continue``), then watched from the list's resourceVersion with bookmarks on. A watch that ends is
resumed from the last resourceVersion seen; a 410 Expired (an ``ERROR`` event or an HTTP 410) re-lists
and replaces that resource's cache, deleting what vanished meanwhile (listeners hear ``DELETED``);
connection errors, 429 and 5xx back off exponentially (capped, with jitter) and retry forever, so an
API server that goes away and comes back is survived.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import aiohttp
import orjson
from kubernetes_asyncio.client import ApiClient, CustomObjectsApi

from nichotplug.rules.macindex import MacOwner, vm_mac_claims
from nichotplug.rules.views import (
    OBSERVED_MACS_ANNOTATION,
    InterfaceView,
    InvalidObject,
    NadView,
    VmiView,
    VmView,
)

log = logging.getLogger(__name__)

VIRTUAL_MACHINE: Final = "VirtualMachine"
VIRTUAL_MACHINE_INSTANCE: Final = "VirtualMachineInstance"
NETWORK_ATTACHMENT_DEFINITION: Final = "NetworkAttachmentDefinition"
ADDED: Final = "ADDED"
MODIFIED: Final = "MODIFIED"
DELETED: Final = "DELETED"

View: TypeAlias = VmView | VmiView | NadView
Key: TypeAlias = tuple[str, str]
# (kind, event_type, view): called after the cache changed; must be quick and must not block.
Listener: TypeAlias = Callable[[str, str, Any], None]


@dataclass(frozen=True, slots=True)
class WatchedResource:
    """A resource the view lists and watches in all namespaces."""

    kind: str
    group: str
    version: str
    plural: str


RESOURCES: Final = (
    WatchedResource(VIRTUAL_MACHINE, "kubevirt.io", "v1", "virtualmachines"),
    WatchedResource(VIRTUAL_MACHINE_INSTANCE, "kubevirt.io", "v1", "virtualmachineinstances"),
    WatchedResource(NETWORK_ATTACHMENT_DEFINITION, "k8s.cni.cncf.io", "v1", "network-attachment-definitions"),
)


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """Tunables of list+watch; tests shrink them, production keeps the defaults."""

    page_size: int = 500
    # The server ends each watch after timeoutSeconds in [watch_timeout, 2 * watch_timeout), so
    # connections are recycled (client-go does the same with 5-10 minutes).
    watch_timeout: float = 300.0
    connect_timeout: float = 10.0
    list_timeout: float = 60.0  # per page
    backoff_initial: float = 0.2
    backoff_cap: float = 30.0


# -- trimming objects before they become views --------------------------------------------------------

_INTERNED_INTERFACE_KEYS = ("name", "model", "state")
HEALTHY_WATCH_SECONDS = 1.0


def _interned(value: Any) -> Any:
    return sys.intern(value) if type(value) is str else value


def _trim_items(items: Any, keys: Iterable[str]) -> Any:
    """Copies of interface/network dicts whose repeated strings are interned (names repeat across VMs)."""
    if not isinstance(items, list):
        return items
    trimmed: list[Any] = []
    for item in items:
        if isinstance(item, dict):
            item = dict(item)
            for key in keys:
                if key in item:
                    item[key] = _interned(item[key])
        trimmed.append(item)
    return trimmed


def _dig(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def slim_vm(obj: Mapping[str, Any], keep_annotations: Collection[str]) -> Mapping[str, Any]:
    """The parts of a VirtualMachine ``VmView.from_dict`` reads, with only ``keep_annotations``.

    Anything of an unexpected shape is passed through unchanged, so ``VmView.from_dict`` reports it.
    """
    metadata = obj.get("metadata")
    spec = obj.get("spec")
    if not isinstance(metadata, dict) or not isinstance(spec, dict):
        return obj
    annotations = metadata.get("annotations")
    if isinstance(annotations, dict):  # an empty result becomes None: the view then shares one empty map
        annotations = {key: annotations[key] for key in keep_annotations if key in annotations} or None
    template_spec = _dig(spec, "template", "spec")
    slim_spec: dict[str, Any] = {key: spec[key] for key in ("running", "runStrategy") if key in spec}
    if isinstance(template_spec, dict):
        domain = template_spec.get("domain")
        slim_domain = domain
        if isinstance(domain, dict):
            slim_domain = {key: domain[key] for key in ("memory", "resources") if key in domain}
            devices = domain.get("devices")
            if isinstance(devices, dict):
                slim_domain["devices"] = {
                    "interfaces": _trim_items(devices.get("interfaces"), _INTERNED_INTERFACE_KEYS),
                    "hostDevices": devices.get("hostDevices"),
                    "gpus": devices.get("gpus"),
                }
            elif devices is not None:
                slim_domain["devices"] = devices
        slim_spec["template"] = {"spec": {
            "domain": slim_domain,
            "networks": template_spec.get("networks"),
            "nodeSelector": template_spec.get("nodeSelector"),
        }}
    elif "template" in spec:
        slim_spec["template"] = spec["template"]
    slim_metadata = {key: metadata[key] for key in ("name", "uid", "resourceVersion", "labels",
                                                     "deletionTimestamp") if key in metadata}
    slim_metadata["namespace"] = _interned(metadata.get("namespace"))
    slim_metadata["annotations"] = annotations
    return {"metadata": slim_metadata, "spec": slim_spec, "status": obj.get("status")}


class _SharedValues:
    """Equal immutable values kept once: most VMs have the same networks, labels and NADs.

    When the table has doubled since it was last rebuilt, it is rebuilt from the values still in
    use (``live()``), so VMs that come and go with unique values do not leak; the rebuild costs one
    pass over the cache, amortised over as many insertions.
    """

    def __init__(self, live: Callable[[], Iterable[tuple[Any, Any]]]) -> None:
        self._table: dict[Any, Any] = {}
        self._live = live
        self._rebuild_at = 1024

    def __len__(self) -> int:
        return len(self._table)

    def share(self, key: Any, value: Any) -> Any:
        """The stored value equal to ``value`` (found by ``key``), storing ``value`` if new."""
        existing = self._table.get(key)
        if existing is not None:
            return existing
        if len(self._table) >= self._rebuild_at:
            self._table = dict(self._live())
            self._rebuild_at = max(1024, 2 * len(self._table))
        self._table[key] = value
        return value

    def share_map(self, mapping: Mapping[str, str]) -> Mapping[str, str]:
        if not mapping:
            return mapping
        shared: Mapping[str, str] = self.share(map_key(mapping), mapping)
        return shared


def map_key(mapping: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """A hashable key for a string map, equal for equal maps."""
    return tuple(sorted(mapping.items()))


def _observed_map(mapping: Mapping[str, str], interfaces: Iterable[InterfaceView]) -> Mapping[str, str]:
    """``mapping`` (interface -> MAC) reusing the spec's MAC strings, so each MAC is stored once.

    MACs are unique per interface, so ``sys.intern`` would cost a table entry per MAC for nothing.
    """
    spec_macs = {iface.mac: iface.mac for iface in interfaces if iface.mac}
    return {sys.intern(key): spec_macs.get(value, value) for key, value in mapping.items()}


class _MacOwners:
    """MAC -> every interface using it: ``rules.macindex.MacIndex`` semantics, stored for 100,000 VMs.

    Which MACs a VM claims is decided by the rules (``vm_mac_claims``); only the storage differs
    from ``MacIndex``. It keeps no per-VM list of claims (they are recomputed from the previous,
    immutable ``VmView``, which the cache holds anyway), reuses the view's MAC strings as keys, and
    shares one ``(namespace, name)`` tuple per NAD among all owners. That is about 40% of the memory
    of the whole view at 100,000 VMs (see ``benchmarks/cluster_view.py``).
    """

    __slots__ = ("_by_mac", "_shared")

    def __init__(self, shared: _SharedValues) -> None:
        self._by_mac: dict[str, MacOwner | frozenset[MacOwner]] = {}
        self._shared = shared

    def __len__(self) -> int:
        return len(self._by_mac)

    def owners(self, mac: str) -> frozenset[MacOwner]:
        entry = self._by_mac.get(mac)
        if entry is None:
            return frozenset()
        return frozenset((entry,)) if isinstance(entry, MacOwner) else entry

    def replace_vm(self, old: VmView | None, new: VmView | None) -> None:
        """Move the index from ``old``'s claims to ``new``'s (either may be None)."""
        old_claims = set(vm_mac_claims(old)) if old is not None else set()
        new_claims = set(vm_mac_claims(new)) if new is not None else set()
        if old_claims == new_claims:
            return  # most updates (status, annotations, labels) do not touch the MACs
        for mac, owner in old_claims - new_claims:
            self._discard(mac, owner)
        if new is None:
            return
        spec_macs = {iface.mac: iface.mac for iface in new.interfaces if iface.mac}
        for mac, owner in new_claims - old_claims:
            nad = owner.nad if owner.nad is None else self._shared.share(owner.nad, owner.nad)
            self._add(spec_macs.get(mac, mac), owner._replace(nad=nad))

    def nads_in_use(self) -> Iterator[tuple[str, str]]:
        """Every NAD reference an indexed owner holds (for rebuilding the shared-values table)."""
        for entry in self._by_mac.values():
            for owner in (entry,) if isinstance(entry, MacOwner) else entry:
                if owner.nad is not None:
                    yield owner.nad

    def _add(self, mac: str, owner: MacOwner) -> None:
        entry = self._by_mac.get(mac)
        if entry is None:
            self._by_mac[mac] = owner
        elif isinstance(entry, MacOwner):
            self._by_mac[mac] = frozenset((entry, owner))
        else:
            self._by_mac[mac] = entry | {owner}

    def _discard(self, mac: str, owner: MacOwner) -> None:
        entry = self._by_mac.get(mac)
        if entry is None:
            return
        if isinstance(entry, MacOwner):
            if entry == owner:
                del self._by_mac[mac]
            return
        rest = entry - {owner}
        if len(rest) > 1:
            self._by_mac[mac] = rest
        elif rest:
            (self._by_mac[mac],) = rest
        else:
            del self._by_mac[mac]


def _key_of(obj: Mapping[str, Any]) -> Key | None:
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str) or not name:
        return None
    return sys.intern(namespace), name


# -- errors the reflector distinguishes -------------------------------------------------------------


class _Expired(Exception):
    """The resourceVersion we hold is too old (410): re-list."""


class _RequestFailed(Exception):
    """A list or watch request failed in a way worth retrying after a back-off."""


def _status_message(body: bytes) -> str:
    with contextlib.suppress(orjson.JSONDecodeError):
        decoded = orjson.loads(body)
        if isinstance(decoded, dict):
            return str(decoded.get("message") or decoded.get("reason") or "")
    return body[:200].decode("utf-8", "replace")


class _Backoff:
    """Capped exponential back-off with full jitter (the AWS flavour: sleep uniform(0, cap_n))."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial = initial
        self.cap = cap
        self.failures = 0

    def reset(self) -> None:
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.initial * 2 ** min(self.failures, 30))
        self.failures += 1
        return random.uniform(ceiling / 2, ceiling)


# -- the view ----------------------------------------------------------------------------------


class ClusterView:
    """VMs, VMIs and NADs of the whole cluster, kept current by list+watch; see the module docstring."""

    def __init__(
        self, api: ApiClient | None = None, *, settings: WatchSettings | None = None,
        vm_annotations: Collection[str] = (OBSERVED_MACS_ANNOTATION,),
    ) -> None:
        self._api = api
        self.settings = settings or WatchSettings()
        self._vm_annotations = tuple(vm_annotations)
        self._vms: dict[Key, VmView] = {}
        self._vmis: dict[Key, VmiView] = {}
        self._nads: dict[Key, NadView] = {}
        self._stores: dict[str, dict[Key, Any]] = {
            VIRTUAL_MACHINE: self._vms, VIRTUAL_MACHINE_INSTANCE: self._vmis,
            NETWORK_ATTACHMENT_DEFINITION: self._nads,
        }
        self._shared = _SharedValues(self._shared_values_in_use)
        self._macs = _MacOwners(self._shared)
        self._listeners: list[Listener] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._listed: set[str] = set()
        self.synced = asyncio.Event()
        self.invalid_objects = 0  # objects dropped because their view could not be built
        self.relists = 0  # lists after the first one (410s, restarts); for tests and metrics
        self.request_failures = 0  # list/watch requests that failed and were retried after a back-off

    # -- rules.ClusterState ---------------------------------------------------------------------

    def get_vmi(self, namespace: str, name: str) -> VmiView | None:
        return self._vmis.get((namespace, name))

    def get_nad(self, namespace: str, name: str) -> NadView | None:
        return self._nads.get((namespace, name))

    def owners_of_mac(self, mac: str) -> Collection[MacOwner]:
        return self._macs.owners(mac)

    # -- for the controller ------------------------------------------------------------------------

    def get_vm(self, namespace: str, name: str) -> VmView | None:
        """The cached VM; its ``annotations`` hold only the ones nichotplug reads."""
        return self._vms.get((namespace, name))

    def vm_keys(self) -> list[Key]:
        """A snapshot of every cached VM's (namespace, name), for periodic resyncs."""
        return list(self._vms)

    def counts(self) -> dict[str, int]:
        """How many objects of each kind are cached, and how many distinct MACs are indexed."""
        counts = {kind: len(store) for kind, store in self._stores.items()}
        counts["macs"] = len(self._macs)
        return counts

    def add_listener(self, callback: Listener) -> None:
        """Call ``callback(kind, event_type, view)`` after every change of the cache."""
        self._listeners.append(callback)

    # -- the one way in -------------------------------------------------------------------------------

    def apply_event(self, kind: str, event_type: str, obj: Mapping[str, Any]) -> None:
        """Apply one ``ADDED`` / ``MODIFIED`` / ``DELETED`` of a ``kind`` object to the cache.

        Raises ValueError for an unknown kind or event type (a caller bug); an object whose view
        cannot be built is logged, counted in ``invalid_objects`` and dropped from the cache.
        """
        store = self._stores.get(kind)
        if store is None:
            raise ValueError(f"ClusterView does not cache {kind!r}")
        if event_type not in (ADDED, MODIFIED, DELETED):
            raise ValueError(f"unknown watch event type {event_type!r}")
        key = _key_of(obj)
        if key is None:
            self.invalid_objects += 1
            log.warning("ignoring a %s %s event for an object without namespace and name", kind, event_type)
            return
        if event_type == DELETED:
            self._delete(kind, key)
            return
        try:
            view = self._view_of(kind, obj)
        except InvalidObject as exc:
            self.invalid_objects += 1
            log.warning("dropping %s %s/%s from the cluster view: %s", kind, key[0], key[1], exc)
            self._delete(kind, key)
            return
        except Exception:  # a bug in a view must not stop the watch of every other object
            self.invalid_objects += 1
            log.exception("dropping %s %s/%s from the cluster view: its view failed", kind, key[0], key[1])
            self._delete(kind, key)
            return
        self._store(kind, (view.namespace, view.name), view)  # the view's strings: shared with its VM

    def _view_of(self, kind: str, obj: Mapping[str, Any]) -> View:
        if kind == VIRTUAL_MACHINE:
            return self._compact_vm(VmView.from_dict(slim_vm(obj, self._vm_annotations)))
        if kind == VIRTUAL_MACHINE_INSTANCE:
            return self._compact_vmi(VmiView.from_dict(obj))
        return NadView.from_dict(obj)

    def _shared_values_in_use(self) -> Iterator[tuple[Any, Any]]:
        for vm in self._vms.values():
            yield vm.networks, vm.networks
            for mapping in (vm.labels, vm.node_selector):
                if mapping:
                    yield map_key(mapping), mapping
        for nad in self._macs.nads_in_use():
            yield nad, nad

    @property
    def shared_values(self) -> int:
        """How many distinct shared parts (networks, label maps, NAD references) are kept; for tests."""
        return len(self._shared)

    def _compact_vm(self, view: VmView) -> VmView:
        """The same view with its parts shared: networks and labels with other VMs, MACs with its VMI."""
        vmi = self._vmis.get((view.namespace, view.name))
        observed = view.observed_macs
        if vmi is not None and vmi.interface_macs == observed:
            observed = vmi.interface_macs
        elif observed:
            observed = _observed_map(observed, view.interfaces)
        return dataclasses.replace(
            view, namespace=sys.intern(view.namespace), labels=self._shared.share_map(view.labels),
            networks=self._shared.share(view.networks, view.networks), observed_macs=observed,
            node_selector=self._shared.share_map(view.node_selector),
            run_strategy=sys.intern(view.run_strategy), printable_status=sys.intern(view.printable_status))

    def _compact_vmi(self, view: VmiView) -> VmiView:
        """The same view with its MAC map shared with its VM's observed MACs when they are equal."""
        vm = self._vms.get((view.namespace, view.name))
        macs = view.interface_macs
        if vm is not None and vm.observed_macs == macs:
            macs = vm.observed_macs
        elif macs:
            macs = _observed_map(macs, vm.interfaces if vm is not None else ())
        return dataclasses.replace(
            view, namespace=sys.intern(view.namespace), name=vm.name if vm is not None else view.name,
            phase=sys.intern(view.phase), interface_macs=macs,
            live_migratable_reason=sys.intern(view.live_migratable_reason))

    def _store(self, kind: str, key: Key, view: View) -> None:
        store = self._stores[kind]
        previous = store.get(key)
        if previous == view:
            return  # nothing the rules read changed
        store[key] = view
        if isinstance(view, VmView):
            self._macs.replace_vm(previous, view)
        self._notify(kind, MODIFIED if previous is not None else ADDED, view)

    def _delete(self, kind: str, key: Key) -> None:
        previous = self._stores[kind].pop(key, None)
        if previous is None:
            return
        if isinstance(previous, VmView):
            self._macs.replace_vm(previous, None)
        self._notify(kind, DELETED, previous)

    def _notify(self, kind: str, event_type: str, view: View) -> None:
        for listener in self._listeners:
            try:
                listener(kind, event_type, view)
            except Exception:
                log.exception("cluster view listener %r failed on %s %s", listener, kind, event_type)

    def _forget_unlisted(self, kind: str, keys_listed: set[Key]) -> None:
        """After a complete list of ``kind``: forget every cached object the list did not contain."""
        for key in [key for key in self._stores[kind] if key not in keys_listed]:
            self._delete(kind, key)

    def _mark_listed(self, kind: str) -> None:
        if kind in self._listed:
            self.relists += 1
        self._listed.add(kind)
        if len(self._listed) == len(RESOURCES):
            self.synced.set()

    # -- running ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listing and watching; returns at once (await ``synced.wait()`` for the first list)."""
        if self._api is None:
            raise RuntimeError("a ClusterView without an ApiClient can only be fed through apply_event")
        if self._tasks:
            return
        for resource in RESOURCES:
            reflector = _Reflector(self, resource, self._api, self.settings)
            self._tasks.append(asyncio.create_task(reflector.run(), name=f"watch:{resource.plural}"))

    async def stop(self) -> None:
        """Stop watching. The cache keeps its contents; ``synced`` is cleared."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.synced.clear()
        self._listed.clear()


class _Reflector:
    """List then watch one resource forever, feeding ``ClusterView.apply_event``."""

    def __init__(self, view: ClusterView, resource: WatchedResource, api: ApiClient,
                 settings: WatchSettings) -> None:
        self.view = view
        self.resource = resource
        self.api = CustomObjectsApi(api)
        self.settings = settings
        self.resource_version: str | None = None  # None: the next step is a (re-)list
        self.backoff = _Backoff(settings.backoff_initial, settings.backoff_cap)

    @property
    def _what(self) -> str:
        return f"{self.resource.plural}.{self.resource.group}"

    async def run(self) -> None:
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                    self.backoff.reset()
                if await self._watch():
                    self.backoff.reset()
                    continue  # the server ended a live watch (timeoutSeconds): resume at once
                await asyncio.sleep(self.backoff.next_delay())
            except _Expired as exc:
                log.info("%s: %s; re-listing", self._what, exc)
                self.resource_version = None
            except (_RequestFailed, aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError) as exc:
                self.view.request_failures += 1
                delay = self.backoff.next_delay()
                log.warning("%s: %s; retrying in %.1fs", self._what, exc or type(exc).__name__, delay)
                await asyncio.sleep(delay)
            except Exception:  # never let one surprise end the watch for good
                self.view.request_failures += 1
                delay = self.backoff.next_delay()
                log.exception("%s: unexpected failure; retrying in %.1fs", self._what, delay)
                await asyncio.sleep(delay)

    async def _request(self, limits: tuple[float, float] | aiohttp.ClientTimeout, **params: Any) -> Any:
        resource = self.resource
        return await self.api.list_cluster_custom_object(
            resource.group, resource.version, resource.plural,
            _preload_content=False, _request_timeout=limits, **params)

    async def _check_status(self, response: Any) -> None:
        if response.status == 200:
            return
        body = await response.read()
        message = f"HTTP {response.status}: {_status_message(body)}"
        if response.status == 410:
            raise _Expired(message)
        raise _RequestFailed(message)

    async def _list(self) -> None:
        """List every page; apply each object; then drop what the list no longer has."""
        listed: set[Key] = set()
        token: str | None = None
        while True:
            params: dict[str, Any] = {"limit": self.settings.page_size}
            if token:
                params["_continue"] = token
            response = await self._request(
                aiohttp.ClientTimeout(total=self.settings.list_timeout, connect=self.settings.connect_timeout),
                **params)
            try:
                try:
                    await self._check_status(response)
                except _Expired as exc:
                    if token is None:
                        raise _RequestFailed(f"list refused: {exc}") from exc
                    # The continue token expired: start the list again from the first page.
                    token = None
                    listed.clear()
                    continue
                page = orjson.loads(await response.read())
            finally:
                response.release()
            for item in page.get("items") or ():
                key = _key_of(item) if isinstance(item, dict) else None
                if key is not None:
                    listed.add(key)
                    self.view.apply_event(self.resource.kind, MODIFIED, item)
            metadata = page.get("metadata") or {}
            token = metadata.get("continue") or None
            if token is None:
                self.view._forget_unlisted(self.resource.kind, listed)
                self.resource_version = str(metadata.get("resourceVersion") or "")
                self.view._mark_listed(self.resource.kind)
                log.info("%s: listed %d at resourceVersion %s", self._what, len(listed), self.resource_version)
                return

    async def _watch(self) -> bool:
        """Follow one watch connection; True when it was healthy (events, or open a while) before ending."""
        timeout_seconds = int(self.settings.watch_timeout * (1 + random.random()))
        params: dict[str, Any] = {
            "watch": True, "allow_watch_bookmarks": True, "timeout_seconds": max(1, timeout_seconds),
        }
        if self.resource_version:
            params["resource_version"] = self.resource_version
        # No total timeout: a read timeout a little above the server's own end of the watch notices a
        # connection that died silently.
        response = await self._request((self.settings.connect_timeout, timeout_seconds + 30.0), **params)
        opened_at = asyncio.get_running_loop().time()
        delivered = False
        try:
            await self._check_status(response)
            while line := await response.content.readline():
                if line.strip():
                    self._handle_line(line)
                    delivered = True
        finally:
            response.release()
        # A quiet watch the server closed normally is healthy too; only one that ends at once is not.
        return delivered or asyncio.get_running_loop().time() - opened_at >= HEALTHY_WATCH_SECONDS

    def _handle_line(self, line: bytes) -> None:
        event = orjson.loads(line)
        event_type = event.get("type") if isinstance(event, dict) else None
        obj = event.get("object") if isinstance(event, dict) else None
        if not isinstance(obj, dict):
            raise _RequestFailed(f"malformed watch event: {line[:200]!r}")
        if event_type == "ERROR":
            code, message = obj.get("code"), obj.get("message") or obj.get("reason")
            if code == 410:
                raise _Expired(f"watch expired: {message}")
            raise _RequestFailed(f"watch error {code}: {message}")
        resource_version = _dig(obj, "metadata", "resourceVersion")
        if event_type in (ADDED, MODIFIED, DELETED):
            self.view.apply_event(self.resource.kind, event_type, obj)
        elif event_type != "BOOKMARK":
            raise _RequestFailed(f"unknown watch event type {event_type!r}")
        if isinstance(resource_version, str) and resource_version:
            self.resource_version = resource_version

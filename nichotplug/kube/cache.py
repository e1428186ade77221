"""ClusterView: the in-memory picture of VMs, VMIs and NADs that the webhook and controller read.

It implements ``rules.ClusterState`` (``get_vmi``, ``get_nad``, ``owners_of_mac``) from a list+watch
of three resources in all namespaces, so the webhook never calls the API server per request.

Each object is read into its rules view (``VmView`` from a trimmed copy: no ``managedFields``, no
``last-applied-configuration``, only the annotations nichotplug reads), then stored as a compact
record (``kube.records``: what is unique to the object plus a shared shape, MACs as 6 bytes each,
and the MAC-owner index over them), because a view per object would not let 100,000 VMs fit the
process's memory. ``get_vm`` / ``get_vmi`` rebuild views equal to the ones stored; whole objects are
dropped as soon as their record is built.

Every change goes through :meth:`ClusterView.apply_event`, whether it came from a list, a watch or a
benchmark; listeners are called after the cache is updated, and only when the view changed (a VMI
status heartbeat that changes nothing the rules read wakes nobody). A ``kube.reflector.Reflector``
per resource lists and watches (resuming, re-listing on 410, backing off) and feeds the view through
its ``ViewFeed`` methods: ``apply_event``, ``list_completed``, ``heard_from``, ``request_failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping, Set
from typing import Any, Final, TypeAlias

from kubernetes_asyncio.client import ApiClient

from nichotplug.kube.records import (
    MAC_SIZE,
    Key,
    MacOwners,
    ObservedAsWritten,
    SharedValues,
    VmiRecord,
    VmiShape,
    VmRecord,
    VmShape,
    annotation_text,
    compact_resource_version,
    compact_uid,
    is_canonical_mac,
    map_key,
    object_key,
    pack_macs,
)
from nichotplug.kube.reflector import (
    ADDED,
    DELETED,
    MODIFIED,
    Reflector,
    WatchedResource,
    WatchSettings,
)
from nichotplug.rules.macindex import MacOwner
from nichotplug.rules.views import (
    InterfaceView,
    InvalidObject,
    NadView,
    VmiView,
    VmView,
)
from nichotplug.rules.vm_object import OBSERVED_MACS_ANNOTATION

__all__ = [  # WatchSettings and the event types stay importable from here, where the view's users find them
    "ADDED",
    "DELETED",
    "MODIFIED",
    "NETWORK_ATTACHMENT_DEFINITION",
    "RESOURCES",
    "VIRTUAL_MACHINE",
    "VIRTUAL_MACHINE_INSTANCE",
    "ClusterView",
    "Listener",
    "WatchSettings",
    "slim_vm",
]

log = logging.getLogger(__name__)

VIRTUAL_MACHINE: Final = "VirtualMachine"
VIRTUAL_MACHINE_INSTANCE: Final = "VirtualMachineInstance"
NETWORK_ATTACHMENT_DEFINITION: Final = "NetworkAttachmentDefinition"

View: TypeAlias = VmView | VmiView | NadView
# (kind, event_type, view): called after the cache changed; must be quick and must not block.
Listener: TypeAlias = Callable[[str, str, Any], None]

RESOURCES: Final = (
    WatchedResource(VIRTUAL_MACHINE, "kubevirt.io", "v1", "virtualmachines"),
    WatchedResource(VIRTUAL_MACHINE_INSTANCE, "kubevirt.io", "v1", "virtualmachineinstances"),
    WatchedResource(NETWORK_ATTACHMENT_DEFINITION, "k8s.cni.cncf.io", "v1", "network-attachment-definitions"),
)


# -- trimming objects before they become views --------------------------------------------------------


def _interned(value: Any) -> Any:
    return sys.intern(value) if type(value) is str else value


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
                    "interfaces": devices.get("interfaces"),
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
        self._vms: dict[Key, VmRecord] = {}
        self._vmis: dict[Key, VmiRecord] = {}
        self._nads: dict[Key, NadView] = {}
        self._stores: dict[str, dict[Key, Any]] = {
            VIRTUAL_MACHINE: self._vms, VIRTUAL_MACHINE_INSTANCE: self._vmis,
            NETWORK_ATTACHMENT_DEFINITION: self._nads,
        }
        self._shared = SharedValues(self._shared_values_in_use)
        self._macs = MacOwners()
        # rules.ClusterState.owners_of_mac and mac_numbers_in_use: the index's own methods, bound here
        # because the webhook asks them on every request (a wrapper would be one more call each time).
        self.owners_of_mac: Callable[[str], Collection[MacOwner]] = self._macs.owners
        self.mac_numbers_in_use: Callable[[Collection[int]], bool] = self._macs.numbers_used
        # The webhook asks for the same VMI twice per request (is it running? is it eligible?).
        self._last_vmi: tuple[VmiRecord, VmiView] | None = None
        self._listeners: list[Listener] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._listed: set[str] = set()
        self.synced = asyncio.Event()
        self.invalid_objects = 0  # objects dropped because their view could not be built
        self.relists = 0  # lists after the first one (410s, restarts); for tests and metrics
        self.request_failures = 0  # list/watch requests that failed and were retried after a back-off
        # kind -> when (Unix time) its list or watch last answered: a completed list, any watch event
        # (bookmarks included), a watch the server ended after the timeoutSeconds we asked for (one
        # cut short is a server going away). How stale the view may be, which nothing else shows
        # (``kube.view_metrics``).
        self.last_contact: dict[str, float] = {}

    # -- rules.ClusterState ---------------------------------------------------------------------

    def get_vmi(self, namespace: str, name: str) -> VmiView | None:
        record = self._vmis.get((namespace, name))
        if record is None:
            return None
        last = self._last_vmi
        if last is not None and last[0] is record:
            return last[1]
        view = record.view()
        self._last_vmi = (record, view)
        return view

    def get_nad(self, namespace: str, name: str) -> NadView | None:
        return self._nads.get((namespace, name))

    def macs_claimed_more_than_once(self) -> list[str]:
        """Normalised MACs two or more VM interfaces claim, sorted: where duplicates can be.

        Whether two claims collide depends on their scopes (``owners_of_mac`` and the NADs tell);
        the duplicate audit asks this instead of reading every VM.
        """
        return sorted([number.to_bytes(MAC_SIZE, "big").hex(":") for number in self._macs.claimed_more_than_once()])

    # -- for the controller ------------------------------------------------------------------------

    def get_vm(self, namespace: str, name: str) -> VmView | None:
        """The cached VM (rebuilt from compact storage); its ``annotations`` hold only the ones nichotplug reads."""
        record = self._vms.get((namespace, name))
        return record.view() if record is not None else None

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
        key = object_key(obj)
        if key is None:
            self.invalid_objects += 1
            log.warning("ignoring a %s %s event for an object without namespace and name", kind, event_type)
            return
        if event_type == DELETED:
            self._delete(kind, key)
            return
        try:
            if kind == VIRTUAL_MACHINE:
                self._store_vm(VmView.from_dict(slim_vm(obj, self._vm_annotations)))
            elif kind == VIRTUAL_MACHINE_INSTANCE:
                self._store_vmi(VmiView.from_dict(obj))
            else:
                self._store_nad(NadView.from_dict(obj))
        except InvalidObject as exc:
            self.invalid_objects += 1
            log.warning("dropping %s %s/%s from the cluster view: %s", kind, key[0], key[1], exc)
            self._delete(kind, key)
        except Exception:  # a bug in a view must not stop the watch of every other object
            self.invalid_objects += 1
            log.exception("dropping %s %s/%s from the cluster view: its view failed", kind, key[0], key[1])
            self._delete(kind, key)

    @property
    def shared_values(self) -> int:
        """How many distinct shared shapes are kept; for tests."""
        return len(self._shared)

    def _shared_values_in_use(self) -> Iterator[tuple[Hashable, Any]]:
        for vm in self._vms.values():
            yield vm.shape.key, vm.shape
        for vmi in self._vmis.values():
            yield vmi.shape, vmi.shape

    def _key_for(self, view: VmView | VmiView) -> Key:
        """The (namespace, name) tuple a VM and its VMI share, so it is stored once."""
        key = (view.namespace, view.name)
        for store in (self._vms, self._vmis):
            record: VmRecord | VmiRecord | None = store.get(key)
            if record is not None:
                return record.key
        return sys.intern(view.namespace), view.name

    def _known_macs(self, key: Key) -> Iterator[bytes]:
        """The packed MAC strings already stored for ``key`` (a VM's and its VMI's are usually equal)."""
        vm, vmi = self._vms.get(key), self._vmis.get(key)
        if vm is not None:
            for packed in (vm.spec_macs, vm.observed):
                if isinstance(packed, bytes):
                    yield packed
        if vmi is not None:
            yield vmi.macs

    def _stored_macs(self, key: Key, packed: bytes, *fresh: bytes | None) -> bytes:
        """``packed``, or an equal bytes object already stored (the same MACs kept once)."""
        for candidate in (*fresh, *self._known_macs(key)):
            if candidate is not None and candidate is not packed and candidate == packed:
                return candidate
        return packed

    def _vm_shape(self, view: VmView, observed_names: tuple[str, ...]) -> VmShape:
        interfaces = tuple([InterfaceView(sys.intern(iface.name), sys.intern(iface.model), "", iface.binding,
                                          sys.intern(iface.state)) for iface in view.interfaces])
        nads: list[tuple[str, str] | None] = []
        for iface in view.interfaces:
            network = view.network(iface.name)
            nads.append(network.nad if network is not None else None)
        key = (view.namespace, map_key(view.labels), view.deleting, view.run_strategy, view.printable_status,
               interfaces, view.networks, observed_names, map_key(view.node_selector), view.has_host_devices,
               view.guest_memory_bytes)
        shape = VmShape(
            namespace=sys.intern(view.namespace), labels=view.labels, deleting=view.deleting, running=view.running,
            run_strategy=sys.intern(view.run_strategy), printable_status=sys.intern(view.printable_status),
            interfaces=interfaces, networks=view.networks, nads=tuple(nads), observed_names=observed_names,
            node_selector=view.node_selector, has_host_devices=view.has_host_devices,
            guest_memory_bytes=view.guest_memory_bytes, key=key)
        return self._shared.share(key, shape)

    def _vm_record(self, view: VmView) -> VmRecord:
        key = self._key_for(view)
        spec_texts = [iface.mac for iface in view.interfaces]
        spec_macs: bytes | tuple[str, ...] = tuple(spec_texts)
        if all(is_canonical_mac(text) for text in spec_texts):
            spec_macs = self._stored_macs(key, pack_macs(spec_texts))
        observed: bytes | ObservedAsWritten | None = None
        observed_names: tuple[str, ...] = ()
        annotation = view.annotations.get(OBSERVED_MACS_ANNOTATION)
        if not view.annotations and not view.observed_macs and not view.observed_macs_error:
            pass  # no annotation: nothing to keep
        elif (len(view.annotations) == 1 and not view.observed_macs_error and annotation is not None
              and annotation == annotation_text(view.observed_macs, view.observed_macs.values())):
            # The annotation is spelled as the controller and Harvester write it: keep the MACs,
            # packed; the text is rebuilt from them.
            observed_names = tuple([sys.intern(name) for name in view.observed_macs])
            observed = self._stored_macs(key, pack_macs(view.observed_macs.values()),
                                         spec_macs if isinstance(spec_macs, bytes) else None)
        else:
            observed = ObservedAsWritten(dict(view.annotations), dict(view.observed_macs), view.observed_macs_error)
        return VmRecord(key, compact_uid(view.uid), compact_resource_version(view.resource_version),
                         self._vm_shape(view, observed_names), spec_macs, observed)

    def _vmi_record(self, view: VmiView) -> VmiRecord:
        key = self._key_for(view)
        mac_names = tuple([sys.intern(name) for name in view.interface_macs])
        shape = VmiShape(
            namespace=key[0], deleting=view.deleting, phase=sys.intern(view.phase), ready=view.ready,
            live_migratable=view.live_migratable, live_migratable_reason=sys.intern(view.live_migratable_reason),
            migration_in_flight=view.migration_in_flight, mac_names=mac_names)
        # interface_macs values are normalised by VmiView: always canonical, always packable.
        macs = self._stored_macs(key, pack_macs(view.interface_macs.values()))
        return VmiRecord(key, self._shared.share(shape, shape), macs)

    def _store_vm(self, view: VmView) -> None:
        record = self._vm_record(view)
        previous = self._vms.get(record.key)
        if previous is not None and previous.same_as(record):
            return  # nothing the rules read changed
        self._vms[record.key] = record
        self._macs.replace_vm(previous, record)
        self._notify(VIRTUAL_MACHINE, MODIFIED if previous is not None else ADDED, view)

    def _store_vmi(self, view: VmiView) -> None:
        record = self._vmi_record(view)
        previous = self._vmis.get(record.key)
        if previous is not None and previous.same_as(record):
            return
        self._vmis[record.key] = record
        self._notify(VIRTUAL_MACHINE_INSTANCE, MODIFIED if previous is not None else ADDED, view)

    def _store_nad(self, view: NadView) -> None:
        key = (sys.intern(view.namespace), view.name)
        previous = self._nads.get(key)
        if previous == view:
            return
        self._nads[key] = view
        self._notify(NETWORK_ATTACHMENT_DEFINITION, MODIFIED if previous is not None else ADDED, view)

    def _delete(self, kind: str, key: Key) -> None:
        previous = self._stores[kind].pop(key, None)
        if previous is None:
            return
        if isinstance(previous, VmRecord):
            self._macs.replace_vm(previous, None)
        view = previous.view() if isinstance(previous, (VmRecord, VmiRecord)) else previous
        self._notify(kind, DELETED, view)

    def _notify(self, kind: str, event_type: str, view: View) -> None:
        for listener in self._listeners:
            try:
                listener(kind, event_type, view)
            except Exception:
                log.exception("cluster view listener %r failed on %s %s", listener, kind, event_type)

    # -- fed by the reflectors (kube.reflector.ViewFeed; apply_event above) --------------------------

    def list_completed(self, kind: str, keys: Set[Key]) -> None:
        """A complete list of ``kind`` held exactly ``keys``: forget every other cached object of it.

        ``synced`` is set once every resource has been listed; later lists count as ``relists``.
        """
        for key in [key for key in self._stores[kind] if key not in keys]:
            self._delete(kind, key)
        if kind in self._listed:
            self.relists += 1
        self._listed.add(kind)
        if len(self._listed) == len(RESOURCES):
            self.synced.set()

    def heard_from(self, kind: str) -> None:
        """The API server just answered the list or watch of ``kind``."""
        self.last_contact[kind] = time.time()

    def request_failed(self, kind: str) -> None:
        """A list or watch request of ``kind`` failed; it is retried after a back-off."""
        self.request_failures += 1

    # -- running ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listing and watching; returns at once (await ``synced.wait()`` for the first list)."""
        if self._api is None:
            raise RuntimeError("a ClusterView without an ApiClient can only be fed through apply_event")
        if self._tasks:
            return
        for resource in RESOURCES:
            reflector = Reflector(self, resource, self._api, self.settings)
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


"""ClusterView: the in-memory picture of VMs, VMIs and NADs that the webhook and controller read.

It implements ``rules.ClusterState`` (``get_vmi``, ``get_nad``, ``owners_of_mac``) from a list+watch
of three resources in all namespaces, so the webhook never calls the API server per request.

What is kept is compact on purpose (the issue's budget: a cluster view of 100,000 VMs in a process
under 300 MB RSS). Each object is read into its rules view (``VmView`` from a trimmed copy: no
``managedFields``, no ``last-applied-configuration``, only the annotations nichotplug reads), then
stored as a small record: what is unique to the object (key, uid, resourceVersion, MACs as 6 bytes
each) plus a shared "shape" holding everything else, equal across most VMs. The MAC index maps a
48-bit MAC number to the owning record and builds ``MacOwner``s when asked (``rules.macindex``
semantics). ``get_vm`` / ``get_vmi`` rebuild views equal to the ones stored; whole objects are
dropped as soon as their record is built. See "compact storage" below for the figures.

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
import ctypes
import dataclasses
import logging
import random
import sys
import time
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, NamedTuple, TypeAlias, TypeVar

import aiohttp
import orjson
from kubernetes_asyncio.client import ApiClient, CustomObjectsApi

from nichotplug.rules.mac import InvalidMac, mac_number, normalize_mac
from nichotplug.rules.macindex import MacOwner
from nichotplug.rules.views import (
    OBSERVED_MACS_ANNOTATION,
    InterfaceView,
    InvalidObject,
    NadView,
    NetworkView,
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
_Value = TypeVar("_Value")


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

HEALTHY_WATCH_SECONDS = 1.0


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


class _SharedValues:
    """Equal immutable values kept once: most VMs share their shape (labels, interfaces, networks...).

    When the table has doubled since it was last rebuilt, it is rebuilt from the values still in
    use (``live()``), so VMs that come and go with unique values do not leak; the rebuild costs one
    pass over the cache, amortised over as many insertions.
    """

    def __init__(self, live: Callable[[], Iterable[tuple[Hashable, Any]]]) -> None:
        self._table: dict[Hashable, Any] = {}
        self._live = live
        self._rebuild_at = 1024

    def __len__(self) -> int:
        return len(self._table)

    def share(self, key: Hashable, value: _Value) -> _Value:
        """The stored value equal to ``value`` (found by ``key``), storing ``value`` if new."""
        existing: _Value | None = self._table.get(key)
        if existing is not None:
            return existing
        if len(self._table) >= self._rebuild_at:
            self._table = dict(self._live())
            self._rebuild_at = max(1024, 2 * len(self._table))
        self._table[key] = value
        return value


def map_key(mapping: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """A hashable key for a string map, equal for equal maps."""
    return tuple(sorted(mapping.items()))


# -- compact storage ------------------------------------------------------------------------------
#
# A VmView of a 4-NIC VM is about 2 KiB of Python objects (17 fields, 4 InterfaceViews, their MAC
# strings, an annotation dict and string, an observed-MAC dict), and a MacOwner per MAC in the index
# doubled that: 222 MiB at 100,000 VMs (benchmarks/cluster_view.py). So the cache keeps, per VM, a
# record of what is unique to it (key, uid, resourceVersion, MACs) and a reference to a shared
# "shape" holding the rest; MACs are 6 bytes each in one bytes object (shared by a VM's spec, its
# annotation and its VMI when equal); the MAC index maps a MAC (a 48-bit int) to the owning record
# and makes the MacOwner when asked. Views are rebuilt from records on demand (``get_vm`` about
# 20 us, ``get_vmi`` 5 us, listeners of deletes), on paths that are not per-request hot. Now 76 MiB
# for 100,000 VMs, 86 MiB with their VMIs; the MAC index (dict + int keys) is 32 MiB of it.

_MAC_SIZE = 6
_EMPTY_MAP: Mapping[str, str] = MappingProxyType({})


def _is_canonical_mac(text: str) -> bool:
    """Whether ``text`` is a MAC in the normalised spelling (the only one stored as 6 bytes)."""
    try:
        return normalize_mac(text) == text
    except InvalidMac:
        return False


def _pack_macs(macs: Iterable[str]) -> bytes:
    """Canonical MACs as 6 bytes each, in order."""
    return b"".join([bytes.fromhex(mac.replace(":", "")) for mac in macs])


def _unpack_macs(packed: bytes) -> list[str]:
    return [packed[start:start + _MAC_SIZE].hex(":") for start in range(0, len(packed), _MAC_SIZE)]


def _uid_text(number: int) -> str:
    """The canonical (lowercase, hyphenated) spelling of a UUID's 128-bit number."""
    digits = f"{number:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def _compact_uid(uid: str) -> int | str:
    """A canonical UUID (what the API server assigns) as its number: 44 bytes instead of 85.

    Anything that does not spell back the same (other forms, not a UUID at all) is kept as written.
    """
    try:
        number = int(uid.replace("-", ""), 16)
    except ValueError:
        return uid
    return number if 0 <= number < 1 << 128 and _uid_text(number) == uid else uid


def _annotation_text(names: Iterable[str], macs: Iterable[str]) -> str:
    """The observed-MAC annotation in compact JSON, keys in the given order.

    What ``rules.backfill.encode_observed_macs`` (our controller) and Harvester's Go ``json.Marshal``
    write for names that need no escaping. Records keep an annotation packed only when this spells
    it back exactly, so a rebuilt view always holds the text the API server has.
    """
    return "{" + ",".join([f'"{name}":"{mac}"' for name, mac in zip(names, macs, strict=True)]) + "}"


def _compact_resource_version(resource_version: str) -> int | str:
    """A decimal resourceVersion (what etcd-backed servers send) as an int; anything else as written."""
    if (len(resource_version) <= 40 and resource_version.isascii() and resource_version.isdigit()
            and str(int(resource_version)) == resource_version):  # the length bound keeps int() cheap and legal
        return int(resource_version)
    return resource_version


@dataclass(frozen=True, slots=True)
class _VmShape:
    """Everything a VmView holds but its identity and MACs: equal across most VMs, stored once.

    ``interfaces`` are InterfaceViews with ``mac=""`` (the record has the MACs); ``nads`` is each
    interface's NAD as ``vm_mac_claims`` resolves it; ``observed_names`` are the keys of the
    observed-MAC map when the record stores its MACs packed.
    """

    namespace: str
    labels: Mapping[str, str]
    deleting: bool
    running: bool
    run_strategy: str
    printable_status: str
    interfaces: tuple[InterfaceView, ...]
    networks: tuple[NetworkView, ...]
    nads: tuple[tuple[str, str] | None, ...]
    observed_names: tuple[str, ...]
    node_selector: Mapping[str, str]
    has_host_devices: bool
    guest_memory_bytes: int | None
    key: Hashable = dataclasses.field(compare=False)  # what the shared-values table finds it by


class _ObservedAsWritten(NamedTuple):
    """The annotations and observed MACs of a VM whose annotation is not in the canonical spelling."""

    annotations: Mapping[str, str]
    macs: Mapping[str, str]
    error: str


class _VmRecord:
    """One cached VM: what is unique to it, and its shared shape.

    ``spec_macs`` is 6 bytes per interface when every spec MAC is written canonically (the usual
    case: the mutating webhook writes them so), else the spec texts ("" = none). ``observed`` is
    None (no annotation), packed MACs under ``shape.observed_names`` (the annotation is exactly what
    ``encode_observed_macs`` writes, so it is rebuilt from them), or the annotation as written.
    """

    __slots__ = ("key", "observed", "resource_version", "shape", "spec_macs", "uid")

    def __init__(self, key: Key, uid: int | str, resource_version: int | str, shape: _VmShape,
                 spec_macs: bytes | tuple[str, ...], observed: bytes | _ObservedAsWritten | None) -> None:
        self.key = key
        self.uid = uid
        self.resource_version = resource_version
        self.shape = shape
        self.spec_macs = spec_macs
        self.observed = observed

    def same_as(self, other: _VmRecord) -> bool:
        return (self.key == other.key and self.uid == other.uid and self.resource_version == other.resource_version
                and (self.shape is other.shape or self.shape == other.shape)
                and self.spec_macs == other.spec_macs and self.observed == other.observed)

    def observed_parts(self) -> tuple[Mapping[str, str], Mapping[str, str], str]:
        """(annotations, observed MACs, observed-MAC error) as the VmView had them."""
        observed = self.observed
        if observed is None:
            return _EMPTY_MAP, _EMPTY_MAP, ""
        if isinstance(observed, _ObservedAsWritten):
            return observed.annotations, observed.macs, observed.error
        names, texts = self.shape.observed_names, _unpack_macs(observed)
        return ({OBSERVED_MACS_ANNOTATION: _annotation_text(names, texts)},
                dict(zip(names, texts, strict=True)), "")

    def spec_mac_texts(self) -> list[str]:
        spec = self.spec_macs
        return _unpack_macs(spec) if isinstance(spec, bytes) else list(spec)

    def claims(self) -> list[tuple[int, int]]:
        """(MAC number, interface index) of every MAC the VM uses: ``rules.vm_mac_claims`` semantics."""
        spec = self.spec_macs
        if isinstance(spec, bytes):  # every interface has a valid spec MAC: the annotation plays no part
            return [(int.from_bytes(spec[start:start + _MAC_SIZE], "big"), start // _MAC_SIZE)
                    for start in range(0, len(spec), _MAC_SIZE)]
        observed = self.observed_parts()[1]
        claims: list[tuple[int, int]] = []
        for index, (template, text) in enumerate(zip(self.shape.interfaces, spec, strict=True)):
            if text:
                try:
                    mac = normalize_mac(text)
                except InvalidMac:
                    continue  # validation refuses it on the next write; nothing can collide with it
            else:
                mac = observed.get(template.name, "")
                if not mac:
                    continue
            claims.append((mac_number(mac), index))
        return claims

    def interfaces_using(self, number: int) -> list[int]:
        """The indexes of the interfaces whose claimed MAC is ``number``."""
        spec = self.spec_macs
        if not isinstance(spec, bytes):
            return [index for claimed, index in self.claims() if claimed == number]
        needle = number.to_bytes(_MAC_SIZE, "big")
        found: list[int] = []
        start = spec.find(needle)
        while start != -1:
            if start % _MAC_SIZE == 0:  # a match across two MACs is no match
                found.append(start // _MAC_SIZE)
            start = spec.find(needle, start + 1)
        return found

    def owner(self, interface_index: int) -> MacOwner:
        shape = self.shape
        return MacOwner(shape.namespace, self.key[1], shape.interfaces[interface_index].name,
                        shape.nads[interface_index])

    def view(self) -> VmView:
        """The VmView this record was made from (equal to it, field by field)."""
        shape = self.shape
        annotations, observed, error = self.observed_parts()
        uid = self.uid
        return VmView(
            namespace=shape.namespace, name=self.key[1],
            uid=_uid_text(uid) if isinstance(uid, int) else uid,
            resource_version=str(self.resource_version), labels=shape.labels, annotations=annotations,
            deleting=shape.deleting, running=shape.running, run_strategy=shape.run_strategy,
            printable_status=shape.printable_status,
            interfaces=tuple([InterfaceView(template.name, template.model, mac, template.binding, template.state)
                              for template, mac in zip(shape.interfaces, self.spec_mac_texts(), strict=True)]),
            networks=shape.networks, observed_macs=observed, observed_macs_error=error,
            node_selector=shape.node_selector, has_host_devices=shape.has_host_devices,
            guest_memory_bytes=shape.guest_memory_bytes)


@dataclass(frozen=True, slots=True)
class _VmiShape:
    """Everything a VmiView holds but its name and MACs; a running, healthy VMI looks like thousands."""

    namespace: str
    deleting: bool
    phase: str
    ready: bool
    live_migratable: bool | None
    live_migratable_reason: str
    migration_in_flight: bool
    mac_names: tuple[str, ...]  # the interfaces of ``interface_macs``, in order


class _VmiRecord:
    """One cached VMI: its key (shared with its VM's), its shape and its MACs, 6 bytes each."""

    __slots__ = ("key", "macs", "shape")

    def __init__(self, key: Key, shape: _VmiShape, macs: bytes) -> None:
        self.key = key
        self.shape = shape
        self.macs = macs

    def same_as(self, other: _VmiRecord) -> bool:
        return self.key == other.key and self.shape == other.shape and self.macs == other.macs

    def view(self) -> VmiView:
        shape = self.shape
        return VmiView(
            namespace=shape.namespace, name=self.key[1], deleting=shape.deleting, phase=shape.phase,
            ready=shape.ready, live_migratable=shape.live_migratable,
            live_migratable_reason=shape.live_migratable_reason, migration_in_flight=shape.migration_in_flight,
            interface_macs=dict(zip(shape.mac_names, _unpack_macs(self.macs), strict=True)))


def _owner_records(entry: _VmRecord | tuple[_VmRecord, ...]) -> tuple[_VmRecord, ...]:
    return (entry,) if isinstance(entry, _VmRecord) else entry


_NO_OWNERS: frozenset[MacOwner] = frozenset()


class _MacOwners:
    """MAC -> the VM records using it: ``rules.macindex.MacIndex`` answers, stored for 100,000 VMs.

    Which MACs a VM claims follows ``rules.vm_mac_claims`` (``_VmRecord.claims``). Keys are 48-bit
    ints; a value is the owning record, or a tuple holding a record once per claim when a MAC is
    claimed more than once (by several VMs, or by two interfaces of one). ``MacOwner``s are made
    when asked, from the record: no object per MAC besides its key. The MACs claimed more than once
    are also kept in a set, so the duplicate audit needs no pass over every VM.
    """

    __slots__ = ("_by_mac", "_claimed_twice")

    def __init__(self) -> None:
        self._by_mac: dict[int, _VmRecord | tuple[_VmRecord, ...]] = {}
        self._claimed_twice: set[int] = set()

    def __len__(self) -> int:
        return len(self._by_mac)

    def owners(self, mac: str) -> frozenset[MacOwner]:
        try:
            number = mac_number(mac)
        except ValueError:
            return _NO_OWNERS
        entry = self._by_mac.get(number)  # nearly always a miss: answered with a shared empty set
        if entry is None:
            return _NO_OWNERS
        return frozenset([record.owner(index) for record in _owner_records(entry)
                          for index in record.interfaces_using(number)])

    def numbers_used(self, numbers: Collection[int]) -> bool:
        """Whether a MAC of one of ``numbers`` (``mac_number``) has an owner: one C call."""
        return not self._by_mac.keys().isdisjoint(numbers)

    def claimed_more_than_once(self) -> list[int]:
        return list(self._claimed_twice)

    def replace_vm(self, old: _VmRecord | None, new: _VmRecord | None) -> None:
        """Move the index from ``old``'s claims to ``new``'s (either may be None)."""
        old_macs = [number for number, _index in old.claims()] if old is not None else []
        new_macs = [number for number, _index in new.claims()] if new is not None else []
        if old is not None and new is not None and old_macs == new_macs:
            for number in set(new_macs):  # most updates keep the MACs: point them at the new record
                self._put(number, tuple([new if owner is old else owner for owner in self._records(number)]))
            return
        for number in set(old_macs):
            self._put(number, tuple([owner for owner in self._records(number) if owner is not old]))
        for number in new_macs:  # once per claim
            assert new is not None
            self._put(number, (*self._records(number), new))

    def _records(self, number: int) -> tuple[_VmRecord, ...]:
        entry = self._by_mac.get(number)
        return () if entry is None else _owner_records(entry)

    def _put(self, number: int, records: tuple[_VmRecord, ...]) -> None:
        """Store ``records`` as the claims of ``number`` in their smallest form."""
        if len(records) > 1:
            self._by_mac[number] = records
            self._claimed_twice.add(number)
            return
        self._claimed_twice.discard(number)
        if records:
            self._by_mac[number] = records[0]
        else:
            self._by_mac.pop(number, None)


def _key_of(obj: Mapping[str, Any]) -> Key | None:
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str) or not name:
        return None
    return sys.intern(namespace), name


def _return_free_memory_to_the_system() -> None:
    """Give the C heap's free pages back to the kernel (glibc ``malloc_trim``; elsewhere a no-op).

    Decoding list pages of megabytes leaves free holes in the C heap that glibc keeps mapped (its
    mmap threshold rises to the page size after the first page is freed); after a full list they
    are pure RSS that a pod's memory limit counts: 17 MiB at 30,000 VMs in benchmarks/cluster_view.py.
    """
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim this way
        return
    trim(0)


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
        self._vms: dict[Key, _VmRecord] = {}
        self._vmis: dict[Key, _VmiRecord] = {}
        self._nads: dict[Key, NadView] = {}
        self._stores: dict[str, dict[Key, Any]] = {
            VIRTUAL_MACHINE: self._vms, VIRTUAL_MACHINE_INSTANCE: self._vmis,
            NETWORK_ATTACHMENT_DEFINITION: self._nads,
        }
        self._shared = _SharedValues(self._shared_values_in_use)
        self._macs = _MacOwners()
        # rules.ClusterState.owners_of_mac and mac_numbers_in_use: the index's own methods, bound here
        # because the webhook asks them on every request (a wrapper would be one more call each time).
        self.owners_of_mac: Callable[[str], Collection[MacOwner]] = self._macs.owners
        self.mac_numbers_in_use: Callable[[Collection[int]], bool] = self._macs.numbers_used
        # The webhook asks for the same VMI twice per request (is it running? is it eligible?).
        self._last_vmi: tuple[_VmiRecord, VmiView] | None = None
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
        return sorted([number.to_bytes(_MAC_SIZE, "big").hex(":") for number in self._macs.claimed_more_than_once()])

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
        key = _key_of(obj)
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
            record: _VmRecord | _VmiRecord | None = store.get(key)
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

    def _vm_shape(self, view: VmView, observed_names: tuple[str, ...]) -> _VmShape:
        interfaces = tuple([InterfaceView(sys.intern(iface.name), sys.intern(iface.model), "", iface.binding,
                                          sys.intern(iface.state)) for iface in view.interfaces])
        nads: list[tuple[str, str] | None] = []
        for iface in view.interfaces:
            network = view.network(iface.name)
            nads.append(network.nad if network is not None else None)
        key = (view.namespace, map_key(view.labels), view.deleting, view.run_strategy, view.printable_status,
               interfaces, view.networks, observed_names, map_key(view.node_selector), view.has_host_devices,
               view.guest_memory_bytes)
        shape = _VmShape(
            namespace=sys.intern(view.namespace), labels=view.labels, deleting=view.deleting, running=view.running,
            run_strategy=sys.intern(view.run_strategy), printable_status=sys.intern(view.printable_status),
            interfaces=interfaces, networks=view.networks, nads=tuple(nads), observed_names=observed_names,
            node_selector=view.node_selector, has_host_devices=view.has_host_devices,
            guest_memory_bytes=view.guest_memory_bytes, key=key)
        return self._shared.share(key, shape)

    def _vm_record(self, view: VmView) -> _VmRecord:
        key = self._key_for(view)
        spec_texts = [iface.mac for iface in view.interfaces]
        spec_macs: bytes | tuple[str, ...] = tuple(spec_texts)
        if all(_is_canonical_mac(text) for text in spec_texts):
            spec_macs = self._stored_macs(key, _pack_macs(spec_texts))
        observed: bytes | _ObservedAsWritten | None = None
        observed_names: tuple[str, ...] = ()
        annotation = view.annotations.get(OBSERVED_MACS_ANNOTATION)
        if not view.annotations and not view.observed_macs and not view.observed_macs_error:
            pass  # no annotation: nothing to keep
        elif (len(view.annotations) == 1 and not view.observed_macs_error and annotation is not None
              and annotation == _annotation_text(view.observed_macs, view.observed_macs.values())):
            # The annotation is spelled as the controller and Harvester write it: keep the MACs,
            # packed; the text is rebuilt from them.
            observed_names = tuple([sys.intern(name) for name in view.observed_macs])
            observed = self._stored_macs(key, _pack_macs(view.observed_macs.values()),
                                         spec_macs if isinstance(spec_macs, bytes) else None)
        else:
            observed = _ObservedAsWritten(dict(view.annotations), dict(view.observed_macs), view.observed_macs_error)
        return _VmRecord(key, _compact_uid(view.uid), _compact_resource_version(view.resource_version),
                         self._vm_shape(view, observed_names), spec_macs, observed)

    def _vmi_record(self, view: VmiView) -> _VmiRecord:
        key = self._key_for(view)
        mac_names = tuple([sys.intern(name) for name in view.interface_macs])
        shape = _VmiShape(
            namespace=key[0], deleting=view.deleting, phase=sys.intern(view.phase), ready=view.ready,
            live_migratable=view.live_migratable, live_migratable_reason=sys.intern(view.live_migratable_reason),
            migration_in_flight=view.migration_in_flight, mac_names=mac_names)
        # interface_macs values are normalised by VmiView: always canonical, always packable.
        macs = self._stored_macs(key, _pack_macs(view.interface_macs.values()))
        return _VmiRecord(key, self._shared.share(shape, shape), macs)

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
        if isinstance(previous, _VmRecord):
            self._macs.replace_vm(previous, None)
        view = previous.view() if isinstance(previous, (_VmRecord, _VmiRecord)) else previous
        self._notify(kind, DELETED, view)

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

    def heard_from(self, kind: str) -> None:
        """The API server just answered the list or watch of ``kind``."""
        self.last_contact[kind] = time.time()

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
            items = page.pop("items", None) or []
            for index, item in enumerate(items):
                items[index] = None  # each object freed once applied: its memory serves the next ones
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
                self.view.heard_from(self.resource.kind)
                del page
                _return_free_memory_to_the_system()
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
                    self.view.heard_from(self.resource.kind)
                    delivered = True
        finally:
            response.release()
        open_for = asyncio.get_running_loop().time() - opened_at
        if open_for >= timeout_seconds:
            self.view.heard_from(self.resource.kind)  # the server ended the watch when asked: it is there
        # A quiet watch the server closed normally is healthy too; only one that ends at once is not.
        return delivered or open_for >= HEALTHY_WATCH_SECONDS

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

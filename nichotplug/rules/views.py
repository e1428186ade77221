"""Read-only typed views over VirtualMachine, VirtualMachineInstance and NetworkAttachmentDefinition dicts.

The rules never index into raw Kubernetes objects: they read these frozen, slotted views, built by
``from_dict`` from the object as decoded from JSON. Building a view never copies the object and
never raises anything but ``InvalidObject``:

- a missing field reads as its empty value ("" / () / {} / None), because Kubernetes omits empty
  fields and the CRD schemas make almost everything optional;
- a field of the wrong JSON type is an ``InvalidObject`` whose message names the field path and
  what was found there, so a person can fix the manifest.

MAC strings are kept as written (they are validated by the rules, which can then say which
interface is wrong); the observed-MAC annotation and VMI status MACs are normalised.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

import orjson

from nichotplug.rules.mac import CANONICAL_MAC_PATTERN, InvalidMac, are_macs, normalize_mac

__all__ = [
    "BINDING_KEYS",
    "CLUSTER_NETWORK_LABEL",
    "GUEST_CLUSTER_CREATOR",
    "GUEST_CLUSTER_LABEL",
    "OBSERVED_MACS_ANNOTATION",
    "RUNNING_STRATEGIES",
    "InterfaceView",
    "InvalidObject",
    "NadView",
    "NetworkView",
    "VmMetadata",
    "VmView",
    "VmiView",
    "observed_macs_error",
    "parse_observed_macs",
    "parse_quantity",
    "read_vm_metadata",
]

OBSERVED_MACS_ANNOTATION = "harvesterhci.io/mac-address"
CLUSTER_NETWORK_LABEL = "network.harvesterhci.io/clusternetwork"
GUEST_CLUSTER_LABEL = "harvesterhci.io/creator"
GUEST_CLUSTER_CREATOR = "docker-machine-driver-harvester"

# KubeVirt's interface binding methods; an interface names exactly one of them as a key.
BINDING_KEYS = ("bridge", "masquerade", "sriov", "slirp", "passt", "macvtap", "binding")

# Run strategies under which the VM controller keeps (or starts) a VMI.
RUNNING_STRATEGIES = frozenset({"Always", "RerunOnFailure", "Once"})

_EMPTY: Mapping[str, Any] = {}


def _compact_mac_map_pattern() -> re.Pattern[str]:
    """The observed-MAC annotation exactly as our controller writes it: a compact JSON object of plain
    names to MACs in the normal form. Matching it proves the annotation parses, in one regex call."""
    entry = rf'"[^"\\\x00-\x1f]*":"{CANONICAL_MAC_PATTERN}"'
    return re.compile(rf"\{{(?:{entry}(?:,{entry})*)?\}}")


_COMPACT_MAC_MAP = _compact_mac_map_pattern()
_Item = TypeVar("_Item")


class InvalidObject(ValueError):
    """A Kubernetes object that cannot be read: not a JSON object, or a field of the wrong type.

    ``path`` is the field the message starts with ("" when it starts with the problem itself).
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path

    def within(self, prefix: str) -> InvalidObject:
        """The same problem seen from the enclosing object, whose item is at ``prefix``.

        Item builders report paths relative to the item, so a path string is only formatted when
        something is wrong, never on the hot path of a valid object.
        """
        if not self.path:
            return InvalidObject(f"{prefix} {self}", prefix)
        return InvalidObject(f"{prefix}.{self}", f"{prefix}.{self.path}")


def _bad(path: str, problem: str) -> InvalidObject:
    return InvalidObject(f"{path} {problem}" if path else problem, path)


# -- typed field access -------------------------------------------------------------------------

_JSON_TYPE_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
                    float: "a number", type(None): "null"}


def _json_type(value: object) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _mapping(value: object, path: str) -> Mapping[str, Any]:
    if type(value) is dict:  # the decoded-JSON case, checked first: an ABC isinstance costs ~6x more
        return value
    if value is None:
        return _EMPTY
    if isinstance(value, Mapping):
        return value
    raise _bad(path, f"must be an object, found {_json_type(value)}")


def _list(value: object, path: str) -> list[Any]:
    if type(value) is list:
        return value
    if value is None:
        return []
    if isinstance(value, list):
        return value
    raise _bad(path, f"must be an array, found {_json_type(value)}")


def _str(value: object, path: str) -> str:
    if type(value) is str:
        return value
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    raise _bad(path, f"must be a string, found {_json_type(value)}")


def _str_map(value: object, path: str) -> Mapping[str, str]:
    mapping = _mapping(value, path)
    for key, item in mapping.items():
        if not isinstance(item, str):
            raise _bad(f"{path}[{key!r}]", f"must be a string, found {_json_type(item)}")
    return mapping


def _metadata(obj: object, kind: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise InvalidObject(f"a {kind} must be a JSON object, found {_json_type(obj)}")
    return _mapping(obj.get("metadata"), "metadata")


# -- quantities and annotations -------------------------------------------------------------------

_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:([eE][-+]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?)")
_SUFFIX_FACTORS = {
    None: 1, "m": 0.001, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


def parse_quantity(text: object) -> int | None:
    """A Kubernetes resource quantity (``1Gi``, ``2048M``, ``1.5Gi``, ``1e9``) in whole units; None if unreadable."""
    if isinstance(text, bool):
        return None
    if isinstance(text, int):
        return text
    if not isinstance(text, str):
        return None
    return _parse_quantity_text(text)


@lru_cache(maxsize=256)  # a cluster spells its memory sizes in few ways; every VM write reads one
def _parse_quantity_text(text: str) -> int | None:
    match = _QUANTITY.fullmatch(text.strip())
    if match is None:
        return None
    number, exponent, suffix = match.groups()
    if exponent is not None:
        return int(float(number + exponent))
    return int(float(number) * _SUFFIX_FACTORS[suffix])


def parse_observed_macs(text: str) -> tuple[Mapping[str, str], str]:
    """Parse the observed-MAC annotation into (interface name -> normalised MAC, error text).

    Entries that are not valid MACs are dropped and named in the error; a value that is not a JSON
    object of strings gives no MACs and an error. An empty annotation is no MACs and no error.
    """
    if not text:
        return _EMPTY, ""
    try:
        decoded = orjson.loads(text)  # ~5x faster than json; every VM write reads this annotation
    except orjson.JSONDecodeError:
        # What orjson refuses, the standard module may still read (NaN, lone surrogates, huge
        # integers); it decides, so both parsers give the same verdict and the same message.
        try:
            decoded = json.loads(text)
        except (ValueError, RecursionError) as error:  # RecursionError: nested deeper than Python's stack
            return _EMPTY, f"annotation {OBSERVED_MACS_ANNOTATION} is not valid JSON ({error})"
    if not isinstance(decoded, dict):
        return _EMPTY, f"annotation {OBSERVED_MACS_ANNOTATION} must be a JSON object of interface name to MAC"
    macs: dict[str, str] = {}
    bad: list[str] = []
    for name, mac in decoded.items():
        try:
            macs[name] = normalize_mac(mac)
        except InvalidMac:
            bad.append(name)
    if bad:
        return macs, f"annotation {OBSERVED_MACS_ANNOTATION} has no valid MAC for interface(s) {', '.join(bad)}"
    return macs, ""


def observed_macs_error(text: str) -> str:
    """``parse_observed_macs(text)[1]`` alone, for validation: it needs the error, not the MACs."""
    if not text or _COMPACT_MAC_MAP.fullmatch(text):
        return ""  # checked on every VM write: the usual spelling needs no parse
    try:
        decoded = orjson.loads(text)
    except orjson.JSONDecodeError:
        return parse_observed_macs(text)[1]
    if type(decoded) is dict and are_macs(decoded.values()):
        return ""
    return parse_observed_macs(text)[1]  # something is wrong: let the parser word it


# -- views --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InterfaceView:
    """One entry of ``spec.template.spec.domain.devices.interfaces``.

    ``mac`` is the ``macAddress`` exactly as written ("" when absent); ``binding`` is the binding
    key present (``bridge``, ``masquerade``, ...; "" when none); ``state`` is "" or e.g. ``absent``.
    """

    name: str
    model: str
    mac: str
    binding: str
    state: str

    @classmethod
    def from_dict(cls, item: object) -> InterfaceView:
        """Read one interface; an InvalidObject names the field relative to the item."""
        fields = _mapping(item, "")
        name = _str(fields.get("name"), "name")
        if not name:
            raise _bad("", "has no name")
        binding = ""
        for key in BINDING_KEYS:
            if key in fields:
                binding = key
                break
        return cls(
            name=name,
            model=_str(fields.get("model"), "model"),
            mac=_str(fields.get("macAddress"), "macAddress"),
            binding=binding,
            state=_str(fields.get("state"), "state"),
        )


@dataclass(frozen=True, slots=True)
class NetworkView:
    """One entry of ``spec.template.spec.networks``.

    ``kind`` is ``pod``, ``multus`` or "" (any other source). For multus, the NAD reference: a
    ``networkName`` without a namespace means the VM's own namespace, as KubeVirt and Multus read it.
    """

    name: str
    kind: str
    nad_namespace: str
    nad_name: str

    @property
    def nad(self) -> tuple[str, str] | None:
        """(namespace, name) of the NAD for a multus network, else None (pod or unknown network)."""
        return (self.nad_namespace, self.nad_name) if self.kind == "multus" else None

    @classmethod
    def from_dict(cls, item: object, vm_namespace: str) -> NetworkView:
        """Read one network; an InvalidObject names the field relative to the item."""
        fields = _mapping(item, "")
        name = _str(fields.get("name"), "name")
        if not name:
            raise _bad("", "has no name")
        if "multus" in fields:
            network_name = _str(_mapping(fields["multus"], "multus").get("networkName"), "multus.networkName")
            namespace, slash, nad_name = network_name.partition("/")
            if not slash:
                namespace, nad_name = vm_namespace, network_name
            return cls(name=name, kind="multus", nad_namespace=namespace, nad_name=nad_name)
        return cls(name=name, kind="pod" if "pod" in fields else "", nad_namespace="", nad_name="")


def _items(items: list[Any], read: Callable[[object], _Item], path: str) -> tuple[_Item, ...]:
    """``read`` every item of the array at ``path``; an error names the item's index."""
    try:
        return tuple([read(item) for item in items])
    except InvalidObject:
        for index, item in enumerate(items):
            try:
                read(item)
            except InvalidObject as error:
                raise error.within(f"{path}[{index}]") from None
        raise  # pragma: no cover - a read that fails must fail again on the same item


_INTERFACES_PATH = "spec.template.spec.domain.devices.interfaces"
_NETWORKS_PATH = "spec.template.spec.networks"


def _interfaces(devices: Mapping[str, Any]) -> tuple[InterfaceView, ...]:
    return _items(_list(devices.get("interfaces"), _INTERFACES_PATH), InterfaceView.from_dict, _INTERFACES_PATH)


def _networks(template_spec: Mapping[str, Any], namespace: str) -> tuple[NetworkView, ...]:
    return _items(_list(template_spec.get("networks"), _NETWORKS_PATH),
                  lambda item: NetworkView.from_dict(item, namespace), _NETWORKS_PATH)


def _guest_memory(domain: Mapping[str, Any]) -> int | None:
    memory = _mapping(domain.get("memory"), "spec.template.spec.domain.memory")
    if memory.get("guest") is not None:
        return parse_quantity(memory["guest"])
    resources = _mapping(domain.get("resources"), "spec.template.spec.domain.resources")
    requests = _mapping(resources.get("requests"), "spec.template.spec.domain.resources.requests")
    return parse_quantity(requests.get("memory"))


def _effective_run_strategy(spec: Mapping[str, Any]) -> str:
    strategy = _str(spec.get("runStrategy"), "spec.runStrategy")
    running = spec.get("running")
    if running is not None and not isinstance(running, bool):
        raise _bad("spec.running", f"must be a boolean, found {_json_type(running)}")
    if strategy or running is None:
        return strategy
    return "Always" if running else "Halted"


@dataclass(frozen=True, slots=True)
class VmView:
    """What the rules read from a VirtualMachine.

    ``running`` says the spec asks for the VM to run (run strategy Always, RerunOnFailure or Once,
    or ``running: true``); whether a VMI exists is a separate fact (``ClusterState.get_vmi``).
    ``run_strategy`` is ``spec.runStrategy``, or ``Always``/``Halted`` derived from ``spec.running``,
    or "" when the spec says neither. ``observed_macs`` is the observed-MAC annotation, normalised;
    ``observed_macs_error`` says why (part of) it could not be read.
    """

    namespace: str
    name: str
    uid: str
    resource_version: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    deleting: bool
    running: bool
    run_strategy: str
    printable_status: str
    interfaces: tuple[InterfaceView, ...]
    networks: tuple[NetworkView, ...]
    observed_macs: Mapping[str, str]
    observed_macs_error: str
    node_selector: Mapping[str, str]
    has_host_devices: bool
    guest_memory_bytes: int | None

    @property
    def ref(self) -> str:
        """``namespace/name``, as messages name the VM."""
        return f"{self.namespace}/{self.name}"

    def interface(self, name: str) -> InterfaceView | None:
        return next((iface for iface in self.interfaces if iface.name == name), None)

    def network(self, name: str) -> NetworkView | None:
        return next((network for network in self.networks if network.name == name), None)

    def network_nads(self) -> dict[str, tuple[str, str] | None]:
        """Network name -> its NAD (None: pod or other network); a repeated name: the last entry."""
        return {network.name: network.nad for network in self.networks}

    @classmethod
    def from_dict(cls, obj: object, *, namespace: str = "") -> VmView:
        """Read a VirtualMachine; ``namespace`` is used when the object's metadata has none."""
        metadata = _metadata(obj, "VirtualMachine")
        assert isinstance(obj, Mapping)  # checked by _metadata; tells the type checker
        vm_namespace = _str(metadata.get("namespace"), "metadata.namespace") or namespace
        annotations = _str_map(metadata.get("annotations"), "metadata.annotations")
        spec = _mapping(obj.get("spec"), "spec")
        template_spec = _mapping(_mapping(spec.get("template"), "spec.template").get("spec"), "spec.template.spec")
        domain = _mapping(template_spec.get("domain"), "spec.template.spec.domain")
        devices = _mapping(domain.get("devices"), "spec.template.spec.domain.devices")
        run_strategy = _effective_run_strategy(spec)
        observed, observed_error = parse_observed_macs(annotations.get(OBSERVED_MACS_ANNOTATION, ""))
        status = _mapping(obj.get("status"), "status")
        return cls(
            namespace=vm_namespace,
            name=_str(metadata.get("name"), "metadata.name"),
            uid=_str(metadata.get("uid"), "metadata.uid"),
            resource_version=_str(metadata.get("resourceVersion"), "metadata.resourceVersion"),
            labels=_str_map(metadata.get("labels"), "metadata.labels"),
            annotations=annotations,
            deleting=metadata.get("deletionTimestamp") is not None,
            running=run_strategy in RUNNING_STRATEGIES,
            run_strategy=run_strategy,
            printable_status=_str(status.get("printableStatus"), "status.printableStatus"),
            interfaces=_interfaces(devices),
            networks=_networks(template_spec, vm_namespace),
            observed_macs=observed,
            observed_macs_error=observed_error,
            node_selector=_str_map(template_spec.get("nodeSelector"), "spec.template.spec.nodeSelector"),
            has_host_devices=bool(_list(devices.get("hostDevices"), "spec.template.spec.domain.devices.hostDevices")
                                  or _list(devices.get("gpus"), "spec.template.spec.domain.devices.gpus")),
            guest_memory_bytes=_guest_memory(domain),
        )


@dataclass(frozen=True, slots=True)
class VmMetadata:
    """The part of a VirtualMachine a metadata-only write can change that the rules care about."""

    namespace: str
    name: str
    deleting: bool
    observed_macs_error: str

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def read_vm_metadata(obj: object, *, namespace: str = "") -> VmMetadata:
    """Read only a VirtualMachine's metadata (cheap: for writes that leave the spec as it was)."""
    metadata = _metadata(obj, "VirtualMachine")
    annotations = _str_map(metadata.get("annotations"), "metadata.annotations")
    _observed, observed_error = parse_observed_macs(annotations.get(OBSERVED_MACS_ANNOTATION, ""))
    return VmMetadata(
        namespace=_str(metadata.get("namespace"), "metadata.namespace") or namespace,
        name=_str(metadata.get("name"), "metadata.name"),
        deleting=metadata.get("deletionTimestamp") is not None,
        observed_macs_error=observed_error,
    )


def _condition(conditions: list[Any], kind: str) -> Mapping[str, Any] | None:
    for index, item in enumerate(conditions):
        if type(item) is not dict:
            _mapping(item, f"status.conditions[{index}]")  # raises unless it is another kind of mapping
        if item.get("type") == kind:
            return item  # type: ignore[no-any-return]
    return None


def _condition_truth(condition: Mapping[str, Any] | None) -> bool | None:
    """True / False for a condition whose status says so; None when it is absent or Unknown."""
    status = condition.get("status") if condition is not None else None
    if status == "True":
        return True
    if status == "False":
        return False
    return None


def _interface_macs(status: Mapping[str, Any]) -> Mapping[str, str]:
    macs: dict[str, str] = {}
    for index, item in enumerate(_list(status.get("interfaces"), "status.interfaces")):
        try:
            entry = _mapping(item, "")
            name = _str(entry.get("name"), "name")
            mac = _str(entry.get("mac"), "mac")
        except InvalidObject as error:
            raise error.within(f"status.interfaces[{index}]") from None
        if name and mac:
            try:
                macs[name] = normalize_mac(mac)
            except InvalidMac:
                continue  # KubeVirt reports what the guest shows; an unreadable MAC is not ours to record
    return macs


_FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True, slots=True)
class VmiView:
    """What the rules read from a VirtualMachineInstance (its status, mostly).

    ``live_migratable`` is the ``LiveMigratable`` condition (None when absent or Unknown);
    ``live_migratable_reason`` is its reason and message. ``migration_in_flight`` is true while
    ``status.migrationState`` exists and is not ``completed``. ``interface_macs`` maps interface
    name to the normalised MAC KubeVirt reports for it.
    """

    namespace: str
    name: str
    deleting: bool
    phase: str
    ready: bool
    live_migratable: bool | None
    live_migratable_reason: str
    migration_in_flight: bool
    interface_macs: Mapping[str, str]

    @property
    def finished(self) -> bool:
        """The guest has stopped for good: phase ``Succeeded`` or ``Failed``.

        KubeVirt keeps such a VMI after a shutdown from inside the guest (runStrategy
        ``RerunOnFailure`` or ``Once``, Harvester's default is the first) until the VM is started
        again, which boots a new VMI from the VM's spec.
        """
        return self.phase in _FINISHED_PHASES

    @classmethod
    def from_dict(cls, obj: object, *, namespace: str = "") -> VmiView:
        metadata = _metadata(obj, "VirtualMachineInstance")
        assert isinstance(obj, Mapping)
        status = _mapping(obj.get("status"), "status")
        conditions = _list(status.get("conditions"), "status.conditions")
        ready = _condition(conditions, "Ready")
        migratable = _condition(conditions, "LiveMigratable")
        reason = ""
        if migratable is not None:
            parts = (_str(migratable.get("reason"), "LiveMigratable.reason"),
                     _str(migratable.get("message"), "LiveMigratable.message"))
            reason = ": ".join(part for part in parts if part)
        migration = status.get("migrationState")
        migration_state = _mapping(migration, "status.migrationState")
        return cls(
            namespace=_str(metadata.get("namespace"), "metadata.namespace") or namespace,
            name=_str(metadata.get("name"), "metadata.name"),
            deleting=metadata.get("deletionTimestamp") is not None,
            phase=_str(status.get("phase"), "status.phase"),
            ready=ready is not None and ready.get("status") == "True",
            live_migratable=_condition_truth(migratable),
            live_migratable_reason=reason,
            migration_in_flight=migration is not None and migration_state.get("completed") is not True,
            interface_macs=_interface_macs(status),
        )


@dataclass(frozen=True, slots=True)
class NadView:
    """What the rules read from a NetworkAttachmentDefinition.

    ``config`` is ``spec.config`` (the CNI JSON, unparsed: ``nad.nad_verdict`` reads it);
    ``cluster_network`` is the ``network.harvesterhci.io/clusternetwork`` label or "".
    """

    namespace: str
    name: str
    labels: Mapping[str, str]
    deleting: bool
    config: str
    cluster_network: str

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_dict(cls, obj: object, *, namespace: str = "") -> NadView:
        metadata = _metadata(obj, "NetworkAttachmentDefinition")
        assert isinstance(obj, Mapping)
        labels = _str_map(metadata.get("labels"), "metadata.labels")
        spec = _mapping(obj.get("spec"), "spec")
        return cls(
            namespace=_str(metadata.get("namespace"), "metadata.namespace") or namespace,
            name=_str(metadata.get("name"), "metadata.name"),
            labels=labels,
            deleting=metadata.get("deletionTimestamp") is not None,
            config=_str(spec.get("config"), "spec.config"),
            cluster_network=labels.get(CLUSTER_NETWORK_LABEL, ""),
        )

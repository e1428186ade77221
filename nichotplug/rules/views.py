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

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

from nichotplug.rules.mac import InvalidMac, normalize_mac
from nichotplug.rules.observed_macs import observed_macs_error, parse_observed_macs
from nichotplug.rules.vm_object import (
    BINDING_KEYS,
    CLUSTER_NETWORK_LABEL,
    INTERFACES_FIELD,
    NETWORKS_FIELD,
    OBSERVED_MACS_ANNOTATION,
    RUNNING_STRATEGIES,
)

__all__ = [
    "OBSERVED_MACS_ANNOTATION",  # also here for the webhook's fast decoder
    "InterfaceView",
    "InvalidObject",
    "NadView",
    "NetworkView",
    "VmMetadata",
    "VmView",
    "VmiView",
    "parse_quantity",
    "read_vm_metadata",
]

_EMPTY: Mapping[str, Any] = {}


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


def _identity(metadata: Mapping[str, Any], namespace: str) -> tuple[str, str, bool]:
    """(namespace, name, being deleted) of an object; ``namespace`` when its metadata names none."""
    return (_str(metadata.get("namespace"), "metadata.namespace") or namespace,
            _str(metadata.get("name"), "metadata.name"),
            metadata.get("deletionTimestamp") is not None)


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




def _interfaces(devices: Mapping[str, Any]) -> tuple[InterfaceView, ...]:
    return _items(_list(devices.get("interfaces"), INTERFACES_FIELD), InterfaceView.from_dict, INTERFACES_FIELD)


def _networks(template_spec: Mapping[str, Any], namespace: str) -> tuple[NetworkView, ...]:
    return _items(_list(template_spec.get("networks"), NETWORKS_FIELD),
                  lambda item: NetworkView.from_dict(item, namespace), NETWORKS_FIELD)


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
        vm_namespace, name, deleting = _identity(metadata, namespace)
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
            name=name,
            uid=_str(metadata.get("uid"), "metadata.uid"),
            resource_version=_str(metadata.get("resourceVersion"), "metadata.resourceVersion"),
            labels=_str_map(metadata.get("labels"), "metadata.labels"),
            annotations=annotations,
            deleting=deleting,
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
    return VmMetadata(*_identity(metadata, namespace),
                      observed_macs_error=observed_macs_error(annotations.get(OBSERVED_MACS_ANNOTATION, "")))


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
        vmi_namespace, name, deleting = _identity(metadata, namespace)
        return cls(
            namespace=vmi_namespace,
            name=name,
            deleting=deleting,
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
        nad_namespace, name, deleting = _identity(metadata, namespace)
        config = _str(_mapping(obj.get("spec"), "spec").get("config"), "spec.config")
        return cls(nad_namespace, name, labels, deleting, config, labels.get(CLUSTER_NETWORK_LABEL, ""))

"""Validation's fast path: the few facts the MAC rules read, taken straight from a decoded VM dict.

Building a full ``VmView`` (17 fields, a frozen dataclass per interface and network, labels, node
selector, memory...) was most of the validating webhook's cost, yet the MAC rules that judge nearly
every request read only the interfaces' names, MACs and states, the networks' NADs, the run
strategy and whether the observed-MAC annotation parses. ``read_vm_facts`` reads just that, in one
pass over plain tuples.

It still has to vouch that the object is *readable*: ``VmView.from_dict`` would refuse a field of
the wrong type with a message, and the fast path must never allow what the general path refuses.
So it checks the JSON type of every field ``VmView.from_dict`` checks, and gives up (returns None)
on anything it cannot vouch for: a wrong type, an interface or network without a name, a
non-``dict`` mapping, an object being deleted. The caller then takes the general path, which
decides and words any refusal. Hence the rule: **None means "ask the general path",
never "invalid"**. ``tests/rules/test_fast_path.py`` checks on generated VMs that both paths decide
alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from nichotplug.rules.observed_macs import observed_macs_error
from nichotplug.rules.vm_object import OBSERVED_MACS_ANNOTATION, RUNNING_STRATEGIES

__all__ = ["InterfaceFacts", "VmFacts", "read_vm_facts"]

NadRef = tuple[str, str] | None


class InterfaceFacts(NamedTuple):
    """An interface as the MAC rules and the hot-plug test see it (``mac`` as written, "" if none)."""

    name: str
    mac: str
    state: str


class VmFacts(NamedTuple):
    """What validation reads of a VM when no hot-plug rule is involved."""

    namespace: str
    name: str
    running: bool  # the spec asks to run (VmView.running)
    interfaces: tuple[InterfaceFacts, ...]
    nads: Mapping[str, NadRef]  # network name -> its NAD (None: pod or other network)
    observed_macs_error: str

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def network_nads(self) -> Mapping[str, NadRef]:
        return self.nads


class _Unsure(Exception):
    """Internal: a field the fast path cannot vouch for; the general path must read this object."""


def _obj(value: object) -> dict[str, Any] | None:
    """A JSON object field: dict or absent (None); anything else is for the general path."""
    if type(value) is dict:
        return value
    if value is None:
        return None
    raise _Unsure


def _text(value: object) -> str:
    if type(value) is str:
        return value
    if value is None:
        return ""
    raise _Unsure


def _array(value: object) -> list[Any]:
    if type(value) is list:
        return value
    if value is None:
        return []
    raise _Unsure


def _check_strings(value: object) -> None:
    """A map of strings (labels, annotations, node selector) or absent."""
    if value is None:
        return
    if type(value) is not dict or not all(type(item) is str for item in value.values()):
        raise _Unsure


def _named_items(value: object) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, item) of an array of objects that each have a name; anything else is for the general path."""
    for item in _array(value):
        if type(item) is not dict:
            raise _Unsure
        name = item.get("name")
        if type(name) is not str or not name:
            raise _Unsure
        yield name, item


def _interfaces(devices: dict[str, Any]) -> tuple[InterfaceFacts, ...]:
    facts = []
    for name, item in _named_items(devices.get("interfaces")):
        _text(item.get("model"))
        facts.append(InterfaceFacts(name, _text(item.get("macAddress")), _text(item.get("state"))))
    return tuple(facts)


def _nads(template_spec: dict[str, Any], vm_namespace: str) -> dict[str, NadRef]:
    """Network name -> NAD; like ``NetworkView``, a ``networkName`` without namespace is the VM's."""
    nads: dict[str, NadRef] = {}
    for name, item in _named_items(template_spec.get("networks")):
        if "multus" in item:
            multus = _obj(item["multus"]) or {}
            namespace, slash, nad_name = _text(multus.get("networkName")).partition("/")
            nads[name] = (namespace, nad_name) if slash else (vm_namespace, namespace)
        else:
            nads[name] = None
    return nads


def _check_memory(domain: dict[str, Any]) -> None:
    """The fields ``VmView`` reads for the guest memory (the quantity itself never fails to read)."""
    memory = _obj(domain.get("memory")) or {}
    if memory.get("guest") is None:
        resources = _obj(domain.get("resources")) or {}
        _obj(resources.get("requests"))


def _running(spec: dict[str, Any]) -> bool:
    strategy = _text(spec.get("runStrategy"))
    running = spec.get("running")
    if running is not None and type(running) is not bool:
        raise _Unsure
    if strategy:
        return strategy in RUNNING_STRATEGIES
    return running is True


def _read(obj: dict[str, Any], namespace: str) -> VmFacts | None:
    metadata = _obj(obj.get("metadata"))
    if metadata is None or metadata.get("deletionTimestamp") is not None:
        return None
    annotations = metadata.get("annotations")
    _check_strings(annotations)
    _check_strings(metadata.get("labels"))
    _text(metadata.get("uid"))
    _text(metadata.get("resourceVersion"))
    vm_namespace = _text(metadata.get("namespace")) or namespace
    spec = _obj(obj.get("spec")) or {}
    template_spec = _obj((_obj(spec.get("template")) or {}).get("spec")) or {}
    domain = _obj(template_spec.get("domain")) or {}
    devices = _obj(domain.get("devices")) or {}
    _check_strings(template_spec.get("nodeSelector"))
    _array(devices.get("hostDevices"))
    _array(devices.get("gpus"))
    _check_memory(domain)
    _text((_obj(obj.get("status")) or {}).get("printableStatus"))
    observed_error = observed_macs_error(annotations.get(OBSERVED_MACS_ANNOTATION, "") if annotations else "")
    return VmFacts(vm_namespace, _text(metadata.get("name")), _running(spec), _interfaces(devices),
                   _nads(template_spec, vm_namespace), observed_error)


def read_vm_facts(obj: object, *, namespace: str = "") -> VmFacts | None:
    """The facts of a plain decoded VirtualMachine, or None: the general path must read this one."""
    if type(obj) is not dict:
        return None
    try:
        return _read(obj, namespace)
    except _Unsure:
        return None

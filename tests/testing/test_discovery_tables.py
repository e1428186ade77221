"""Server-side Table printing of custom resources (what ``kubectl get vm`` shows as columns)."""

from __future__ import annotations

import datetime
import functools
from pathlib import Path
from typing import Any

import pytest
import yaml

from nichotplug.testing import tables
from nichotplug.testing.resources import BUILTIN_RESOURCES, ResourceInfo, resources_from_crd

CRD_DIR = Path(__file__).resolve().parents[2] / "nichotplug" / "testing" / "crds"
NOW = datetime.datetime(2026, 11, 28, 12, 0, 0, tzinfo=datetime.UTC)


@functools.cache
def _crd_resources() -> tuple[ResourceInfo, ...]:
    return tuple(info for path in sorted(CRD_DIR.glob("*.yaml"))
                 for crd in yaml.load_all(path.read_bytes(), Loader=yaml.CSafeLoader) if crd
                 for info in resources_from_crd(crd))


def _served(kind: str, version: str = "v1") -> ResourceInfo:
    return next(info for info in _crd_resources() if (info.kind, info.version) == (kind, version))


def vm(name: str, created: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                           "metadata": {"name": name, "namespace": "default", "creationTimestamp": created,
                                        "resourceVersion": "7"}, "spec": {}}
    if status is not None:
        obj["status"] = status
    return obj


def test_vm_table_has_the_crd_columns_and_rows() -> None:
    running = vm("web", "2026-11-28T11:55:00Z", {"printableStatus": "Running", "conditions": [
        {"type": "Paused", "status": "False"}, {"type": "Ready", "status": "True"}]})
    fresh = vm("new", "2026-11-28T11:59:30Z")
    table = tables.table(_served("VirtualMachine"), [running, fresh], resource_version="42", now=NOW)
    assert table is not None
    assert (table["kind"], table["apiVersion"], table["metadata"]) == ("Table", "meta.k8s.io/v1",
                                                                       {"resourceVersion": "42"})
    assert [column["name"] for column in table["columnDefinitions"]] == ["Name", "Age", "Status", "Ready"]
    assert table["columnDefinitions"][0]["format"] == "name"
    assert [row["cells"] for row in table["rows"]] == [["web", "5m", "Running", "True"], ["new", "30s", None, None]]
    assert table["rows"][0]["object"] == {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                          "metadata": running["metadata"]}


def test_vmi_columns_with_index_and_priority() -> None:
    vmi = {"metadata": {"name": "web", "creationTimestamp": "2026-11-28T09:00:00Z"},
           "status": {"phase": "Running", "nodeName": "node1", "interfaces": [{"ipAddress": "10.0.0.5"}],
                      "conditions": [{"type": "LiveMigratable", "status": "True"}]}}
    table = tables.table(_served("VirtualMachineInstance"), [vmi], now=NOW)
    assert table is not None
    assert [column["priority"] for column in table["columnDefinitions"]] == [0, 0, 0, 0, 0, 0, 1, 1]
    assert table["rows"][0]["cells"] == ["web", "3h", "Running", "10.0.0.5", "node1", None, "True", None]


def test_a_crd_without_columns_gets_age_and_builtins_get_none() -> None:
    nad = _served("NetworkAttachmentDefinition")
    table = tables.table(nad, [{"metadata": {"name": "vlan1", "creationTimestamp": "2026-11-25T12:00:00Z"}}],
                         now=NOW)
    assert table is not None
    assert [column["name"] for column in table["columnDefinitions"]] == ["Name", "Age"]
    assert table["rows"][0]["cells"] == ["vlan1", "3d"]
    namespaces = next(info for info in BUILTIN_RESOURCES if info.plural == "namespaces")
    assert tables.table(namespaces, []) is None


@pytest.mark.parametrize(("include", "has_object", "kind"), [
    ("Metadata", True, "PartialObjectMetadata"), ("Object", True, "VirtualMachine"), ("None", False, None)])
def test_include_object(include: str, has_object: bool, kind: str | None) -> None:
    table = tables.table(_served("VirtualMachine"), [vm("a", "2026-11-28T11:00:00Z")], include_object=include,
                         now=NOW)
    assert table is not None
    row = table["rows"][0]
    assert ("object" in row) is has_object
    if kind is not None:
        assert row["object"]["kind"] == kind


@pytest.mark.parametrize(("seconds", "text"), [
    (-5, "<invalid>"), (-1, "0s"), (0, "0s"), (119, "119s"), (120, "2m"), (185, "3m5s"), (600, "10m"),
    (3 * 3600, "3h"), (3 * 3600 + 600, "3h10m"), (9 * 3600, "9h"), (50 * 3600, "2d2h"), (48 * 3600, "2d"),
    (30 * 86400, "30d"), (800 * 86400, "2y70d"), (3000 * 86400, "8y"),
])
def test_human_duration(seconds: int, text: str) -> None:
    assert tables.human_duration(datetime.timedelta(seconds=seconds)) == text


@pytest.mark.parametrize(("column_type", "value", "cell"), [
    ("integer", 3, 3), ("integer", "3", None), ("number", 1.5, 1.5), ("boolean", True, True),
    ("boolean", "yes", None), ("string", True, "true"), ("string", {"a": 1}, '{"a":1}'),
    ("date", "not a time", "<invalid>"),
])
def test_cell_types(column_type: str, value: Any, cell: Any) -> None:
    info = ResourceInfo(group="example.com", version="v1", plural="gizmos", singular="gizmo", kind="Gizmo",
                        namespaced=True, printer_columns=({"name": "V", "type": column_type, "jsonPath": ".spec.v"},))
    table = tables.table(info, [{"metadata": {"name": "g"}, "spec": {"v": value}}], now=NOW)
    assert table is not None
    assert table["rows"][0]["cells"] == ["g", cell]


def test_an_unsupported_json_path_prints_none_and_is_reported_by_the_parser() -> None:
    info = ResourceInfo(group="example.com", version="v1", plural="gizmos", singular="gizmo", kind="Gizmo",
                        namespaced=True, printer_columns=({"name": "V", "type": "string", "jsonPath": ".a..b"},))
    table = tables.table(info, [{"metadata": {"name": "g"}}], now=NOW)
    assert table is not None
    assert table["rows"][0]["cells"] == ["g", None]
    with pytest.raises(ValueError, match="unsupported JSONPath"):
        tables.parse_json_path(".a..b")


@pytest.mark.parametrize(("accept", "wanted"), [
    ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
     "application/json", True),
    ("application/json", False),
    (None, False),
])
def test_table_is_recognised_in_accept(accept: str | None, wanted: bool) -> None:
    assert tables.wants_table(accept) is wanted

"""Server-side printing (``meta.k8s.io/v1`` Table) of custom resources, as ``kubectl get`` asks for it.

``kubectl get`` sends ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io, ...``; the real
server answers with rows built from the CRD's ``additionalPrinterColumns`` (``kubectl get vm``
shows ``NAME AGE STATUS READY``). Built-in kinds are left to kubectl's own printers:
:func:`table` returns None for them and the server answers the plain object or list.

The JSONPath of printer columns is the subset CRDs use: ``.a.b``, ``[0]``, ``[*]`` and
``[?(@.key=='value')]``.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nichotplug.testing.resources import BUILTIN_RESOURCES, ResourceInfo

TABLE_MEDIA_TYPE = "application/json;as=Table;v=v1;g=meta.k8s.io"
NAME_DESCRIPTION = ("Name must be unique within a namespace. Is required when creating resources, although some "
                    "resources may allow a client to request the generation of an appropriate name automatically.")
AGE_DESCRIPTION = ("CreationTimestamp is a timestamp representing the server time when this object was created.")
DEFAULT_COLUMNS = ({"name": "Age", "type": "date", "description": AGE_DESCRIPTION,
                    "jsonPath": ".metadata.creationTimestamp"},)

_STEP = re.compile(
    r"\.(?P<field>[^.\[]+)"  # .name
    r"|\[(?P<index>-?\d+|\*)\]"  # [0] or [*]
    r"""|\[\?\(@\.(?P<key>[^=!\s]+)\s*==\s*(?P<quote>['"])(?P<value>.*?)(?P=quote)\)\]"""  # [?(@.k=='v')]
)


def wants_table(accept: str | None) -> bool:
    """Whether an ``Accept`` header asks for a ``meta.k8s.io`` Table (v1 or v1beta1)."""
    for media_range in (accept or "").split(","):
        parameters = {key.strip(): value.strip() for key, _, value in
                      (part.partition("=") for part in media_range.split(";")[1:])}
        if parameters.get("as") == "Table" and parameters.get("g") == "meta.k8s.io":
            return True
    return False


def parse_json_path(path: str) -> list[tuple[str, Any]]:
    """The steps of a printer-column JSONPath; ValueError for anything outside the supported subset."""
    text = path.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    steps: list[tuple[str, Any]] = []
    position = 0
    while position < len(text):
        match = _STEP.match(text, position)
        if match is None:
            raise ValueError(f"unsupported JSONPath {path!r} at {text[position:]!r}")
        if match.group("field") is not None:
            steps.append(("field", match.group("field")))
        elif match.group("index") is not None:
            index = match.group("index")
            steps.append(("all", None) if index == "*" else ("index", int(index)))
        else:
            steps.append(("filter", (match.group("key"), match.group("value"))))
        position = match.end()
    return steps


def evaluate(path: str, obj: Any) -> list[Any]:
    """Every value ``path`` selects in ``obj`` (empty when nothing matches)."""
    current = [obj]
    for kind, argument in parse_json_path(path):
        current = list(_step(kind, argument, current))
    return current


def _step(kind: str, argument: Any, values: Iterable[Any]) -> Iterable[Any]:
    for value in values:
        if (kind == "field" and isinstance(value, Mapping) and argument in value) or (
                kind == "index" and isinstance(value, list) and -len(value) <= argument < len(value)):
            yield value[argument]
        elif kind == "all" and isinstance(value, list):
            yield from value
        elif kind == "filter" and isinstance(value, list):
            key, wanted = argument
            yield from (item for item in value if isinstance(item, Mapping) and _text(item.get(key)) == wanted)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return "" if value is None else str(value)


def human_duration(elapsed: datetime.timedelta) -> str:
    """Kubernetes' short age format (``42s``, ``5m3s``, ``3h10m``, ``2d4h``, ``1y30d``)."""
    seconds = int(elapsed.total_seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m" if seconds % 60 == 0 else f"{minutes}m{seconds % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d" if hours % 24 == 0 else f"{days}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{days}d"
    years = days // 365
    if hours < 24 * 365 * 8:
        return f"{years}y" if days % 365 == 0 else f"{years}y{days % 365}d"
    return f"{years}y"


def _cell(column: Mapping[str, Any], obj: Mapping[str, Any], now: datetime.datetime) -> Any:
    try:
        found = evaluate(str(column.get("jsonPath", "")), obj)
    except ValueError:
        return None  # a JSONPath beyond the supported subset prints as <none> rather than failing the list
    if not found or found[0] is None:
        return None
    value = found[0]
    column_type = column.get("type", "string")
    if column_type == "date":
        return _age(value, now)
    if column_type == "integer":
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    if column_type == "number":
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    if column_type == "boolean":
        return value if isinstance(value, bool) else None
    return _text(value)


def _age(value: Any, now: datetime.datetime) -> str:
    if not isinstance(value, str):
        return "<invalid>"
    try:
        created = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    return human_duration(now - created)


def columns_of(info: ResourceInfo) -> tuple[Mapping[str, Any], ...] | None:
    """The printer columns of a custom resource (Age when it declares none); None for a built-in."""
    if info in BUILTIN_RESOURCES:
        return None
    return info.printer_columns or DEFAULT_COLUMNS


def table(info: ResourceInfo, objects: Sequence[Mapping[str, Any]], *, resource_version: str = "",
          continue_token: str = "", include_object: str = "Metadata",
          now: datetime.datetime | None = None) -> dict[str, Any] | None:
    """The Table kube-apiserver answers for ``objects`` (one for a GET, all for a list), or None for a built-in.

    ``include_object`` is the ``includeObject`` query parameter: ``None``, ``Metadata``
    (default: a PartialObjectMetadata per row) or ``Object``.
    """
    columns = columns_of(info)
    if columns is None:
        return None
    moment = now or datetime.datetime.now(datetime.UTC)
    definitions = [{"name": "Name", "type": "string", "format": "name", "description": NAME_DESCRIPTION,
                    "priority": 0}]
    definitions += [{"name": column.get("name", ""), "type": column.get("type", "string"),
                     "format": column.get("format", ""), "description": column.get("description", ""),
                     "priority": int(column.get("priority", 0))} for column in columns]
    rows = [_row(obj, columns, include_object, moment) for obj in objects]
    metadata: dict[str, Any] = {}
    if resource_version:
        metadata["resourceVersion"] = resource_version
    if continue_token:
        metadata["continue"] = continue_token
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata,
            "columnDefinitions": definitions, "rows": rows}


def _row(obj: Mapping[str, Any], columns: Sequence[Mapping[str, Any]], include_object: str,
         now: datetime.datetime) -> dict[str, Any]:
    metadata = obj.get("metadata") or {}
    row: dict[str, Any] = {"cells": [metadata.get("name", ""), *(_cell(column, obj, now) for column in columns)]}
    if include_object == "Object":
        row["object"] = dict(obj)
    elif include_object != "None":
        row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": metadata}
    return row

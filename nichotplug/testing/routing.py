"""How the in-process API server reads a resource request, and how it writes its answers.

A resource URL (``/api/v1/namespaces/ns/pods/name/status``, ``/apis/group/version/plural``) names a
:class:`Target`; the HTTP method and the query name the verb RBAC checks. Every answer goes out
through :func:`json_response` or :func:`bytes_response`, which send the warnings as kube-apiserver
does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from nichotplug.testing.auth import UserInfo
from nichotplug.testing.errors import StatusError, bad_request, method_not_allowed, not_found_resource
from nichotplug.testing.resources import ResourceInfo
from nichotplug.testing.selectors import Matcher, combine, field_matcher, label_matcher
from nichotplug.testing.store import GroupResource

JSON = "application/json"
GO_TRUE = ("1", "t", "T", "true", "TRUE", "True")  # what Go's strconv.ParseBool reads as true
# (group, version, plural) -> what is served there
Registry = Mapping[tuple[str, str, str], ResourceInfo]


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

    def matcher(self) -> Matcher | None:
        """The label and field selectors of the query, combined; None selects everything."""
        return combine(label_matcher(self.query.get("labelSelector")),
                       field_matcher(self.query.get("fieldSelector")))


def is_resource_path(path: str) -> bool:
    """Whether an ``/api/...`` or ``/apis/...`` path goes as far as a resource (else it is discovery)."""
    parts = [p for p in path.split("/") if p]
    return len(parts) >= (3 if parts[0] == "api" else 4)


def route(resources: Registry, path: str) -> Target:
    """The target of a resource path; 404 for a resource, scope or subresource that is not served."""
    parts = [p for p in path.split("/") if p]
    if parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    else:
        group, version, rest = parts[1], parts[2], parts[3:]
    namespace = ""
    if len(rest) >= 3 and rest[0] == "namespaces" and (group, version, rest[2]) in resources:
        namespace, rest = rest[1], rest[2:]
        if not resources[(group, version, rest[0])].namespaced:
            raise not_found_resource()
    info = resources.get((group, version, rest[0]))
    if info is None or len(rest) > 3:
        raise not_found_resource()
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if subresource and subresource not in info.subresources and not is_token_request(info, subresource):
        raise not_found_resource()
    return Target(info, namespace, name, subresource)


def is_token_request(info: ResourceInfo, subresource: str) -> bool:
    return info.group == "" and info.plural == "serviceaccounts" and subresource == "token"


def verb_of(request: web.Request, target: Target) -> str:
    """The verb RBAC checks: the method, with GET split into get, list and watch."""
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


def int_param(query: Mapping[str, str], name: str) -> int | None:
    value = query.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise bad_request(f"invalid {name} {value!r}: must be an integer") from exc


def bytes_response(body: bytes, status: int = 200, warnings: Sequence[str] = (),
                   content_type: str = JSON) -> web.Response:
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": content_type})
    for text in warnings:
        # An HTTP quoted-string, escaped as kube-apiserver's NewWarningHeader does.
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        headers.add("Warning", f'299 - "{escaped}"')
    return web.Response(body=body, status=status, headers=headers)


def json_response(body: Mapping[str, Any], status: int = 200, warnings: Sequence[str] = (),
                  content_type: str = JSON) -> web.Response:
    return bytes_response(orjson.dumps(body), status, warnings, content_type)


def status_response(error: StatusError, warnings: Sequence[str] = ()) -> web.Response:
    return json_response(error.to_status(), status=error.code, warnings=warnings)

"""OpenAPI v3 documents of the in-process API server: ``/openapi/v3`` and one document per group version.

``kubectl apply``, ``edit`` and ``create`` download them before writing: they look up the PATCH
operation of the object's group/version/kind to learn whether the server takes
``fieldValidation`` (otherwise kubectl falls back to ``/openapi/v2``, which this server does not
serve, and fails), and whether it takes strategic merge patches (a custom resource does not, so
kubectl sends a JSON merge patch). The documents follow the shape kube-apiserver serves
(``fixtures/kubectl/get_openapi_v3*.json``): paths with ``x-kubernetes-action`` and
``x-kubernetes-group-version-kind``, components built from the CRD ``openAPIV3Schema`` plus the
``meta/v1`` types those schemas refer to. Built-in kinds get an open schema: this server does
not model their fields.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import orjson

from nichotplug.testing.resources import BUILTIN_RESOURCES, ResourceInfo

META = "io.k8s.apimachinery.pkg.apis.meta.v1"
_REF_PREFIX = "#/components/schemas/"

# Definition-name prefixes of the built-in groups, as kube-apiserver names them.
_BUILTIN_PREFIXES = {
    "": "io.k8s.api.core",
    "apiextensions.k8s.io": "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions",
}

_PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml")


# ----------------------------------------------------------------------------------------- naming

def _is_builtin_group(group: str) -> bool:
    return any(info.group == group for info in BUILTIN_RESOURCES)


def definition_prefix(group: str) -> str:
    """``io.kubevirt`` for ``kubevirt.io``; ``io.k8s.api.coordination`` for ``coordination.k8s.io``."""
    if group in _BUILTIN_PREFIXES:
        return _BUILTIN_PREFIXES[group]
    if _is_builtin_group(group):
        return "io.k8s.api." + group.removesuffix(".k8s.io").split(".")[0]
    return ".".join(reversed(group.split(".")))


def schema_name(group: str, version: str, kind: str) -> str:
    """The components.schemas key of a kind: ``io.kubevirt.v1.VirtualMachine``."""
    return f"{definition_prefix(group)}.{version}.{kind}"


def _camel(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[.\-]", text) if part)


def _operation_group(group: str) -> str:
    if not group:
        return "Core"
    if _is_builtin_group(group):
        return _camel(group.removesuffix(".k8s.io"))
    return _camel(group)


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF_PREFIX + name}


def _wrapped_ref(name: str, description: str = "", default: Any = None) -> dict[str, Any]:
    """A reference with siblings: OpenAPI v3 ignores siblings of ``$ref``, so wrap it in ``allOf``."""
    schema: dict[str, Any] = {"allOf": [_ref(name)]}
    if default is not None:
        schema["default"] = default
    if description:
        schema["description"] = description
    return schema


# ------------------------------------------------------------------------------------ meta/v1 types

def _string(description: str = "") -> dict[str, Any]:
    return {"type": "string", "description": description} if description else {"type": "string"}


def _integer(fmt: str) -> dict[str, Any]:
    return {"type": "integer", "format": fmt}


def _string_map() -> dict[str, Any]:
    return {"type": "object", "additionalProperties": {"type": "string", "default": ""}}


def _atomic_string_list() -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string", "default": ""}, "x-kubernetes-list-type": "atomic"}


_API_VERSION = _string("APIVersion defines the versioned schema of this representation of an object.")
_KIND = _string("Kind is a string value representing the REST resource this object represents.")


def _meta_schemas(served_group_versions: Sequence[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """The ``meta/v1`` types every group document refers to (the set the real server includes)."""
    time_ref = _wrapped_ref(f"{META}.Time")
    return {
        f"{META}.DeleteOptions": {
            "description": "DeleteOptions may be provided when deleting an API object.",
            "type": "object",
            "properties": {
                "apiVersion": _API_VERSION,
                "dryRun": _atomic_string_list(),
                "gracePeriodSeconds": _integer("int64"),
                "ignoreStoreReadErrorWithClusterBreakingPotential": {"type": "boolean"},
                "kind": _KIND,
                "orphanDependents": {"type": "boolean"},
                "preconditions": _wrapped_ref(f"{META}.Preconditions"),
                "propagationPolicy": {"type": "string"},
            },
            "x-kubernetes-group-version-kind": [
                {"group": group, "kind": "DeleteOptions", "version": version}
                for group, version in sorted(set(served_group_versions) | {("", "v1")})
            ],
        },
        f"{META}.FieldsV1": {
            "description": "FieldsV1 stores a set of fields in a data structure like a Trie, in JSON format.",
            "type": "object",
        },
        f"{META}.ListMeta": {
            "description": "ListMeta describes metadata that synthetic resources must have.",
            "type": "object",
            "properties": {
                "continue": {"type": "string"},
                "remainingItemCount": _integer("int64"),
                "resourceVersion": {"type": "string"},
                "selfLink": {"type": "string"},
                "shardInfo": _wrapped_ref(f"{META}.ShardInfo"),
            },
        },
        f"{META}.ManagedFieldsEntry": {
            "description": "ManagedFieldsEntry is a workflow-id, a FieldSet and the group version of the resource "
                           "that the fieldset applies to.",
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string"},
                "fieldsType": {"type": "string"},
                "fieldsV1": _wrapped_ref(f"{META}.FieldsV1"),
                "manager": {"type": "string"},
                "operation": {"type": "string"},
                "subresource": {"type": "string"},
                "time": time_ref,
            },
        },
        f"{META}.ObjectMeta": _object_meta_schema(),
        f"{META}.OwnerReference": {
            "description": "OwnerReference contains enough information to let you identify an owning object.",
            "type": "object",
            "required": ["apiVersion", "kind", "name", "uid"],
            "properties": {
                "apiVersion": {"type": "string", "default": ""},
                "blockOwnerDeletion": {"type": "boolean"},
                "controller": {"type": "boolean"},
                "kind": {"type": "string", "default": ""},
                "name": {"type": "string", "default": ""},
                "uid": {"type": "string", "default": ""},
            },
            "x-kubernetes-map-type": "atomic",
        },
        f"{META}.Patch": {
            "description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.",
            "type": "object",
        },
        f"{META}.Preconditions": {
            "description": "Preconditions must be fulfilled before an operation (update, delete, etc.) is carried out.",
            "type": "object",
            "properties": {"resourceVersion": {"type": "string"}, "uid": {"type": "string"}},
        },
        f"{META}.ShardInfo": {
            "description": "ShardInfo describes the shard selector a list was restricted to.",
            "type": "object",
            "properties": {"selector": {"type": "string"}},
        },
        f"{META}.Status": {
            "description": "Status is a return value for calls that don't return other objects.",
            "type": "object",
            "properties": {
                "apiVersion": _API_VERSION,
                "code": _integer("int32"),
                "details": _wrapped_ref(f"{META}.StatusDetails"),
                "kind": _KIND,
                "message": {"type": "string"},
                "metadata": _wrapped_ref(f"{META}.ListMeta", default={}),
                "reason": {"type": "string"},
                "status": {"type": "string"},
            },
            "x-kubernetes-group-version-kind": [{"group": "", "kind": "Status", "version": "v1"}],
        },
        f"{META}.StatusCause": {
            "description": "StatusCause provides more information about an api.Status failure.",
            "type": "object",
            "properties": {"field": {"type": "string"}, "message": {"type": "string"}, "reason": {"type": "string"}},
        },
        f"{META}.StatusDetails": {
            "description": "StatusDetails is a set of additional properties that MAY be set by the server.",
            "type": "object",
            "properties": {
                "causes": {
                    "type": "array",
                    "items": _wrapped_ref(f"{META}.StatusCause", default={}),
                    "x-kubernetes-list-type": "atomic",
                },
                "group": {"type": "string"},
                "kind": {"type": "string"},
                "name": {"type": "string"},
                "retryAfterSeconds": _integer("int32"),
                "uid": {"type": "string"},
            },
        },
        f"{META}.Time": {
            "description": "Time is a wrapper around time.Time; it serialises as RFC 3339.",
            "type": "string",
            "format": "date-time",
        },
    }


def _object_meta_schema() -> dict[str, Any]:
    time_ref = _wrapped_ref(f"{META}.Time")
    return {
        "description": "ObjectMeta is metadata that all persisted resources must have.",
        "type": "object",
        "properties": {
            "annotations": _string_map(),
            "creationTimestamp": time_ref,
            "deletionGracePeriodSeconds": _integer("int64"),
            "deletionTimestamp": time_ref,
            "finalizers": {
                "type": "array",
                "items": {"type": "string", "default": ""},
                "x-kubernetes-list-type": "set",
                "x-kubernetes-patch-strategy": "merge",
            },
            "generateName": {"type": "string"},
            "generation": _integer("int64"),
            "labels": _string_map(),
            "managedFields": {
                "type": "array",
                "items": _wrapped_ref(f"{META}.ManagedFieldsEntry", default={}),
                "x-kubernetes-list-type": "atomic",
            },
            "name": {"type": "string"},
            "namespace": {"type": "string"},
            "ownerReferences": {
                "type": "array",
                "items": _wrapped_ref(f"{META}.OwnerReference", default={}),
                "x-kubernetes-list-map-keys": ["uid"],
                "x-kubernetes-list-type": "map",
                "x-kubernetes-patch-merge-key": "uid",
                "x-kubernetes-patch-strategy": "merge",
            },
            "resourceVersion": {"type": "string"},
            "selfLink": {"type": "string"},
            "uid": {"type": "string"},
        },
    }


# ------------------------------------------------------------------------------------ kind schemas

def _gvk(info: ResourceInfo, kind: str) -> list[dict[str, str]]:
    return [{"group": info.group, "kind": kind, "version": info.version}]


def kind_schema(info: ResourceInfo) -> dict[str, Any]:
    """The schema of one kind: the CRD's openAPIV3Schema with typed apiVersion, kind and metadata.

    Nested parts of the CRD schema are shared, not copied (the documents are read-only and the
    VirtualMachine schema alone is half a megabyte).
    """
    base: dict[str, Any] = dict(info.schema) if info.schema is not None else {
        "description": f"{info.kind} (its fields are not modelled by the in-process API server)",
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    properties = dict(base.get("properties") or {})
    properties["apiVersion"] = _API_VERSION
    properties["kind"] = _KIND
    properties["metadata"] = _wrapped_ref(f"{META}.ObjectMeta", "Standard object's metadata.", default={})
    base["type"] = "object"
    base["properties"] = properties
    base["x-kubernetes-group-version-kind"] = _gvk(info, info.kind)
    return base


def list_schema(info: ResourceInfo) -> dict[str, Any]:
    """The schema of the kind's list (``VirtualMachineList``)."""
    return {
        "description": f"{info.effective_list_kind} is a list of {info.kind}",
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": _API_VERSION,
            "items": {
                "description": f"List of {info.plural.lower()}.",
                "type": "array",
                "items": _ref(schema_name(info.group, info.version, info.kind)),
            },
            "kind": _KIND,
            "metadata": _wrapped_ref(f"{META}.ListMeta", "Standard list metadata.", default={}),
        },
        "x-kubernetes-group-version-kind": _gvk(info, info.effective_list_kind),
    }


# ------------------------------------------------------------------------------------------ paths

def _parameter(name: str, location: str, type_: str, description: str, *, required: bool = False) -> dict[str, Any]:
    parameter: dict[str, Any] = {"name": name, "in": location, "description": description}
    if required:
        parameter["required"] = True
    parameter["schema"] = {"type": type_, "uniqueItems": True}
    return parameter


def _query(name: str, type_: str, description: str) -> dict[str, Any]:
    return _parameter(name, "query", type_, description)


_LIST_PARAMETERS = (
    _query("allowWatchBookmarks", "boolean", "Request BOOKMARK watch events."),
    _query("continue", "string", "Continue a chunked list from a previous result's continue token."),
    _query("fieldSelector", "string", "Restrict the list by fields (metadata.name, metadata.namespace)."),
    _query("labelSelector", "string", "Restrict the list by labels."),
    _query("limit", "integer", "Maximum number of items to return."),
    _query("resourceVersion", "string", "Which resource versions the request may be served from."),
    _query("resourceVersionMatch", "string", "How resourceVersion is applied to a list call."),
    _query("sendInitialEvents", "boolean", "Start a watch with synthetic events for the current state."),
    _query("shardSelector", "string", "Restrict the list to one shard."),
    _query("timeoutSeconds", "integer", "Timeout for the list/watch call."),
    _query("watch", "boolean", "Watch for changes and return them as a stream of events."),
)
_DRY_RUN = _query("dryRun", "string", "When present (All), modifications are not persisted.")
_WRITE_PARAMETERS = (
    _DRY_RUN,
    _query("fieldManager", "string", "A name for the actor making the change."),
    _query("fieldValidation", "string",
           "How to handle unknown or duplicate fields: Ignore, Warn (default) or Strict."),
)
_PATCH_PARAMETERS = (*_WRITE_PARAMETERS, _query("force", "boolean", "Force an apply request."))
_DELETE_PARAMETERS = (
    _DRY_RUN,
    _query("gracePeriodSeconds", "integer", "Duration in seconds before the object is deleted."),
    _query("ignoreStoreReadErrorWithClusterBreakingPotential", "boolean",
           "Delete a corrupt object that cannot be read."),
    _query("orphanDependents", "boolean", "Deprecated: use propagationPolicy."),
    _query("propagationPolicy", "string", "Orphan, Background or Foreground garbage collection."),
)
_PRETTY = _query("pretty", "string", "If 'true', the output is pretty printed.")
_NAMESPACE = _parameter("namespace", "path", "string", "object name and auth scope, such as for teams and projects",
                        required=True)


def _content(schema_ref: str) -> dict[str, Any]:
    schema = _ref(schema_ref)
    return {media: {"schema": schema} for media in ("application/json", "application/yaml")}


def _responses(schema_ref: str, codes: Sequence[str]) -> dict[str, Any]:
    responses: dict[str, Any] = {code: {"description": _RESPONSE_TEXT[code], "content": _content(schema_ref)}
                                 for code in codes}
    responses["401"] = {"description": "Unauthorized"}
    return responses


_RESPONSE_TEXT = {"200": "OK", "201": "Created", "202": "Accepted"}


class _Operations:
    """Builds the operations of one resource, naming them the way kube-apiserver does."""

    def __init__(self, info: ResourceInfo) -> None:
        self.info = info
        scope = "Namespaced" if info.namespaced else ""
        self.suffix = f"{_operation_group(info.group)}{_camel(info.version)}{scope}{info.kind}"
        self.all_namespaces_suffix = f"{_operation_group(info.group)}{_camel(info.version)}{info.kind}ForAllNamespaces"
        self.kind_ref = schema_name(info.group, info.version, info.kind)
        self.list_ref = schema_name(info.group, info.version, info.effective_list_kind)
        self.gvk = {"group": info.group, "version": info.version, "kind": info.kind}

    def _operation(self, operation_id: str, action: str, parameters: Sequence[dict[str, Any]],
                   responses: dict[str, Any], request_body: dict[str, Any] | None = None) -> dict[str, Any]:
        operation: dict[str, Any] = {"tags": [self.suffix.removesuffix(self.info.kind)],
                                     "description": f"{action} {self.info.kind}",
                                     "operationId": operation_id}
        if parameters:
            operation["parameters"] = list(parameters)
        if request_body is not None:
            operation["requestBody"] = request_body
        operation["responses"] = responses
        operation["x-kubernetes-action"] = action
        operation["x-kubernetes-group-version-kind"] = self.gvk
        return operation

    def _body(self, schema_ref: str, media_types: Sequence[str] = ("*/*",)) -> dict[str, Any]:
        return {"content": {media: {"schema": _ref(schema_ref)} for media in media_types}, "required": True}

    def _patch_media_types(self) -> tuple[str, ...]:
        # Strategic merge is never offered here. For a CRD that is the truth (415), and kubectl
        # then sends a JSON merge patch. For a built-in, offering it would make kubectl compute
        # the patch from these documents, whose built-in schemas are open ("unable to find api
        # field" warnings); without it kubectl uses its compiled-in types, as it always could.
        return _PATCH_TYPES

    def collection(self) -> dict[str, Any]:
        verbs = set(self.info.verbs)
        item: dict[str, Any] = {}
        if "list" in verbs:
            item["get"] = self._operation(f"list{self.suffix}", "list", _LIST_PARAMETERS,
                                          _responses(self.list_ref, ["200"]))
        if "create" in verbs:
            item["post"] = self._operation(f"create{self.suffix}", "post", _WRITE_PARAMETERS,
                                           _responses(self.kind_ref, ["200", "201", "202"]),
                                           self._body(self.kind_ref))
        if "deletecollection" in verbs:
            item["delete"] = self._operation(self._delete_collection_id(), "deletecollection",
                                             _LIST_PARAMETERS, _responses(f"{META}.Status", ["200"]))
        item["parameters"] = ([_NAMESPACE] if self.info.namespaced else []) + [_PRETTY]
        return item

    def _delete_collection_id(self) -> str:
        # deleteKubevirtIoV1CollectionNamespacedVirtualMachine: "Collection" goes after the version.
        group_version = f"{_operation_group(self.info.group)}{_camel(self.info.version)}"
        return f"delete{group_version}Collection{self.suffix.removeprefix(group_version)}"

    def _name_parameter(self) -> dict[str, Any]:
        return _parameter("name", "path", "string", f"name of the {self.info.kind}", required=True)

    def _item_parameters(self) -> list[dict[str, Any]]:
        return [self._name_parameter()] + ([_NAMESPACE] if self.info.namespaced else []) + [_PRETTY]

    def item(self) -> dict[str, Any]:
        verbs = set(self.info.verbs)
        item: dict[str, Any] = {}
        read_version = [_query("resourceVersion", "string", "Which resource version to read.")]
        if "get" in verbs:
            item["get"] = self._operation(f"read{self.suffix}", "get", read_version,
                                          _responses(self.kind_ref, ["200"]))
        if "update" in verbs:
            item["put"] = self._operation(f"replace{self.suffix}", "put", _WRITE_PARAMETERS,
                                          _responses(self.kind_ref, ["200", "201"]), self._body(self.kind_ref))
        if "delete" in verbs:
            item["delete"] = self._operation(f"delete{self.suffix}", "delete", _DELETE_PARAMETERS,
                                             _responses(f"{META}.Status", ["200", "202"]),
                                             {"content": {"*/*": {"schema": _ref(f"{META}.DeleteOptions")}}})
        if "patch" in verbs:
            item["patch"] = self._operation(f"patch{self.suffix}", "patch", _PATCH_PARAMETERS,
                                            _responses(self.kind_ref, ["200", "201"]),
                                            self._body(f"{META}.Patch", self._patch_media_types()))
        item["parameters"] = self._item_parameters()
        return item

    def subresource(self, name: str) -> dict[str, Any]:
        suffix = _camel(name)
        read_version = [_query("resourceVersion", "string", "Which resource version to read.")]
        return {
            "get": self._operation(f"read{self.suffix}{suffix}", "get", read_version,
                                   _responses(self.kind_ref, ["200"])),
            "put": self._operation(f"replace{self.suffix}{suffix}", "put", _WRITE_PARAMETERS,
                                   _responses(self.kind_ref, ["200", "201"]), self._body(self.kind_ref)),
            "patch": self._operation(f"patch{self.suffix}{suffix}", "patch", _PATCH_PARAMETERS,
                                     _responses(self.kind_ref, ["200", "201"]),
                                     self._body(f"{META}.Patch", self._patch_media_types())),
            "parameters": self._item_parameters(),
        }

    def all_namespaces(self) -> dict[str, Any]:
        return {
            "get": self._operation(f"list{self.all_namespaces_suffix}", "list", (),
                                   _responses(self.list_ref, ["200"])),
            "parameters": sorted([*_LIST_PARAMETERS, _PRETTY], key=lambda parameter: str(parameter["name"])),
        }


def _resource_paths(info: ResourceInfo) -> dict[str, Any]:
    root = f"/api/{info.version}" if not info.group else f"/apis/{info.group}/{info.version}"
    operations = _Operations(info)
    collection = f"{root}/namespaces/{{namespace}}/{info.plural}" if info.namespaced else f"{root}/{info.plural}"
    paths: dict[str, Any] = {collection: operations.collection(), f"{collection}/{{name}}": operations.item()}
    for subresource in sorted(info.subresources):
        paths[f"{collection}/{{name}}/{subresource}"] = operations.subresource(subresource)
    if info.namespaced and "list" in info.verbs:
        paths[f"{root}/{info.plural}"] = operations.all_namespaces()
    return paths


# ------------------------------------------------------------------------------------- documents

def _members(resources: Sequence[ResourceInfo], group: str, version: str) -> list[ResourceInfo]:
    return sorted((info for info in resources if info.group == group and info.version == version),
                  key=lambda info: info.plural)


def v3_document(resources: Sequence[ResourceInfo], group: str, version: str) -> dict[str, Any] | None:
    """The OpenAPI v3 document of one group version (``group`` "" for ``api/v1``), or None if not served."""
    members = _members(resources, group, version)
    if not members:
        return None
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = _meta_schemas(sorted({(info.group, info.version) for info in resources}))
    for info in members:
        paths.update(_resource_paths(info))
        schemas[schema_name(info.group, info.version, info.kind)] = kind_schema(info)
        schemas[schema_name(info.group, info.version, info.effective_list_kind)] = list_schema(info)
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes" if _is_builtin_group(group) else "Kubernetes CRD Swagger",
                 "version": "v0.1.0"},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(schemas.items()))},
    }


def document_hash(document: dict[str, Any]) -> str:
    """The ``hash`` query value of a document's URL: upper-case SHA-512 of its canonical JSON."""
    canonical = orjson.dumps(document, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha512(canonical).hexdigest().upper()


def index_key(group: str, version: str) -> str:
    """``api/v1`` or ``apis/<group>/<version>``: the key of a group version in ``/openapi/v3``."""
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def v3_index(resources: Sequence[ResourceInfo]) -> dict[str, Any]:
    """``GET /openapi/v3``: the URL of every group version's document, with a content hash.

    The hash changes whenever the document does (a CRD created or changed), so a client's cached
    copy is never served stale.
    """
    paths: dict[str, Any] = {}
    for group, version in sorted({(info.group, info.version) for info in resources}):
        document = v3_document(resources, group, version)
        if document is None:
            continue
        key = index_key(group, version)
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={document_hash(document)}"}
    return {"paths": dict(sorted(paths.items()))}

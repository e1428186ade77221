"""The in-process API server's writes: create, update, patch, delete, delete collection, namespace termination.

A write goes: decode (or apply the patch to the object as stored) -> mutating admission -> schema
validation -> validating admission -> store. The webhooks are awaited, so another write may land
meanwhile: an update that finds the object changed when it is about to store starts again from the
new object, as etcd's GuaranteedUpdate does, up to ``MAX_WRITE_ATTEMPTS`` times.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
import yaml
from aiohttp import web

from nichotplug.testing import admission, patching, validation, writes
from nichotplug.testing.builtins import builtin_causes
from nichotplug.testing.errors import (
    already_exists,
    bad_request,
    conflict,
    invalid,
    method_not_allowed,
    namespace_not_found,
    namespace_terminating,
    not_found,
)
from nichotplug.testing.read_verbs import existing, render
from nichotplug.testing.resources import (
    CRD_GR,
    MUTATING_GR,
    NAMESPACE_GR,
    VALIDATING_GR,
    ResourceInfo,
    is_custom,
)
from nichotplug.testing.routing import Call, Target, is_token_request, json_response
from nichotplug.testing.store import Store

if TYPE_CHECKING:
    from nichotplug.testing.server import ApiServer

MAX_WRITE_ATTEMPTS = 5


class _ChangedMeanwhile(Exception):
    """The object changed while a write was in admission: the write starts again from the new one."""


async def create(server: ApiServer, call: Call) -> web.StreamResponse:
    target = call.target
    if is_token_request(target.info, target.subresource):
        return _token_request(server, call)
    if target.name or (target.info.namespaced and not target.namespace):
        raise method_not_allowed()
    obj = _decode_object(await call.request.read(), call.request.content_type)
    created = await _create_object(server, call, obj)
    return json_response(render(target.info, created), status=201, warnings=call.warnings)


async def _create_object(server: ApiServer, call: Call, obj: dict[str, Any]) -> dict[str, Any]:
    target, info = call.target, call.target.info
    _check_type(obj, info)
    meta = obj.get("metadata")
    if isinstance(meta, dict) and meta.get("namespace") and meta["namespace"] != target.namespace:
        raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
    if info.namespaced:
        _check_namespace_open(server.store, target.namespace, info, (obj.get("metadata") or {}).get("name", ""))
    writes.prepare_create(obj, namespace=target.namespace, keeps_status="status" not in info.subresources)
    _prune(server, call, obj)
    obj = await _admit(server, call, "CREATE", obj, None)
    _validate(server, info, obj, old=None)
    obj = await _admit(server, call, "CREATE", obj, None, validating=True)
    name = obj["metadata"]["name"]
    if server.store.exists(target.gr, target.namespace, name):
        raise already_exists(info.plural, info.group, name)
    if call.dry_run:
        return obj
    return put(server, info, obj)


def _check_namespace_open(store: Store, namespace: str, info: ResourceInfo, name: str) -> None:
    namespace_obj = store.get(NAMESPACE_GR, "", namespace)
    if namespace_obj is None:
        raise namespace_not_found(namespace)
    if namespace_obj["metadata"].get("deletionTimestamp"):
        raise namespace_terminating(info.plural, info.group, name, namespace)


def put(server: ApiServer, info: ResourceInfo, obj: dict[str, Any]) -> dict[str, Any]:
    """Store an object in its storage version, with the side effects of special resources."""
    storage = server.storage_info(info.group, info.plural) or info
    obj["apiVersion"] = storage.group_version
    writes.drop_empty_metadata(obj)
    if (info.group, info.plural) == CRD_GR:
        return server.store_crd(obj)
    if (info.group, info.plural) == NAMESPACE_GR:
        return server.store_namespace(obj)
    return server.store.put((info.group, info.plural), obj)


async def update(server: ApiServer, call: Call) -> web.StreamResponse:
    target = call.target
    body = _decode_object(await call.request.read(), call.request.content_type)
    body_rv = (body.get("metadata") or {}).get("resourceVersion")
    for _ in range(MAX_WRITE_ATTEMPTS):
        old = existing(server.store, target)
        if body_rv and body_rv != old["metadata"]["resourceVersion"]:
            raise conflict(target.info.plural, target.info.group, target.name)
        call.warnings.clear()
        try:
            result, status = await _write_update(server, call, old, writes.deep_copy(body))
        except _ChangedMeanwhile:
            continue
        return json_response(render(target.info, result), status=status, warnings=call.warnings)
    raise conflict(target.info.plural, target.info.group, target.name)


async def patch(server: ApiServer, call: Call) -> web.StreamResponse:
    target, info = call.target, call.target.info
    kind, document = patching.decode_patch(call.request.headers.get("Content-Type"), await call.request.read(),
                                        custom_resource=is_custom(info))
    if kind == patching.APPLY_PATCH and not call.query.get("fieldManager"):
        raise invalid("PatchOptions", "meta.k8s.io", "", [{
            "reason": "FieldValueRequired", "message": "Required value: is required for apply patch",
            "field": "fieldManager"}])
    for _ in range(MAX_WRITE_ATTEMPTS):
        old = server.store.get(target.gr, target.namespace, target.name)
        if old is None:
            if kind != patching.APPLY_PATCH or target.subresource:
                raise not_found(info.plural, info.group, target.name)
            created = await _create_object(server, call, {**document, "metadata": {**(document.get("metadata") or {}),
                                                                                "name": target.name}})
            return json_response(render(info, created), status=201, warnings=call.warnings)
        # Like etcd's GuaranteedUpdate: a patch is applied to the object as it is when it is stored.
        patched = patching.apply_patch(kind, render(info, old), document, object_kind=info.kind)
        patched_rv = (patched.get("metadata") or {}).get("resourceVersion")
        if patched_rv and patched_rv != old["metadata"]["resourceVersion"]:
            raise conflict(info.plural, info.group, target.name)
        call.warnings.clear()
        try:
            result, status = await _write_update(server, call, old, patched)
        except _ChangedMeanwhile:
            continue
        return json_response(render(info, result), status=status, warnings=call.warnings)
    raise conflict(info.plural, info.group, target.name)


async def _write_update(server: ApiServer, call: Call, old: dict[str, Any],
                        new: dict[str, Any]) -> tuple[Mapping[str, Any], int]:
    """The common tail of PUT and PATCH: status rules, admission, validation, store."""
    target, info = call.target, call.target.info
    _check_type(new, info)
    new_meta = new.get("metadata") or {}
    if new_meta.get("namespace", target.namespace) != target.namespace:
        raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
    if new_meta.get("name", target.name) != target.name:
        raise bad_request(f"the name of the object ({new_meta.get('name')}) does not match the name on the URL "
                          f"({target.name})")
    if call.request.method == "PUT" and not new_meta.get("resourceVersion") and not info.unconditional_update:
        # The registry's AllowUnconditionalUpdate: a PUT must say which version it replaces.
        raise invalid(info.kind, info.group, target.name, [{
            "reason": "FieldValueInvalid", "field": "metadata.resourceVersion",
            "message": "Invalid value: 0x0: must be specified for an update"}])
    if new_meta.get("uid") and new_meta["uid"] != old["metadata"]["uid"]:
        writes.check_preconditions({"preconditions": {"uid": new_meta["uid"]}}, old, info.qualified_name)
    has_status = "status" in info.subresources
    new = writes.split_status(new, old, subresource=target.subresource, has_status=has_status)
    writes.carry_system_metadata(new, old)
    _prune(server, call, new)
    new = await _admit(server, call, "UPDATE", new, old)
    writes.carry_system_metadata(new, old)
    _validate(server, info, new, old=old)
    new = await _admit(server, call, "UPDATE", new, old, validating=True)
    writes.check_no_new_finalizers(new, old, info)
    writes.bump_generation(new, old, has_status=has_status)
    new["apiVersion"] = old["apiVersion"]
    if server.store.version_of(target.gr, target.namespace, target.name) != old["metadata"]["resourceVersion"]:
        raise _ChangedMeanwhile  # someone else wrote while the webhooks were being called

    if writes.unchanged(new, old):
        return old, 200
    if call.dry_run:
        return new, 200
    if old["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
        stored = put(server, info, new)
        return _remove(server, info, stored) or stored, 200
    return put(server, info, new), 200


async def delete(server: ApiServer, call: Call) -> web.StreamResponse:
    target, info = call.target, call.target.info
    options = _decode_options(await call.request.read())
    old = existing(server.store, target)
    writes.check_preconditions(options, old, info.qualified_name)
    await _admit(server, call, "DELETE", None, old, options=options)
    await _admit(server, call, "DELETE", None, old, options=options, validating=True)
    old = existing(server.store, target)  # as it is now, after the webhooks' awaits
    writes.check_preconditions(options, old, info.qualified_name)
    result = _delete_object(server, call, old)
    if result is not None:
        return json_response(render(info, result), warnings=call.warnings)
    details: dict[str, Any] = {"name": target.name}
    if info.group:
        details["group"] = info.group
    details["kind"] = info.plural
    details["uid"] = old["metadata"]["uid"]
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
    return json_response(status, warnings=call.warnings)


def _delete_object(server: ApiServer, call: Call, old: dict[str, Any]) -> Mapping[str, Any] | None:
    """Delete or mark deleting; returns the object when it stays (finalizers), else None."""
    info = call.target.info
    if (info.group, info.plural) == NAMESPACE_GR:
        return old if call.dry_run else _terminate_namespace(server.store, old)
    if old["metadata"].get("finalizers"):
        if old["metadata"].get("deletionTimestamp") or call.dry_run:
            return old
        return put(server, info, writes.mark_deleting(old))
    if not call.dry_run:
        _remove(server, info, old)
    return None


def _remove(server: ApiServer, info: ResourceInfo, obj: Mapping[str, Any]) -> dict[str, Any] | None:
    meta = obj["metadata"]
    gr = (info.group, info.plural)
    if gr == CRD_GR:
        server.unregister_crd(obj)
        server.store.drop_resource((obj["spec"]["group"], obj["spec"]["names"]["plural"]))
    removed = server.store.remove(gr, meta.get("namespace", ""), meta["name"])
    if meta.get("namespace"):
        _finish_namespace(server.store, meta["namespace"])
    return removed


def _terminate_namespace(store: Store, namespace_obj: dict[str, Any]) -> Mapping[str, Any]:
    """Namespace deletion as the namespace controller does it: Terminating, contents deleted, then gone.

    Objects with finalizers are only marked; the namespace goes once the last of them does.
    """
    name = namespace_obj["metadata"]["name"]
    if not namespace_obj["metadata"].get("deletionTimestamp"):
        terminating = writes.mark_deleting(namespace_obj)
        terminating["status"] = {"phase": "Terminating"}
        namespace_obj = store.put(NAMESPACE_GR, terminating)
    for gr in store.group_resources():
        for obj in list(store.objects(gr, name)) if gr != NAMESPACE_GR else ():
            if not obj["metadata"].get("finalizers"):
                store.remove(gr, name, obj["metadata"]["name"])
            elif not obj["metadata"].get("deletionTimestamp"):
                store.put(gr, writes.mark_deleting(obj))
    _finish_namespace(store, name)
    return namespace_obj


def _finish_namespace(store: Store, name: str) -> None:
    """Remove a terminating namespace once nothing is left in it."""
    namespace_obj = store.get(NAMESPACE_GR, "", name)
    if namespace_obj is None or not namespace_obj["metadata"].get("deletionTimestamp"):
        return
    if any(store.keys(gr, name) for gr in store.group_resources() if gr != NAMESPACE_GR):
        return
    store.remove(NAMESPACE_GR, "", name)


async def delete_collection(server: ApiServer, call: Call) -> web.StreamResponse:
    target = call.target
    options = _decode_options(await call.request.read())
    matcher = call.matcher()
    namespace = target.namespace if target.info.namespaced and target.namespace else None
    for obj in list(server.store.objects(target.gr, namespace)):
        if matcher is None or matcher(obj):
            one = Call(call.request, call.user, Target(target.info, obj["metadata"].get("namespace", ""),
                                                       obj["metadata"]["name"]), call.warnings)
            await _admit(server, one, "DELETE", None, obj, options=options)
            await _admit(server, one, "DELETE", None, obj, options=options, validating=True)
            _delete_object(server, one, obj)
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
    return json_response(status, warnings=call.warnings)


def _token_request(server: ApiServer, call: Call) -> web.StreamResponse:
    target = call.target
    existing(server.store, Target(target.info, target.namespace, target.name))
    token = server.service_account_token(target.namespace, target.name)
    body = {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": target.name, "namespace": target.namespace},
            "spec": {"audiences": [], "expirationSeconds": 3600},
            "status": {"token": token, "expirationTimestamp": writes.now_rfc3339()}}
    return json_response(body, status=201)


def _check_type(obj: dict[str, Any], info: ResourceInfo) -> None:
    """apiVersion/kind must name this resource; built-ins may leave them out (typed clients do)."""
    writes.check_metadata_shape(obj)
    if is_custom(info) and not obj.get("kind"):
        raise bad_request(f"Object 'Kind' is missing in '{orjson.dumps(obj).decode()[:200]}'")
    obj.setdefault("apiVersion", info.group_version)
    obj.setdefault("kind", info.kind)
    if obj["kind"] != info.kind:
        raise bad_request(
            f"the kind of the object ({obj['kind']}) does not match the kind on the URL ({info.kind})")
    if obj["apiVersion"] != info.group_version:
        raise bad_request(f"the API version in the data ({obj['apiVersion']}) does not match the expected API "
                          f"version ({info.group_version})")


def _prune(server: ApiServer, call: Call, obj: dict[str, Any]) -> None:
    info = call.target.info
    if info.schema is None:
        return
    unknown = server.validator(info).prune(obj)
    if not unknown:
        return
    mode = call.query.get("fieldValidation", "Warn")
    if mode == "Strict":
        raise validation.strict_error(info.kind, info.version, unknown)
    if mode == "Warn":
        call.warnings.extend(f'unknown field "{path}"' for path in unknown)


def _validate(server: ApiServer, info: ResourceInfo, obj: dict[str, Any], old: Mapping[str, Any] | None) -> None:
    is_namespace = (info.group, info.plural) == NAMESPACE_GR
    causes = validation.metadata_causes(obj, dns_label=is_namespace) if old is None else []
    if info.schema is not None:
        causes += server.validator(info).causes(obj)
    causes += builtin_causes(info.group, info.plural, obj)
    if causes:
        raise invalid(info.kind, info.group, obj.get("metadata", {}).get("name", ""), causes)


async def _admit(server: ApiServer, call: Call, operation: str, obj: dict[str, Any] | None,
                 old: Mapping[str, Any] | None, *, validating: bool = False,
                 options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run the stored webhook configurations; returns the (possibly mutated) object."""
    mutating = [] if validating else list(server.store.objects(MUTATING_GR))
    validating_configs = list(server.store.objects(VALIDATING_GR)) if validating else []
    if not (mutating or validating_configs):
        return obj if obj is not None else {}
    target = call.target
    name = (obj or old or {}).get("metadata", {}).get("name", target.name)
    attrs = admission.AdmissionAttributes(
        operation=operation, resource=target.info, subresource=target.subresource, namespace=target.namespace,
        name=name, obj=obj, old_obj=old, user=call.user, dry_run=call.dry_run,
        options=dict(options) if options is not None else _options_for(operation, call.query),
    )
    result = await admission.admit(attrs, mutating, validating_configs, server.namespace_labels,
                                   server.webhook_client)
    call.warnings.extend(result.warnings)
    admitted: dict[str, Any] | None = result.obj
    return admitted if admitted is not None else (obj if obj is not None else {})


def _decode_object(body: bytes, content_type: str) -> dict[str, Any]:
    try:
        obj = yaml.load(body, Loader=yaml.CSafeLoader) if "yaml" in content_type else orjson.loads(body)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise bad_request(f"couldn't get version/kind; json parse error: {exc}") from exc
    if not isinstance(obj, dict):
        raise bad_request("couldn't get version/kind; json parse error: the body must be a JSON object")
    if "metadata" in obj and not isinstance(obj["metadata"], dict):
        raise bad_request("metadata must be an object")
    return obj


def _decode_options(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        options = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"error decoding DeleteOptions: {exc}") from exc
    return options if isinstance(options, dict) else {}


def _options_for(operation: str, query: Mapping[str, str]) -> dict[str, Any]:
    kind = {"CREATE": "CreateOptions", "UPDATE": "UpdateOptions"}.get(operation, "DeleteOptions")
    options: dict[str, Any] = {"kind": kind, "apiVersion": "meta.k8s.io/v1"}
    if query.get("fieldManager"):
        options["fieldManager"] = query["fieldManager"]
    if "dryRun" in query:
        options["dryRun"] = ["All"]
    return options

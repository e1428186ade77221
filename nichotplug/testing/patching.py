"""The PATCH content types kube-apiserver accepts, applied to plain JSON objects.

- ``application/json-patch+json``: RFC 6902 (the ``jsonpatch`` library); a failed ``test`` or a
  missing path is 422 Invalid, a body that is not a list of operations is 400, as fixtures 06-11 show.
- ``application/merge-patch+json``: RFC 7386.
- ``application/strategic-merge-patch+json``: 415 for custom resources (fixture 12); for built-ins a
  strategic merge: lists with a patch merge key (``webhooks`` by ``name``, ``metadata.finalizers``
  as a set, ...) merge element by element, with the ``$patch``, ``$setElementOrder``,
  ``$deleteFromPrimitiveList`` and ``$retainKeys`` directives kubectl sends.
- ``application/apply-patch+yaml``: minimal server-side apply (merge into the live object).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jsonpatch
import jsonpointer
import orjson
import yaml

from nichotplug.testing.errors import bad_request, patch_rejected, unsupported_media_type

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
CUSTOM_RESOURCE_PATCH_TYPES = [JSON_PATCH, MERGE_PATCH, APPLY_PATCH]
BUILTIN_PATCH_TYPES = [JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, APPLY_PATCH]


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode_patch(content_type: str | None, body: bytes, *, custom_resource: bool) -> tuple[str, Any]:
    """(patch type, decoded patch) or a 415/400 StatusError."""
    kind = media_type(content_type)
    accepted = CUSTOM_RESOURCE_PATCH_TYPES if custom_resource else BUILTIN_PATCH_TYPES
    if kind not in accepted:
        raise unsupported_media_type(accepted)
    if kind == APPLY_PATCH:
        try:
            patch = yaml.load(body, Loader=yaml.CSafeLoader)
        except yaml.YAMLError as exc:
            raise bad_request(f"error decoding YAML: {exc}") from exc
        if not isinstance(patch, dict):
            raise bad_request("error decoding YAML: the apply patch must be an object")
        return kind, patch
    try:
        patch = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"error decoding patch: {exc}") from exc
    if kind == JSON_PATCH:
        _check_json_patch_shape(patch)
    elif not isinstance(patch, dict):
        raise bad_request(
            "error decoding patch: json: cannot unmarshal array into Go value of type map[string]interface {}")
    return kind, patch


def _check_json_patch_shape(patch: Any) -> None:
    if isinstance(patch, dict):
        raise bad_request(
            "error decoding patch: json: cannot unmarshal object into Go value of type []handlers.jsonPatchOp")
    if not isinstance(patch, list) or not all(isinstance(op, dict) for op in patch):
        raise bad_request("error decoding patch: json: cannot unmarshal into Go value of type []handlers.jsonPatchOp")


def apply_patch(kind: str, live: Mapping[str, Any], patch: Any, object_kind: str = "") -> dict[str, Any]:
    """A new object: ``live`` with ``patch`` applied (``live`` is left untouched)."""
    if kind == JSON_PATCH:
        return apply_json_patch(live, patch)
    if kind == STRATEGIC_MERGE_PATCH:
        lists = {**COMMON_MERGE_LISTS, **MERGE_LISTS.get(object_kind, {})}
        strategic: dict[str, Any] = strategic_merge(_copy(live), patch, lists) or {}
        return strategic
    merged: dict[str, Any] = merge_patch(_copy(live), patch)
    return merged


def apply_json_patch(live: Mapping[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        result = jsonpatch.JsonPatch(ops).apply(_copy(live), in_place=True)
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        # kube-apiserver answers a failed test or a missing path with a bare 422 (fixtures 06, 08, 09).
        raise patch_rejected() from exc
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise bad_request(f"error decoding patch: {exc}") from exc
    if not isinstance(result, dict):
        raise patch_rejected()
    return result


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return _copy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# Lists that merge instead of being replaced, by their field path (list items add no step):
# the patch merge key, or "" for a list of scalars merged as a set. From the Go types' tags.
FieldPath = tuple[str, ...]
COMMON_MERGE_LISTS: dict[FieldPath, str] = {("metadata", "finalizers"): "", ("metadata", "ownerReferences"): "uid"}
MERGE_LISTS: dict[str, dict[FieldPath, str]] = {
    "MutatingWebhookConfiguration": {("webhooks",): "name", ("webhooks", "matchConditions"): "name"},
    "ValidatingWebhookConfiguration": {("webhooks",): "name", ("webhooks", "matchConditions"): "name"},
    "ServiceAccount": {("secrets",): "name", ("imagePullSecrets",): "name"},
}
_DIRECTIVE_PREFIXES = ("$setElementOrder/", "$deleteFromPrimitiveList/")


def strategic_merge(target: Any, patch: Any, lists: Mapping[FieldPath, str], path: FieldPath = ()) -> Any:
    """Kubernetes' strategic merge of ``patch`` into ``target`` (owned by the caller); None = delete."""
    if not isinstance(patch, dict):
        return _copy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: _copy(v) for k, v in patch.items() if k != "$patch"}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith(_DIRECTIVE_PREFIXES):
            continue
        field = (*path, key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and field in lists:
            result[key] = _merge_list(result.get(key) or [], value, lists, field)
        else:
            merged = strategic_merge(result.get(key), value, lists, field)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/") and isinstance(value, list):
            name = key.split("/", 1)[1]
            result[name] = [item for item in result.get(name) or [] if item not in value]
        elif key.startswith("$setElementOrder/") and isinstance(value, list):
            name = key.split("/", 1)[1]
            if isinstance(result.get(name), list):
                result[name] = _ordered(result[name], value, lists.get((*path, name), ""))
    if isinstance(patch.get("$retainKeys"), list):
        result = {k: v for k, v in result.items() if k in patch["$retainKeys"]}
    return result


def _merge_list(current: list[Any], items: list[Any], lists: Mapping[FieldPath, str], path: FieldPath) -> list[Any]:
    key = lists[path]
    if not key:  # a set of scalars
        return [*current, *(item for item in items if item not in current)]
    merged = list(current)
    deleted = set()
    for item in items:
        if not isinstance(item, dict) or key not in item:
            merged.append(_copy(item))
            continue
        if item.get("$patch") == "delete":
            deleted.add(item[key])
            continue
        position = next((i for i, old in enumerate(merged) if isinstance(old, dict) and old.get(key) == item[key]),
                        None)
        if position is None:
            merged.append(strategic_merge({}, item, lists, path))
        else:
            merged[position] = strategic_merge(merged[position], item, lists, path)
    return [m for m in merged if not (isinstance(m, dict) and m.get(key) in deleted)]


def _ordered(items: list[Any], order: list[Any], key: str) -> list[Any]:
    """Reorder as ``$setElementOrder`` says; items it does not name keep their place at the end."""
    def identity(item: Any) -> Any:
        return item.get(key) if key and isinstance(item, dict) else item
    def place(item: Any) -> int:
        found = identity(item)
        return rank.get(found, len(rank)) if isinstance(found, str | int) else len(rank)
    wanted = [identity(entry) for entry in order]
    rank = {value: index for index, value in enumerate(wanted) if isinstance(value, str | int)}
    return sorted(items, key=place)


def _copy(value: Any) -> Any:
    # orjson round trip: a deep copy several times faster than copy.deepcopy for JSON data.
    return orjson.loads(orjson.dumps(value))

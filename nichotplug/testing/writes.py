"""What kube-apiserver does to an object on the way into storage, apart from HTTP and admission.

Pure helpers over plain dicts: the system metadata the server owns (uid, creationTimestamp,
resourceVersion, generation), ``generateName``, the status-subresource split (main-resource
writes keep the old status, status writes keep everything but the status), the generation bump
on a spec change, deletion with finalizers and the continue tokens of paginated lists.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import os
import secrets
import time
from collections.abc import Mapping
from typing import Any

import orjson

from nichotplug.testing.errors import StatusError, bad_request, invalid
from nichotplug.testing.resources import ResourceInfo

# Fields of ObjectMeta only the server sets; a client's values are ignored (or rejected).
SYSTEM_METADATA = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation")
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery's: no vowels, no look-alikes


_last_stamp: tuple[int, str] = (0, "")


def now_rfc3339() -> str:
    """The current UTC second as Kubernetes writes timestamps (formatted once per second: it is hot)."""
    global _last_stamp
    second = int(time.time())
    if _last_stamp[0] != second:
        stamp = datetime.datetime.fromtimestamp(second, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        _last_stamp = (second, stamp)
    return _last_stamp[1]


def new_uid() -> str:
    """A random (version 4) UUID string; uuid.uuid4() was the slowest step of a bulk load."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def deep_copy(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


def generated_name(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_GENERATE_ALPHABET) for _ in range(5))


_METADATA_SHAPES: dict[str, tuple[type, str]] = {
    "name": (str, "string"), "generateName": (str, "string"), "namespace": (str, "string"),
    "labels": (dict, "map[string]string"), "annotations": (dict, "map[string]string"),
    "finalizers": (list, "[]string"), "ownerReferences": (list, "[]v1.OwnerReference"),
}


def check_metadata_shape(obj: Mapping[str, Any]) -> None:
    """ObjectMeta fields of the wrong JSON type are a 400, as Go's decoder reports them."""
    meta = obj.get("metadata")
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise bad_request(f"json: cannot unmarshal {_json_kind(meta)} into Go struct field of type v1.ObjectMeta")
    for key, (expected, go_type) in _METADATA_SHAPES.items():
        value: Any = meta.get(key)
        if value is None:
            continue
        if isinstance(value, dict):
            well_formed = expected is dict and all(isinstance(v, str) for v in value.values())
        elif isinstance(value, list):
            well_formed = expected is list and (go_type != "[]string" or all(isinstance(v, str) for v in value))
        else:
            well_formed = isinstance(value, expected)
        if not well_formed:
            raise bad_request(f"json: cannot unmarshal {_json_kind(value)} into Go struct field "
                              f"ObjectMeta.metadata.{key} of type {go_type}")


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    return "number"


def prepare_create(obj: dict[str, Any], *, namespace: str, keeps_status: bool) -> None:
    """Stamp a new object's system metadata in place (before admission, like the real server)."""
    meta = obj.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise bad_request("metadata must be an object")
    if meta.get("resourceVersion"):
        raise bad_request("resourceVersion should not be set on objects to be created")
    if not meta.get("name") and meta.get("generateName"):
        meta["name"] = generated_name(meta["generateName"])
    if namespace:
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)
    for key in SYSTEM_METADATA:
        meta.pop(key, None)
    meta["uid"] = new_uid()
    meta["creationTimestamp"] = now_rfc3339()
    meta["generation"] = 1
    if not keeps_status:
        obj.pop("status", None)


def carry_system_metadata(new: dict[str, Any], old: Mapping[str, Any]) -> None:
    """An update cannot change the server-owned metadata: copy it from the stored object."""
    meta = new.setdefault("metadata", {})
    old_meta = old["metadata"]
    for key in (*SYSTEM_METADATA, "name", "namespace"):
        if key in old_meta:
            meta[key] = old_meta[key]
        else:
            meta.pop(key, None)
    meta["resourceVersion"] = old_meta.get("resourceVersion", "")


def split_status(new: dict[str, Any], old: Mapping[str, Any], *, subresource: str, has_status: bool) -> dict[str, Any]:
    """Apply the status-subresource rules: which parts of ``new`` an update may change."""
    if subresource == "status":
        kept: dict[str, Any] = deep_copy(old)
        if "status" in new:
            kept["status"] = new["status"]
        else:
            kept.pop("status", None)
        return kept
    if has_status:
        if "status" in old:
            new["status"] = old["status"]
        else:
            new.pop("status", None)
    return new


def _without(obj: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in keys}


def bump_generation(new: dict[str, Any], old: Mapping[str, Any], *, has_status: bool) -> None:
    """metadata.generation + 1 when anything but metadata (and status, if a subresource) changed."""
    ignored = ("metadata", "status") if has_status else ("metadata",)
    if _without(new, *ignored) != _without(old, *ignored):
        new["metadata"]["generation"] = int(old["metadata"].get("generation") or 1) + 1


def unchanged(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """A no-op write: kube-apiserver answers it without a new resourceVersion or watch event."""
    volatile = ("resourceVersion", "managedFields")
    return (_without(new, "metadata") == _without(old, "metadata")
            and _without(new["metadata"], *volatile) == _without(old["metadata"], *volatile))


def check_no_new_finalizers(new: Mapping[str, Any], old: Mapping[str, Any], info: ResourceInfo) -> None:
    """An object being deleted may lose finalizers but not gain them (422, as the real server says)."""
    if not old["metadata"].get("deletionTimestamp"):
        return
    before = set(old["metadata"].get("finalizers") or ())
    added = [f for f in new["metadata"].get("finalizers") or () if f not in before]
    if added:
        listed = ", ".join(f'"{f}"' for f in added)
        raise invalid(info.kind, info.group, old["metadata"]["name"], [{
            "reason": "FieldValueForbidden",
            "message": "Forbidden: no new finalizers can be added if the object is being deleted, "
                       f"found new finalizers []string{{{listed}}}",
            "field": "metadata.finalizers"}])


def drop_empty_metadata(obj: dict[str, Any]) -> None:
    """ObjectMeta's maps and lists are ``omitempty``: an emptied ``labels`` disappears (fixture 10)."""
    meta = obj["metadata"]
    for key in ("labels", "annotations", "finalizers", "ownerReferences", "managedFields"):
        if key in meta and not meta[key]:
            del meta[key]


def mark_deleting(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object as a delete leaves it while finalizers remain."""
    marked: dict[str, Any] = deep_copy(obj)
    marked["metadata"]["deletionTimestamp"] = now_rfc3339()
    marked["metadata"]["deletionGracePeriodSeconds"] = 0
    return marked


def check_preconditions(options: Mapping[str, Any], old: Mapping[str, Any], qualified: str) -> None:
    preconditions = options.get("preconditions") or {}
    meta = old["metadata"]
    for field, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
        wanted = preconditions.get(field)
        if wanted and wanted != meta.get(field):
            raise StatusError(
                409, "Conflict",
                f'Operation cannot be fulfilled on {qualified} "{meta["name"]}": Precondition failed: '
                f"{label} in precondition: {wanted}, {label} in object meta: {meta.get(field)}",
                {"name": meta["name"]})


def encode_continue(resource_version: int, last_key: tuple[str, str]) -> str:
    namespace, name = last_key
    start = f"{namespace}/{name}\x00" if namespace else f"{name}\x00"
    token = {"v": "meta.k8s.io/v1", "rv": resource_version, "start": start}
    return base64.b64encode(orjson.dumps(token)).decode()


def decode_continue(token: str, namespaced: bool) -> tuple[int, tuple[str, str]]:
    """(resourceVersion, last key returned) from a continue token, or 400."""
    try:
        decoded = orjson.loads(base64.b64decode(token, validate=True))
        start = decoded["start"].rstrip("\x00")
        resource_version = int(decoded["rv"])
    except (binascii.Error, orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise bad_request(f"continue key is not valid: {exc}") from exc
    if namespaced and "/" in start:
        namespace, name = start.split("/", 1)
        return resource_version, (namespace, name)
    return resource_version, ("", start)

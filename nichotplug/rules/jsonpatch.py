"""Building JSON Patch (RFC 6902) ops as data: the op type, pointers, the concurrency guard, appends.

Every write nichotplug plans (mutation, hot-plug actions, the controller's annotation and backfill)
is a list of these ops; the API server applies them atomically, so a failed ``test`` leaves the
object untouched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["JsonPatchOp", "append_op", "pointer", "resource_version_test"]

JsonPatchOp = dict[str, Any]


def _escaped(token: str) -> str:
    # RFC 6901: '~' first, so the '~' that '/' becomes is not escaped again.
    return token.replace("~", "~0").replace("/", "~1")


def pointer(path: Sequence[str | int]) -> str:
    """The JSON Pointer of ``path`` (keys and list indexes), each token escaped."""
    return "".join("/" + _escaped(str(token)) for token in path)


def resource_version_test(resource_version: str) -> JsonPatchOp:
    """The first op of every write: it fails (and so the whole patch) when the object changed since
    it was read at ``resource_version``, instead of overwriting someone else's edit."""
    return {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version}


def append_op(obj: Mapping[str, Any], path: Sequence[str], value: Any) -> JsonPatchOp:
    """One ``add`` op appending ``value`` to the list at ``path`` of ``obj``, creating missing parents.

    JSON Patch ``add`` cannot create intermediate objects, so the op targets the deepest existing
    ancestor and carries the missing structure as its value.
    """
    node: Any = obj
    for depth, key in enumerate(path):
        child = node.get(key) if isinstance(node, Mapping) else None
        if child is None:
            nested: Any = [value]
            for missing_key in reversed(path[depth + 1:]):
                nested = {missing_key: nested}
            return {"op": "add", "path": pointer(path[: depth + 1]), "value": nested}
        node = child
    return {"op": "add", "path": pointer(path) + "/-", "value": value}

"""Reads that explain a "not found" to a person: does the namespace exist, where else is that name.

Each answers None when the caller's RBAC (or anything else) does not let it tell: these only add a
hint to an error that is already being shown, so they never raise.
"""

from __future__ import annotations

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException

from nichotplug.kube.patch import DEFAULT_TIMEOUT_SECONDS


async def namespace_exists(api: ApiClient, name: str) -> bool | None:
    """True or False, or None when the caller may not read namespaces (or the server did not answer)."""
    try:
        await CoreV1Api(api).read_namespace(name, _request_timeout=DEFAULT_TIMEOUT_SECONDS)
    except ApiException as exc:
        return False if exc.status == 404 else None
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
    return True


async def namespaces_holding(api: ApiClient, group: str, version: str, plural: str, name: str) -> list[str] | None:
    """The sorted namespaces that hold a ``plural`` object named ``name`` (one list, all namespaces, by
    field selector), or None when the caller may not list them cluster-wide."""
    try:
        listed = await CustomObjectsApi(api).list_cluster_custom_object(
            group, version, plural, field_selector=f"metadata.name={name}", _request_timeout=DEFAULT_TIMEOUT_SECONDS)
    except (ApiException, aiohttp.ClientError, TimeoutError, OSError):
        return None
    items = listed.get("items") if isinstance(listed, dict) else None
    return sorted({str(item.get("metadata", {}).get("namespace", "")) for item in items or ()
                   if isinstance(item, dict)} - {""})

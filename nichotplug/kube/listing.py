"""One-shot paged lists of custom objects and namespaces (for ``kubectl nichotplug check``).

A list is read in pages (``limit`` and ``continue``), so a fleet of any size costs one request per
page, never one per object, and neither the server nor this process holds one giant response.
Pages are decoded with orjson (three to four times faster than the client's own decoding of large
lists). An expired ``continue`` token (410) restarts the list from the first page, once; any other
API error is raised as the :class:`~nichotplug.kube.patch.KubeError` subclass that names it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

import orjson
from kubernetes_asyncio.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException

from nichotplug.kube.patch import KubeError, as_kube_error

__all__ = ["DEFAULT_PAGE_SIZE", "list_custom_objects", "list_namespace_names"]

DEFAULT_PAGE_SIZE: Final = 500
_TIMEOUT_SECONDS: Final = 60.0
T = TypeVar("T")


async def _page(api: ApiClient, group: str, version: str, plural: str, namespace: str | None,
                params: dict[str, Any]) -> dict[str, Any]:
    custom = CustomObjectsApi(api)
    options = {"_preload_content": False, "_request_timeout": _TIMEOUT_SECONDS, **params}
    try:
        if namespace is None:
            response = await custom.list_cluster_custom_object(group, version, plural, **options)
        else:
            response = await custom.list_namespaced_custom_object(group, version, namespace, plural, **options)
    except ApiException as exc:
        raise as_kube_error(exc) from exc
    try:
        body = await response.read()
    finally:
        response.release()
    if not 200 <= response.status <= 299:  # without preloading, the client raises nothing itself
        error = ApiException(status=response.status, reason=response.reason)
        error.body = body
        raise as_kube_error(error)
    decoded: dict[str, Any] = orjson.loads(body)
    return decoded


async def list_custom_objects(
    api: ApiClient, group: str, version: str, plural: str, *, read: Callable[[dict[str, Any]], T],
    namespace: str | None = None, label_selector: str = "", page_size: int = DEFAULT_PAGE_SIZE,
) -> list[T]:
    """``read(obj)`` of every object of ``plural`` (in ``namespace``, or in all namespaces when None).

    Each page is read as it arrives and then dropped, so a caller that keeps only what it needs
    (a view) never holds the whole list of full objects.
    """
    items: list[T] = []
    token = ""
    restarted = False
    while True:
        params: dict[str, Any] = {"limit": page_size}
        if label_selector:
            params["label_selector"] = label_selector
        if token:
            params["_continue"] = token
        try:
            page = await _page(api, group, version, plural, namespace, params)
        except KubeError as error:
            if error.status != 410 or not token or restarted:
                raise
            items, token, restarted = [], "", True  # the token expired: list again from the start
            continue
        items.extend(read(item) for item in page.pop("items", None) or () if isinstance(item, dict))
        token = str((page.get("metadata") or {}).get("continue") or "")
        if not token:
            return items


async def list_namespace_names(api: ApiClient) -> list[str]:
    """The names of every namespace, sorted."""
    try:
        listed = await CoreV1Api(api).list_namespace(_request_timeout=_TIMEOUT_SECONDS)
    except ApiException as exc:
        raise as_kube_error(exc) from exc
    return sorted(str(item.metadata.name) for item in listed.items)

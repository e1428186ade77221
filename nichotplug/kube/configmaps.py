"""Follow one ConfigMap's ``data``: read it now, re-read it every few seconds, report each change.

The subresource API follows ``kube-system/extension-apiserver-authentication`` this way: it holds the
CA of kube-apiserver's front proxy, which a cluster rotates. One small object read every few
seconds costs less than a watch and cannot go stale; a change is picked up within ``poll_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import orjson
from kubernetes_asyncio.client import ApiClient, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)

DEFAULT_POLL_SECONDS = 10.0

# Called with the ConfigMap's data, or None when the ConfigMap does not exist.
OnChange = Callable[[Mapping[str, str] | None], None]
_NOT_READ = object()


class ConfigMapFollower:
    """Calls ``on_change(data)`` after the first read and after every read that found other data.

    A read that fails (no permission, API server away) changes nothing: the last data read stays in
    force, and the failure is logged once until it changes.
    """

    def __init__(self, api: ApiClient, namespace: str, name: str, on_change: OnChange,
                 *, poll_seconds: float = DEFAULT_POLL_SECONDS) -> None:
        self.namespace = namespace
        self.name = name
        self.poll_seconds = poll_seconds
        self._core: Any = CoreV1Api(api)
        self._on_change = on_change
        self._last: object = _NOT_READ
        self._last_error = ""
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> bool:
        """Read the ConfigMap once; True when its data differed from the last read (and was reported)."""
        try:
            data = await self._read()
        except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as error:
            self._note_failure(error)
            return False
        self._last_error = ""
        if data == self._last:
            return False
        self._last = data
        self._on_change(data)
        return True

    async def _read(self) -> dict[str, str] | None:
        try:
            response = await self._core.read_namespaced_config_map(self.name, self.namespace, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        try:
            body = orjson.loads(await response.read())
        finally:
            response.release()
        data = body.get("data") if isinstance(body, dict) else None
        return {str(key): str(value) for key, value in data.items()} if isinstance(data, dict) else {}

    def _note_failure(self, error: Exception) -> None:
        text = f"HTTP {error.status} {error.reason}" if isinstance(error, ApiException) else repr(error)
        if text != self._last_error:
            log.warning("cannot read ConfigMap %s/%s (%s); keeping what was read before, retrying every %.0f s",
                        self.namespace, self.name, text, self.poll_seconds)
            self._last_error = text

    async def start(self) -> None:
        """Read now (a failure is logged, not raised), then keep following until :meth:`stop`."""
        await self.refresh()
        if self._task is None:
            self._task = asyncio.create_task(self._poll(), name=f"nichotplug-configmap-{self.name}")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.refresh()
            except Exception:  # a callback's bug must not stop the following
                log.exception("error while following ConfigMap %s/%s", self.namespace, self.name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

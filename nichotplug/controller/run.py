"""The seam ``nichotplug serve`` uses: start the controller beside the webhooks, stop it on shutdown.

``service.start_controller`` imports this module and calls :func:`start_controller`; everything it
needs comes from the parsed ``serve`` arguments (``--namespace``, else ``$POD_NAMESPACE``) and the
environment (identity ``$POD_NAME``, else the host name).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from kubernetes_asyncio.client import ApiClient

from nichotplug.controller.loop import run_controller
from nichotplug.controller.reconciler import VmCache
from nichotplug.controller.scope import ControllerScope
from nichotplug.kube.leader import default_identity, default_namespace

log = logging.getLogger(__name__)


async def start_controller(
    *, api_client: ApiClient, cluster: VmCache, args: argparse.Namespace,
) -> Callable[[], Awaitable[None]]:
    """Run the controller in a task (leader-elected); returns the coroutine function that stops it."""
    namespace = getattr(args, "namespace", None) or default_namespace()
    identity = default_identity()
    scope = ControllerScope.of(getattr(args, "controller_namespace", None))
    log.info("controller: writing VMs in %s (Lease %s/%s)", scope.describe(), namespace, scope.lease_name)
    task = asyncio.create_task(run_controller(api_client, cluster, namespace=namespace, identity=identity,
                                              lease_name=scope.lease_name, scope=scope),
                               name="nichotplug-controller")

    def report_crash(done: asyncio.Task[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            log.error("the MAC controller stopped: %s", done.exception(), exc_info=done.exception())

    task.add_done_callback(report_crash)

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # cancelling run_controller releases the Lease for the next replica

    return stop

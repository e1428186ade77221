"""``nichotplug serve``: the admission webhooks, the action API and the controller in one process.

Assembly only: every piece is built elsewhere and plugged in here, one small
function per piece (actions, controller, self-managed certificates), each of
which the flags can turn off without touching the others. SIGTERM and SIGINT
drain: ``/readyz`` turns 503, the listeners stop accepting, requests in flight
finish (up to ``DRAIN_SECONDS``), then everything is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from kubernetes_asyncio.client import ApiClient

from nichotplug.actions.aggregated import setup_subresources
from nichotplug.actions.apidocs import APISERVICE
from nichotplug.actions.frontproxy import (
    CONFIGMAP,
    NAMESPACE,
    BadConfigMap,
    FrontProxyAuthenticator,
    config_from_configmap,
)
from nichotplug.actions.http import setup_actions
from nichotplug.certs import CERT_FILE, KEY_FILE
from nichotplug.controller import metrics as controller_metrics
from nichotplug.controller import run as controller_run
from nichotplug.controller.scope import ControllerScope
from nichotplug.kube.cache import ClusterView
from nichotplug.kube.certificates import start_certificate_manager
from nichotplug.kube.configmaps import DEFAULT_POLL_SECONDS, ConfigMapFollower
from nichotplug.kube.view_metrics import VIEW_METRICS
from nichotplug.logs import configure_logging
from nichotplug.rules.cluster import ClusterState
from nichotplug.rules.nic_plans import is_dns1123_label
from nichotplug.serving import (
    DRAIN_SECONDS,
    Readiness,
    add_health_routes,
    drain,
    listening_on,
    start_metrics_runner,
    start_tls_runner,
)
from nichotplug.webhook.codec import MAX_BODY_BYTES
from nichotplug.webhook.http import add_webhook_routes
from nichotplug.webhook.tls import CertReloader

log = logging.getLogger(__name__)

# Something started by a seam that must be stopped on shutdown.
Stopper = Callable[[], Awaitable[None]]


def build_webhook_app(
    cluster: ClusterState,
    *,
    synced: asyncio.Event | None = None,
    tls: CertReloader | None = None,
    readiness: Readiness | None = None,
) -> web.Application:
    """The TLS app: both webhooks, ``/healthz`` and ``/readyz``.

    Ready when ``synced`` is set (the cluster view has listed everything) and
    ``tls`` has a certificate in service; a check that is not given is not
    required. Extra checks go into ``readiness`` (``serve`` adds "not draining").
    Serve it with ``serving.start_tls_runner``, which puts the webhooks' front door before it.
    """
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    readiness = readiness or Readiness()
    if synced is not None:
        readiness.add("cluster view not synced yet", synced.is_set)
    if tls is not None:
        readiness.add("no serving certificate loaded", lambda: tls.loaded)
    add_webhook_routes(app, cluster, synced)
    add_health_routes(app, readiness)
    return app


# ---------------------------------------------------------------- pieces (one function each)


def setup_action_routes(app: web.Application, api_client: ApiClient, args: argparse.Namespace,
                        cluster: ClusterState) -> None:
    """Mount the action API on the TLS app; ``--no-migrate`` leaves hot-plugs to KubeVirt's rollout."""
    setup_actions(app, api_client=api_client, cluster=cluster, migrate=not args.no_migrate)


async def start_subresources(app: web.Application, api_client: ApiClient, args: argparse.Namespace,
                             cluster: ClusterState, tls: CertReloader, *,
                             poll_seconds: float = DEFAULT_POLL_SECONDS) -> Stopper | None:
    """Serve the subresource API if ``--apiservice`` names one; returns the stopper of the ConfigMap follower.

    The front-proxy CA and names come from ``kube-system/extension-apiserver-authentication``, followed
    for rotations: the TLS port then requests client certificates signed by that CA (and still
    accepts connections without one), and the authenticator believes only those certificates.
    """
    if not args.apiservice:
        return None
    if args.apiservice != APISERVICE:
        log.warning("--apiservice %s: the subresources are served as %s whatever the APIService is named",
                    args.apiservice, APISERVICE)
    authenticator = FrontProxyAuthenticator()

    def front_proxy_changed(data: Mapping[str, str] | None) -> None:
        try:
            authenticator.config = config_from_configmap(data)
        except BadConfigMap as error:
            log.error("%s/%s cannot be used (%s); the subresource API refuses every request until it changes",
                      NAMESPACE, CONFIGMAP, error)
            authenticator.config = None
        if authenticator.config is None:
            log.warning("%s/%s names no front-proxy CA: the subresource API answers 401 to every request",
                        NAMESPACE, CONFIGMAP)
        tls.trust_client_ca(authenticator.config.client_ca_pem if authenticator.config else None)

    setup_subresources(app, api_client=api_client, authenticator=authenticator, cluster=cluster,
                       migrate=not args.no_migrate)
    follower = ConfigMapFollower(api_client, NAMESPACE, CONFIGMAP, front_proxy_changed, poll_seconds=poll_seconds)
    await follower.start()
    return follower.stop


async def start_controller(api_client: ApiClient, cluster: ClusterView,
                           args: argparse.Namespace) -> Stopper | None:
    """Start the leader-elected MAC controller unless ``--no-controller``; returns its stopper.

    ``nichotplug_leader`` exists from the start, 0 until this replica leads (and always 0 with the
    controller off), so "no replica leads" is a query, not a missing series.
    """
    scope = ControllerScope.of(args.controller_namespace)
    controller_metrics.LEADER.labels(name=scope.lease_name).set(0)
    if args.no_controller:
        log.info("controller: off (--no-controller): nichotplug writes no VM on its own")
        return None
    return await controller_run.start_controller(api_client=api_client, cluster=cluster, args=args)


async def start_self_managed_certs(api_client: ApiClient, args: argparse.Namespace) -> Stopper | None:
    """Create/rotate the serving certificate in a Secret (``nichotplug.kube.certificates``) if asked.

    The manager writes the pair to ``--tls-cert-file``/``--tls-key-file`` (a private temporary folder
    when they are not given, filled into ``args`` here), where the CertReloader picks up each rotation.
    """
    if not args.self_managed_certs:
        return None
    if not args.tls_cert_file:
        folder = Path(tempfile.mkdtemp(prefix="nichotplug-tls-"))
        args.tls_cert_file, args.tls_key_file = str(folder / CERT_FILE), str(folder / KEY_FILE)
    return await start_certificate_manager(api_client=api_client, args=args)


# ---------------------------------------------------------------- serve


def _controller_args_problem(args: argparse.Namespace) -> str | None:
    if args.controller_namespace and args.no_controller:
        return "--controller-namespace limits the controller, which --no-controller turns off: give one of them"
    for namespace in args.controller_namespace:
        if not is_dns1123_label(namespace):
            return f"--controller-namespace {namespace!r} is not a namespace name (lowercase letters, digits, '-')"
    return None


def _check_args(args: argparse.Namespace) -> str | None:
    problem = _controller_args_problem(args)
    if problem:
        return problem
    if args.shutdown_delay < 0:
        return f"--shutdown-delay {args.shutdown_delay:g} must not be negative"
    if bool(args.tls_cert_file) != bool(args.tls_key_file):
        return "give both --tls-cert-file and --tls-key-file, or neither"
    if not args.tls_cert_file and not args.self_managed_certs:
        return "give --tls-cert-file and --tls-key-file (or --self-managed-certs): webhooks are served over TLS only"
    for name in ("port", "metrics_port"):
        port = getattr(args, name)
        if not 0 <= port <= 65535 or (name == "port" and port == 0):
            return f"--{name.replace('_', '-')} {port} is not a usable port"
    return None


async def freeze_heap_when_synced(view: ClusterView) -> None:
    """Once the cluster view holds the whole cluster, say so, and stop the cyclic GC from walking it.

    The view of a big cluster is millions of long-lived objects; every full
    collection would traverse all of them, a pause that lands on some webhook
    request's latency. ``gc.freeze`` moves what is alive now to the permanent
    generation (reference counting still frees it); later changes are tracked as usual.
    """
    await view.synced.wait()
    counts = view.counts()
    log.info("cluster view synced: %s",
             ", ".join(f"{count} {'MACs' if kind == 'macs' else kind + 's'}" for kind, count in counts.items()))
    gc.collect()
    gc.freeze()
    log.debug("%d objects moved out of the cyclic GC's reach", gc.get_freeze_count())


async def serve(args: argparse.Namespace, stop: asyncio.Event, hurry: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set, then drain and close everything that was started.

    Between the two, ``/readyz`` fails and everything keeps answering for ``args.shutdown_delay``
    seconds, or until ``hurry`` is set (SIGINT: someone at a terminal). After SIGTERM the pod stays in
    the Service's endpoints until the endpoint controller and every kube-proxy have seen it go; closing
    the port at once would refuse webhook calls still routed here, and VM writes would fail
    (validation) or go through without MACs (mutation).
    """
    from nichotplug.kube.client import load_api_client

    cleanups: list[Stopper] = []
    try:
        api_client = await load_api_client(args.kubeconfig, args.context)
        cleanups.append(api_client.close)
        cert_stopper = await start_self_managed_certs(api_client, args)
        if cert_stopper is not None:
            cleanups.append(cert_stopper)
        tls = CertReloader(args.tls_cert_file, args.tls_key_file)
        await tls.start()
        cleanups.append(tls.stop)
        view = ClusterView(api_client)
        await view.start()
        cleanups.append(view.stop)
        VIEW_METRICS.view = view
        freezer = asyncio.create_task(freeze_heap_when_synced(view), name="nichotplug-gc-freeze")
        cleanups.append(lambda: _cancel(freezer))

        draining = False
        readiness = Readiness()
        readiness.add("shutting down", lambda: not draining)
        app = build_webhook_app(view, synced=view.synced, tls=tls, readiness=readiness)
        setup_action_routes(app, api_client, args, view)
        subresources_stopper = await start_subresources(app, api_client, args, view, tls)
        if subresources_stopper is not None:
            cleanups.append(subresources_stopper)
        controller_stopper = await start_controller(api_client, view, args)
        if controller_stopper is not None:
            cleanups.append(controller_stopper)

        # Runners are cleaned up first (last in), so requests drain while the view still answers them.
        metrics_where = "off (--metrics-port 0)"
        if args.metrics_port:
            metrics_runner = await start_metrics_runner(args.host, args.metrics_port)
            cleanups.append(metrics_runner.cleanup)
            metrics_where = ", ".join(f"http://{address}/metrics" for address in listening_on(metrics_runner))
        runner, door = await start_tls_runner(app, args.host, args.port, tls.context, shutdown_timeout=2.0)
        cleanups.append(lambda: drain(runner, door))
        log.info("serving webhooks and actions on %s; metrics on %s",
                 ", ".join(f"https://{address}" for address in listening_on(runner)), metrics_where)

        await stop.wait()
        draining = True
        await _keep_answering(args.shutdown_delay, hurry)
        log.info("stopping: draining requests in flight (up to %.0f s)", DRAIN_SECONDS)
    finally:
        for cleanup in reversed(cleanups):
            try:
                await cleanup()
            except Exception:
                log.exception("error while shutting down")
        log.info("stopped")


async def _keep_answering(seconds: float, hurry: asyncio.Event | None) -> None:
    """Serve on, not ready, for ``seconds`` or until ``hurry`` is set."""
    if seconds <= 0:
        return
    log.info("stopping: /readyz fails from now on; still answering for %.1f s while this pod leaves the "
             "Service's endpoints", seconds)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for((hurry or asyncio.Event()).wait(), seconds)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop when installed (it answers webhooks noticeably faster), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run_until_signal(main: Callable[[asyncio.Event, asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Run ``main(stop, hurry)`` on the fastest loop available: SIGTERM (Kubernetes stopping the pod)
    sets ``stop``; SIGINT (Ctrl-C) sets both."""

    async def wrapper() -> None:
        stop, hurry = asyncio.Event(), asyncio.Event()

        def interrupted() -> None:
            hurry.set()
            stop.set()

        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, interrupted)
        await main(stop, hurry)

    with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
        runner.run(wrapper())


def run_serve(args: argparse.Namespace) -> int:
    """Entry point of ``nichotplug serve`` (see nichotplug.cli for the arguments)."""
    configure_logging(str(args.log_level).upper(), args.log_format)
    problem = _check_args(args)
    if problem:
        print(f"nichotplug serve: {problem}", file=sys.stderr)
        return 2
    try:
        run_until_signal(lambda stop, hurry: serve(args, stop, hurry))
    except Exception as error:  # a startup failure: one clear line, not a traceback
        log.debug("serve failed", exc_info=True)
        print(f"nichotplug serve: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


# start_tls_runner lives in nichotplug.serving; importable from here too, with the rest of serve's pieces.
__all__ = ["build_webhook_app", "run_serve", "serve", "setup_action_routes", "start_controller", "start_subresources",
           "start_tls_runner"]

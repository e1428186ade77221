"""The admission handler: the aiohttp shell around the engine, its HTTP-level checks, metrics and log.

``POST /v1/webhook/mutation`` and ``POST /v1/webhook/validation`` answer every
usable call with HTTP 200 and a full AdmissionReview; an unusable call (wrong
content type, body too large, not an AdmissionReview) gets a 4xx with a
``metav1.Status`` naming the problem.

The port they are served on (TLS, the front door that hands these two paths straight to
their handlers, the probes, the drain) belongs to ``nichotplug.serving``; the handlers are
recorded under ``ADMISSION_HANDLERS`` for it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from nichotplug.rules.cluster import ClusterState
from nichotplug.rules.decision import Reason
from nichotplug.webhook import metrics
from nichotplug.webhook.codec import (
    JSON_CONTENT_TYPE,
    MAX_BODY_BYTES,
    BadReview,
    decode_review,
    encode_allowed,
    encode_error,
    encode_review,
)
from nichotplug.webhook.engine import Verdict, is_judged, not_synced, review
from nichotplug.webhook.fastdecode import allowed_create
from nichotplug.webhook.registration import MUTATION_PATH, VALIDATION_PATH
from nichotplug.webhook.review import AdmissionRequest, WebhookName

log = logging.getLogger(__name__)

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
# path -> handler of each admission webhook mounted on an app, for the port's front door (nichotplug.serving).
ADMISSION_HANDLERS = web.AppKey("nichotplug_admission_handlers", dict[str, Handler])

# The paths are declared with the webhook registrations, so the chart and the server cannot disagree.
WEBHOOK_PATHS: dict[WebhookName, str] = {"mutation": MUTATION_PATH, "validation": VALIDATION_PATH}

_KNOWN_REASONS = metrics.known_reasons()

# Passed as headers rather than content_type=: aiohttp then skips re-assembling the media type.
_JSON_HEADERS = {hdrs.CONTENT_TYPE: JSON_CONTENT_TYPE}

# How long a request that arrives before the cluster view's first list may wait for it. Well inside
# the API server's timeout (the chart's default is 5 s), so a brief start-up window costs a short
# delay rather than a refusal.
SYNC_WAIT_SECONDS = 3.0

# The API server puts its deadline for the call in the URL (``?timeout=10s``, a Go duration) and
# never reads an answer that comes later: a request that waits for the sync stops waiting this long
# before it, so the user gets our 503 instead of the API server's "context deadline exceeded".
DEADLINE_MARGIN_SECONDS = 0.5
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")  # a number and its unit
_GO_DURATION = re.compile(f"(?:{_GO_DURATION_PART.pattern})+")
_GO_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration_seconds(text: str) -> float | None:
    """The seconds of a Go ``time.Duration`` string (``10s``, ``1m30s``, ``500ms``); None for other text."""
    if not _GO_DURATION.fullmatch(text):
        return None
    return sum(float(number) * _GO_UNIT_SECONDS[unit] for number, unit in _GO_DURATION_PART.findall(text))


class WebhookHandler:
    """One webhook endpoint (mutation or validation) bound to the cluster view it consults."""

    def __init__(self, webhook: WebhookName, cluster: ClusterState, synced: asyncio.Event | None = None,
                 sync_wait_seconds: float = SYNC_WAIT_SECONDS) -> None:
        self.webhook: WebhookName = webhook
        self.cluster = cluster
        self.synced = synced  # None: the cluster is complete from the start (a static view)
        self.sync_wait_seconds = sync_wait_seconds
        self._stats = metrics.STATS[webhook]  # plain-int bookkeeping: no lock per request

    async def handle(self, request: web.BaseRequest) -> web.Response:
        started = time.perf_counter()
        stats = self._stats
        stats.in_flight += 1
        try:
            try:
                body = await _read_body(request)
                fast = self._allowed_create(body)
                if fast is not None:
                    return fast
                admission = decode_review(body)
            except BadReview as error:
                return self._bad_request(request, error)
            if await self._cluster_is_read(request, admission):
                verdict = review(self.webhook, admission, self.cluster)
            else:
                verdict = not_synced(self.webhook, admission)
            body = encode_review(verdict.response)
            self._count(admission, verdict, time.perf_counter() - started)
            stats.count_code("200")
            return web.Response(body=body, headers=_JSON_HEADERS)
        except ConnectionResetError:
            # The caller went away mid-request (the API server timed out or restarted): nobody is left
            # to answer, and it is no bug of ours. The API server applies the failure policy itself.
            log.info("%s webhook: the caller closed the connection before the answer was ready", self.webhook)
            stats.count_code("499")
            return web.Response(status=499)
        except Exception:
            # A bug in this layer (the engine already contains the rules' own): answer a Status the API
            # server can show; it then applies the webhook's failurePolicy (validation fails closed).
            log.exception("%s webhook: internal error answering a request", self.webhook)
            stats.count_code("500")
            internal = BadReview(500, "internal-error", "nichotplug could not answer this review (internal error)")
            return web.Response(status=500, body=encode_error(internal), headers=_JSON_HEADERS)
        finally:
            stats.in_flight -= 1
            stats.observe_latency(time.perf_counter() - started)

    def _allowed_create(self, body: bytes) -> web.Response | None:
        """The answer of the validating webhook's fast route (see ``fastdecode``), or None.

        Only an allow is answered here, only once the cluster view is complete, and only when allows
        are not logged (at DEBUG the ordinary route logs each one); everything else, and any surprise
        in the route itself, goes the ordinary way, which decides and words it.
        """
        if (self.webhook != "validation" or not (self.synced is None or self.synced.is_set())
                or log.isEnabledFor(logging.DEBUG)):
            return None
        try:
            uid = allowed_create(body, self.cluster)
        except Exception:
            log.exception("validation fast route failed; the ordinary route decides")
            return None
        if uid is None:
            return None
        self._stats.fast_allows += 1  # a 200 and a FAST_ALLOWED_DECISION (see WebhookStats)
        return web.Response(body=encode_allowed(uid), headers=_JSON_HEADERS)

    async def _cluster_is_read(self, request: web.BaseRequest, admission: AdmissionRequest) -> bool:
        """Whether the cluster view is complete enough to judge this request (waiting a little for it)."""
        if self.synced is None or self.synced.is_set() or not is_judged(admission):
            return True
        wait = self._sync_wait(request)
        if wait <= 0:
            return False
        try:
            await asyncio.wait_for(self.synced.wait(), wait)
        except TimeoutError:
            return False
        return True

    def _sync_wait(self, request: web.BaseRequest) -> float:
        """``sync_wait_seconds``, cut short to end before the API server's deadline for this call."""
        deadline = go_duration_seconds(request.query.get("timeout", ""))
        if deadline is None:
            return self.sync_wait_seconds
        return min(self.sync_wait_seconds, deadline - DEADLINE_MARGIN_SECONDS)

    def _bad_request(self, request: web.BaseRequest, error: BadReview) -> web.Response:
        metrics.BAD_REQUESTS.labels(self.webhook, error.reason).inc()
        self._stats.count_code(str(error.http_status))
        log.warning(
            "%s webhook: unusable call from %s answered %d: %s",
            self.webhook, request.remote, error.http_status, error.message,
        )
        return web.Response(status=error.http_status, body=encode_error(error), headers=_JSON_HEADERS)

    def _count(self, admission: AdmissionRequest, verdict: Verdict, seconds: float) -> None:
        reason = verdict.reason if verdict.reason in _KNOWN_REASONS else metrics.REASON_OTHER
        # Bounded: operations, results and reasons are all closed sets.
        self._stats.count_decision((admission["operation"], verdict.result, reason))
        # Allowed-unchanged is the hot path: logged at DEBUG so a busy cluster's log is not all webhook.
        # An allowed hot-plug is rare and worth a line: it changes a running VM's NICs.
        quiet = verdict.result == metrics.RESULT_ALLOWED and verdict.reason != Reason.HOTPLUG_ALLOWED
        level = logging.DEBUG if quiet else logging.INFO
        if log.isEnabledFor(level):
            _log_verdict(level, self.webhook, admission, verdict, seconds)


def _log_verdict(level: int, webhook: WebhookName, admission: AdmissionRequest, verdict: Verdict,
                 seconds: float) -> None:
    kind = admission["kind"]["kind"]
    namespace, name = admission.get("namespace", ""), admission.get("name", "")
    user = admission.get("userInfo", {}).get("username", "")
    status = verdict.response.get("status")
    detail = f": {status['code']} {status['message']}" if status else ""
    log.log(
        level, "%s %s %s %s/%s by %s (uid %s): %s (%s)%s",
        webhook, admission["operation"], kind, namespace, name, user, admission["uid"],
        verdict.result, verdict.reason, detail,
        # For structured log handlers; prefixed because LogRecord already owns "name".
        extra={"admission_webhook": webhook, "admission_object": kind, "admission_namespace": namespace,
               "admission_name": name, "admission_user": user, "admission_uid": admission["uid"],
               "admission_operation": admission["operation"], "admission_decision": verdict.result,
               "admission_reason": verdict.reason, "admission_latency_seconds": seconds},
    )


async def _read_body(request: web.BaseRequest) -> bytes:
    """The body, after the checks that need no reading: content type, then size."""
    # The API server sends exactly "application/json": compare the raw header before paying for
    # aiohttp's full media-type parse (which also accepts parameters such as a charset).
    if request.headers.get(hdrs.CONTENT_TYPE) != JSON_CONTENT_TYPE and request.content_type != JSON_CONTENT_TYPE:
        raise BadReview(
            415, "content-type", f"Content-Type must be {JSON_CONTENT_TYPE}, got {request.content_type or 'none'!r}"
        )
    length = request.content_length  # parsed from the header at each access
    if length is not None and length > MAX_BODY_BYTES:
        raise _too_large()
    try:
        # The app's client_max_size is MAX_BODY_BYTES, so a chunked body without a length stops here too.
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large() from None


def _too_large() -> BadReview:
    return BadReview(
        413, "too-large", f"request body larger than {MAX_BODY_BYTES} bytes; an AdmissionReview is never that big"
    )


def add_webhook_routes(app: web.Application, cluster: ClusterState, synced: asyncio.Event | None = None,
                       *, sync_wait_seconds: float = SYNC_WAIT_SECONDS) -> None:
    """Mount both admission endpoints on ``app``; with ``synced``, nothing is judged before it is set.

    They are also recorded under ``ADMISSION_HANDLERS``, where ``serving.FrontDoor`` finds them.
    """
    handlers: dict[str, Handler] = {}
    for webhook, path in WEBHOOK_PATHS.items():
        handlers[path] = WebhookHandler(webhook, cluster, synced, sync_wait_seconds).handle
        app.router.add_post(path, handlers[path])
    app[ADMISSION_HANDLERS] = handlers

"""Prometheus metrics of the admission webhooks, and the plain-HTTP ``/metrics`` app.

Names follow controller-runtime's webhook metrics so existing dashboards read
them. Every label value that can occur is created at import ("pre-seeded"), so
a series exists with value 0 before its first event and ``rate()`` works from
the first scrape. Everything lives in prometheus-client's default REGISTRY.
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from nichotplug.rules.decision import ALLOW_REASONS, DENY_REASONS, REASONS
from nichotplug.webhook.review import WEBHOOKS

# Results of one admission decision (the ``result`` label).
RESULT_ALLOWED = "allowed"  # allowed unchanged
RESULT_PATCHED = "patched"  # allowed with a JSON Patch (mutation only)
RESULT_DENIED = "denied"  # a rule refused the operation
RESULT_ERROR = "error"  # a rule raised: denied (validation) or allowed unpatched (mutation)
RESULTS = (RESULT_ALLOWED, RESULT_PATCHED, RESULT_DENIED, RESULT_ERROR)

# Reasons the webhook layer itself gives; all but "other" are also rules.REASONS slugs.
REASON_NOT_JUDGED = "not-judged"  # not a VirtualMachine CREATE/UPDATE: allowed untouched
REASON_INVALID_OBJECT = "invalid-object"  # validation: the object cannot be read as a VirtualMachine
REASON_UNREADABLE_OBJECT = "unreadable-object"  # mutation: same, left for validation to refuse
REASON_RULE_ERROR = "internal-error"  # a rule raised an unexpected exception
REASON_OTHER = "other"  # a reason slug the rules did not declare (keeps the label bounded)
REASON_NOT_SYNCED = "not-synced"  # the cluster view has not finished its first list: nothing to judge against
WEBHOOK_REASONS = (REASON_NOT_JUDGED, REASON_INVALID_OBJECT, REASON_UNREADABLE_OBJECT, REASON_RULE_ERROR,
                   REASON_NOT_SYNCED, REASON_OTHER)

# Operations as a label: the four Kubernetes ones; anything else cannot get past the codec.
OPERATION_LABELS = ("CREATE", "UPDATE", "DELETE", "CONNECT")
HTTP_CODES = ("200", "400", "413", "415", "500")
BAD_REQUEST_REASONS = (
    "empty-body", "malformed-json", "not-a-review", "missing-field", "bad-field", "content-type", "too-large",
)

REQUESTS = Counter(
    "nichotplug_webhook_requests", "Admission webhook HTTP requests by HTTP status code.", ["webhook", "code"]
)
LATENCY = Histogram(
    "nichotplug_webhook_latency_seconds",
    "Time to answer an admission webhook request, from the handler's start to the encoded answer.",
    ["webhook"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
IN_FLIGHT = Gauge("nichotplug_webhook_requests_in_flight", "Admission requests being answered now.", ["webhook"])
DECISIONS = Counter(
    "nichotplug_admission_decisions",
    "Admission decisions by operation, result and the rule's reason slug.",
    ["webhook", "operation", "result", "reason"],
)
BAD_REQUESTS = Counter(
    "nichotplug_webhook_bad_requests",
    "Webhook calls answered with an HTTP 4xx because the call itself was unusable.",
    ["webhook", "reason"],
)
RULE_ERRORS = Counter(
    "nichotplug_webhook_rule_errors", "Admission rules that raised an unexpected exception.", ["webhook"]
)
TLS_RELOADS = Counter(
    "nichotplug_webhook_tls_reloads", "Serving certificate (re)loads from the files, by result.", ["result"]
)


def known_reasons() -> frozenset[str]:
    """Every reason label value that is pre-seeded (anything else is counted as ``other``)."""
    return frozenset(REASONS) | frozenset(WEBHOOK_REASONS)


def _decision_series() -> Iterator[tuple[str, str, str, str]]:
    """The (webhook, operation, result, reason) combinations that can occur; only these are pre-seeded."""
    judged = ("CREATE", "UPDATE")
    for webhook in WEBHOOKS:
        for operation in judged:
            results = (RESULT_ALLOWED, RESULT_PATCHED) if webhook == "mutation" else (RESULT_ALLOWED,)
            for reason in (*ALLOW_REASONS, REASON_INVALID_OBJECT if webhook == "validation" else REASON_OTHER):
                for result in results:
                    yield webhook, operation, result, reason
            if webhook == "validation":
                for reason in (*DENY_REASONS, REASON_OTHER):
                    yield webhook, operation, RESULT_DENIED, reason
            yield webhook, operation, RESULT_ERROR, REASON_RULE_ERROR
            not_synced = RESULT_ALLOWED if webhook == "mutation" else RESULT_DENIED
            yield webhook, operation, not_synced, REASON_NOT_SYNCED
        for operation in OPERATION_LABELS:
            yield webhook, operation, RESULT_ALLOWED, REASON_NOT_JUDGED


def seed() -> None:
    """Create every label combination that can occur, with value 0."""
    for webhook in WEBHOOKS:
        IN_FLIGHT.labels(webhook)
        LATENCY.labels(webhook)
        RULE_ERRORS.labels(webhook)
        for code in HTTP_CODES:
            REQUESTS.labels(webhook, code)
        for bad in BAD_REQUEST_REASONS:
            BAD_REQUESTS.labels(webhook, bad)
    for labels in _decision_series():
        DECISIONS.labels(*labels)
    for result in ("success", "failure"):
        TLS_RELOADS.labels(result)


async def _metrics(_: web.Request) -> web.Response:
    # generate_latest walks every series; with a few hundred it takes well under a millisecond.
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


def metrics_app() -> web.Application:
    """The plain-HTTP app serving ``GET /metrics`` (on its own port, never on the TLS one)."""
    app = web.Application()
    app.router.add_get("/metrics", _metrics)
    return app


seed()

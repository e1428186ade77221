"""Prometheus metrics of the admission webhooks (``serving.metrics_app`` serves them on ``/metrics``).

Names follow controller-runtime's webhook metrics so existing dashboards read
them. Every label value that can occur is created at import ("pre-seeded"), so
a series exists with value 0 before its first event and ``rate()`` works from
the first scrape. Everything lives in prometheus-client's default REGISTRY; the four metrics every
request touches are plain ints exported by a collector (see :class:`WebhookStats`).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from itertools import accumulate

from prometheus_client import REGISTRY, Counter, Gauge, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from nichotplug.rules.decision import DENY_REASONS, REASONS, Reason
from nichotplug.webhook.review import WEBHOOKS

# Results of one admission decision (the ``result`` label).
RESULT_ALLOWED = "allowed"  # allowed unchanged
RESULT_PATCHED = "patched"  # allowed with a JSON Patch (mutation only)
RESULT_DENIED = "denied"  # a rule refused the operation
RESULT_ERROR = "error"  # a rule raised: denied (validation) or allowed unpatched (mutation)
RESULTS = (RESULT_ALLOWED, RESULT_PATCHED, RESULT_DENIED, RESULT_ERROR)

# Reasons the webhook layer itself gives; all but "other" are also rules.REASONS slugs.
REASON_NOT_JUDGED = Reason.NOT_JUDGED
REASON_INVALID_OBJECT = Reason.INVALID_OBJECT
REASON_UNREADABLE_OBJECT = Reason.UNREADABLE_OBJECT
REASON_RULE_ERROR = Reason.INTERNAL_ERROR
REASON_OTHER = Reason.OTHER
REASON_NOT_SYNCED = Reason.NOT_SYNCED
WEBHOOK_REASONS = (REASON_NOT_JUDGED, REASON_INVALID_OBJECT, REASON_UNREADABLE_OBJECT, REASON_RULE_ERROR,
                   REASON_NOT_SYNCED, REASON_OTHER)

# The decision of every answer of the validating webhook's quickest route: a CREATE allowed unchanged.
FAST_ALLOWED_DECISION = ("CREATE", RESULT_ALLOWED, "allowed")

# Operations as a label: the four Kubernetes ones; anything else cannot get past the codec.
OPERATION_LABELS = ("CREATE", "UPDATE", "DELETE", "CONNECT")
HTTP_CODES = ("200", "400", "413", "415", "499", "500")  # 499: the caller left before the answer
BAD_REQUEST_REASONS = (
    "empty-body", "malformed-json", "not-a-review", "missing-field", "bad-field", "content-type", "too-large",
)

# The four metrics every request touches are kept by WebhookStats and exported by HotPathCollector.
REQUESTS_NAME, REQUESTS_HELP = "nichotplug_webhook_requests", "Admission webhook HTTP requests by HTTP status code."
LATENCY_NAME = "nichotplug_webhook_latency_seconds"
LATENCY_HELP = "Time to answer an admission webhook request, from the handler's start to the encoded answer."
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
IN_FLIGHT_NAME, IN_FLIGHT_HELP = "nichotplug_webhook_requests_in_flight", "Admission requests being answered now."
DECISIONS_NAME = "nichotplug_admission_decisions"
DECISIONS_HELP = "Admission decisions by operation, result and the rule's reason slug."

class WebhookStats:
    """One webhook's per-request bookkeeping, in plain ints: no lock, no child lookup per request.

    prometheus-client takes a lock for every ``inc``/``observe``; six of those per request were a
    measurable share of the validating webhook's cost. Only the event loop's thread writes these
    (every handler runs on it), and a scrape only reads them, so plain ints are safe. The
    :class:`HotPathCollector` exports them under the same names, types and labels as the
    prometheus-client objects they replace.
    """

    __slots__ = ("bucket_counts", "codes", "decisions", "fast_allows", "in_flight", "latency_sum", "webhook")

    def __init__(self, webhook: str) -> None:
        self.webhook = webhook
        self.in_flight = 0
        self.codes: dict[str, int] = dict.fromkeys(HTTP_CODES, 0)
        self.decisions: dict[tuple[str, str, str], int] = {
            (operation, result, reason): 0
            for hook, operation, result, reason in _decision_series() if hook == webhook
        }
        self.bucket_counts = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, not cumulative; last is +Inf
        self.latency_sum = 0.0
        # CREATEs the validating webhook's quickest route allowed: each is a 200 and a decision
        # FAST_ALLOWED_DECISION, added to those counts when they are read (one increment per request).
        self.fast_allows = 0

    def observe_latency(self, seconds: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = "less or equal").
        self.bucket_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def count_code(self, code: str) -> None:
        self.codes[code] = self.codes.get(code, 0) + 1

    def count_decision(self, key: tuple[str, str, str]) -> None:
        self.decisions[key] = self.decisions.get(key, 0) + 1

    def code_counts(self) -> dict[str, int]:
        """Answers by HTTP code, the quickest route's included."""
        return {**self.codes, "200": self.codes.get("200", 0) + self.fast_allows}

    def decision_counts(self) -> dict[tuple[str, str, str], int]:
        """Decisions by (operation, result, reason), the quickest route's included."""
        return {**self.decisions,
                FAST_ALLOWED_DECISION: self.decisions.get(FAST_ALLOWED_DECISION, 0) + self.fast_allows}


class HotPathCollector(Collector):
    """Exports every :class:`WebhookStats` as the four request metrics, pre-seeded like the rest."""

    def __init__(self, stats: Mapping[str, WebhookStats]) -> None:
        self._stats = stats

    def describe(self) -> Iterator[Metric]:
        # Names only (no values): lets the registry check for clashes without reading the counts.
        yield CounterMetricFamily(REQUESTS_NAME, REQUESTS_HELP, labels=["webhook", "code"])
        yield HistogramMetricFamily(LATENCY_NAME, LATENCY_HELP, labels=["webhook"])
        yield GaugeMetricFamily(IN_FLIGHT_NAME, IN_FLIGHT_HELP, labels=["webhook"])
        yield CounterMetricFamily(DECISIONS_NAME, DECISIONS_HELP, labels=["webhook", "operation", "result", "reason"])

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(REQUESTS_NAME, REQUESTS_HELP, labels=["webhook", "code"])
        latency = HistogramMetricFamily(LATENCY_NAME, LATENCY_HELP, labels=["webhook"])
        in_flight = GaugeMetricFamily(IN_FLIGHT_NAME, IN_FLIGHT_HELP, labels=["webhook"])
        decisions = CounterMetricFamily(DECISIONS_NAME, DECISIONS_HELP,
                                        labels=["webhook", "operation", "result", "reason"])
        for webhook, stats in self._stats.items():
            for code, value in stats.code_counts().items():
                requests.add_metric([webhook, code], value)
            latency.add_metric([webhook], _cumulative_buckets(stats.bucket_counts), stats.latency_sum)
            in_flight.add_metric([webhook], stats.in_flight)
            for key, value in stats.decision_counts().items():
                decisions.add_metric([webhook, *key], value)
        yield from (requests, latency, in_flight, decisions)


# The ``le`` label of each bucket, spelled as prometheus-client's own Histogram spells it.
_BUCKET_LABELS: tuple[str, ...] = tuple(
    floatToGoString(bound) for bound in (*LATENCY_BUCKETS, math.inf)  # type: ignore[no-untyped-call]
)


def _cumulative_buckets(counts: list[int]) -> list[tuple[str, float]]:
    """Prometheus buckets (``le`` label text, cumulative count) from per-bucket counts."""
    return [(label, float(total)) for label, total in zip(_BUCKET_LABELS, accumulate(counts), strict=True)]


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
# Set by the TLS reloader from the certificate it put into service, whoever made it (self-managed,
# cert-manager, a mounted Secret): the figure an expiry alert needs.
CERT_EXPIRY = Gauge(
    "nichotplug_serving_certificate_expiry_timestamp_seconds",
    "When the serving certificate this replica serves with expires (Unix time).",
)


def known_reasons() -> frozenset[str]:
    """Every reason label value that is pre-seeded (anything else is counted as ``other``)."""
    return frozenset(REASONS) | frozenset(WEBHOOK_REASONS)


# Denial reasons a CREATE can get: a new VM is never a hot-plug edit, so only the MAC and object rules apply.
CREATE_DENY_REASONS = ("invalid-object", "invalid-mac", "duplicate-mac", "mac-collision")


def _decision_series() -> Iterator[tuple[str, str, str, str]]:
    """The (webhook, operation, result, reason) combinations that can occur; only these are pre-seeded.

    Anything else is still counted when it happens (``WebhookStats`` adds the key), but a series that
    cannot occur would only mislead a dashboard.
    """
    for webhook in WEBHOOKS:
        for operation in OPERATION_LABELS:
            yield webhook, operation, RESULT_ALLOWED, REASON_NOT_JUDGED
        for operation in ("CREATE", "UPDATE"):
            yield webhook, operation, RESULT_ERROR, REASON_RULE_ERROR
            yield from ((webhook, operation, result, reason) for result, reason in _judged(webhook, operation))


def _judged(webhook: str, operation: str) -> Iterator[tuple[str, str]]:
    """(result, reason) of a judged CREATE or UPDATE, as ``rules.admission`` and ``engine`` answer."""
    if webhook == "mutation":
        yield from ((RESULT_ALLOWED, reason) for reason in ("no-change", REASON_UNREADABLE_OBJECT, REASON_NOT_SYNCED))
        yield RESULT_PATCHED, "macs-assigned"
        yield RESULT_DENIED, REASON_RULE_ERROR  # no MAC could be generated
        if operation == "UPDATE":
            yield RESULT_ALLOWED, Reason.DELETING
        return
    yield RESULT_ALLOWED, Reason.ALLOWED
    yield RESULT_DENIED, REASON_NOT_SYNCED
    if operation == "CREATE":
        yield from ((RESULT_DENIED, reason) for reason in CREATE_DENY_REASONS)
        return
    yield from ((RESULT_ALLOWED, reason) for reason in (Reason.HOTPLUG_ALLOWED, Reason.DELETING))
    yield from ((RESULT_DENIED, reason) for reason in DENY_REASONS if reason != REASON_RULE_ERROR)


def seed() -> None:
    """Create every label combination that can occur, with value 0 (WebhookStats seeds its own)."""
    for webhook in WEBHOOKS:
        RULE_ERRORS.labels(webhook)
        for bad in BAD_REQUEST_REASONS:
            BAD_REQUESTS.labels(webhook, bad)
    for result in ("success", "failure"):
        TLS_RELOADS.labels(result)


# No ``_created`` series: a third of an idle service's lines, and nothing we chart reads them.
# prometheus-client checks this switch when it collects, so it covers every module's metrics.
disable_created_metrics()  # type: ignore[no-untyped-call]

# One WebhookStats per webhook for the whole process, exported through the default registry.
STATS: dict[str, WebhookStats] = {webhook: WebhookStats(webhook) for webhook in WEBHOOKS}
REGISTRY.register(HotPathCollector(STATS))
seed()

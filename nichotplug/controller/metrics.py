"""Prometheus metrics of the controller (default registry), named after controller-runtime's.

Label values that are known up front are pre-seeded so dashboards and alerts see zeros, not gaps.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

RECONCILE_TOTAL = Counter(
    "nichotplug_reconcile_total",
    "Reconciles by controller and result (success, requeue, conflict, denied, error, skipped).",
    ["controller", "result"],
)
RECONCILE_TIME = Histogram(
    "nichotplug_reconcile_time_seconds",
    "Time one reconcile took, by controller.",
    ["controller"],
)
WORKQUEUE_DEPTH = Gauge("nichotplug_workqueue_depth", "Keys waiting in the work queue.", ["name"])
WORKQUEUE_RETRIES = Counter(
    "nichotplug_workqueue_retries_total", "Rate-limited re-queues (backoff retries) of the work queue.", ["name"]
)
LEADER = Gauge("nichotplug_leader", "1 while this replica holds the controller Lease, else 0 (also with the "
               "controller off).", ["name"])
MAC_BACKFILLS = Counter(
    "nichotplug_mac_backfills_total", "Interface MACs written from the observed-MAC annotation into a VM spec."
)
OBSERVED_MAC_WRITES = Counter(
    "nichotplug_observed_mac_annotation_writes_total", "Writes of the observed-MAC annotation onto a VM."
)


class AuditGauge(Collector):
    """A gauge with no sample until the first audit sets it.

    ``nichotplug_duplicate_macs 0`` would read as "the audit found none"; with the controller off (or
    before its first audit, or on a replica that never led) no audit ran, so nothing is exported.
    """

    def __init__(self, name: str, documentation: str) -> None:
        self._name, self._documentation = name, documentation
        self._value: float | None = None

    def set(self, value: float) -> None:
        self._value = value

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self._name, self._documentation)

    def collect(self) -> Iterator[Metric]:
        if self._value is not None:
            yield GaugeMetricFamily(self._name, self._documentation, value=self._value)


DUPLICATE_MACS = AuditGauge(
    "nichotplug_duplicate_macs",
    "MAC addresses used by more than one VM interface in the same cluster network, as the last audit found.",
)
REGISTRY.register(DUPLICATE_MACS)
ANNOTATION_ERRORS = Counter(
    "nichotplug_mac_annotation_errors_total",
    "Reconciles that found an observed-MAC annotation that does not parse.",
)
DENIED_WRITES = Counter(
    "nichotplug_controller_writes_denied_total",
    "Controller writes an admission webhook (or the API server) refused, by write kind.",
    ["write"],
)

CONTROLLER_NAME = "mac"
RESULTS = ("success", "requeue", "conflict", "denied", "error", "skipped")
WRITE_KINDS = ("annotation", "backfill")


def preseed() -> None:
    """Create every known label combination so each series exists (at zero) from the start."""
    for result in RESULTS:
        RECONCILE_TOTAL.labels(controller=CONTROLLER_NAME, result=result)
    RECONCILE_TIME.labels(controller=CONTROLLER_NAME)
    for write in WRITE_KINDS:
        DENIED_WRITES.labels(write=write)


preseed()

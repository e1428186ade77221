"""How current the cluster view is, for Prometheus: a replica whose watches broke keeps judging MAC
collisions against what it saw last, and only these series show it.

Readiness deliberately does not follow them: with the validating webhook failing closed, a replica
that stopped being ready over a watch problem would turn it into a cluster-wide refusal of VM writes.
Alert instead, e.g. on ``time() - nichotplug_cluster_view_last_contact_timestamp_seconds > 900``: a
live watch hears from the API server at least every 10 minutes (each watch ends within 5 to 10).

One collector per process, registered at import; ``serve`` points it at its view.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from nichotplug.kube.cache import RESOURCES, ClusterView

__all__ = ["VIEW_METRICS", "ClusterViewCollector"]


class ClusterViewCollector(Collector):
    """The figures of the cluster view ``view`` (None: no view yet; every series at 0)."""

    def __init__(self) -> None:
        self.view: ClusterView | None = None

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        view = self.view
        synced = GaugeMetricFamily("nichotplug_cluster_view_synced",
                                   "1 once every watched resource has been listed completely.")
        synced.add_metric([], 1.0 if view is not None and view.synced.is_set() else 0.0)
        yield synced
        contact = GaugeMetricFamily("nichotplug_cluster_view_last_contact_timestamp_seconds",
                                    "When the list or watch of the resource last got an answer (Unix time).",
                                    labels=["resource"])
        objects = GaugeMetricFamily("nichotplug_cluster_view_objects", "Objects of the resource in the view.",
                                    labels=["resource"])
        counts = view.counts() if view is not None else {}
        for resource in RESOURCES:
            contact.add_metric([resource.plural], view.last_contact.get(resource.kind, 0.0) if view else 0.0)
            objects.add_metric([resource.plural], float(counts.get(resource.kind, 0)))
        yield contact
        yield objects
        macs = GaugeMetricFamily("nichotplug_cluster_view_macs", "Distinct MACs in the view's index.")
        macs.add_metric([], float(counts.get("macs", 0)))
        yield macs
        for name, documentation, attribute in (
            ("nichotplug_cluster_view_relists", "Complete lists after the first (410 Gone, restarts).", "relists"),
            ("nichotplug_cluster_view_request_failures", "List or watch requests that failed and were retried.",
             "request_failures"),
            ("nichotplug_cluster_view_invalid_objects", "Objects left out because they could not be read.",
             "invalid_objects"),
        ):
            counter = CounterMetricFamily(name, documentation)
            counter.add_metric([], float(getattr(view, attribute)) if view is not None else 0.0)
            yield counter


VIEW_METRICS = ClusterViewCollector()
REGISTRY.register(VIEW_METRICS)

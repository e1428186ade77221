"""Prometheus metrics of the action API (default registry).

``action`` is one of the known actions or ``unknown`` (so a caller cannot grow the label set with
made-up names); ``code`` is the HTTP status answered. The known actions are pre-seeded so the
latency series exist from the start.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from nichotplug.rules.nic_plans import ACTIONS

UNKNOWN_ACTION = "unknown"

ACTIONS_TOTAL = Counter(
    "nichotplug_actions_total",
    "Action API requests by action (addNic, removeNic, findHotunpluggableNics, unknown) and HTTP status.",
    ["action", "code"],
)
ACTION_LATENCY = Histogram(
    "nichotplug_action_latency_seconds",
    "Time from receiving an action request to answering it, by action.",
    ["action"],
)

SUBRESOURCE_REQUESTS = Counter(
    "nichotplug_subresource_requests_total",
    "Subresource API requests (subresources.nichotplug.io) by subresource (or unknown) and HTTP status.",
    ["subresource", "code"],
)


def observe_subresource(subresource: str, known: bool, status: int) -> None:
    """Count one answered subresource request (``known``: one we serve; other names count as unknown)."""
    SUBRESOURCE_REQUESTS.labels(subresource=subresource if known else UNKNOWN_ACTION, code=str(status)).inc()


def action_label(action: str) -> str:
    """The metric label for a requested action name."""
    return action if action in ACTIONS else UNKNOWN_ACTION


def observe(action: str, status: int, seconds: float) -> None:
    """Count one answered request and record how long it took."""
    label = action_label(action)
    ACTIONS_TOTAL.labels(action=label, code=str(status)).inc()
    ACTION_LATENCY.labels(action=label).observe(seconds)


def preseed() -> None:
    """Create the latency series of every known action at zero."""
    for action in (*ACTIONS, UNKNOWN_ACTION):
        ACTION_LATENCY.labels(action=action)


preseed()

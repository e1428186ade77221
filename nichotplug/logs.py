"""How ``nichotplug serve`` writes its log: human text (the default) or one JSON object per line.

Both go to stderr, stamped in UTC (ISO 8601 with milliseconds and a Z) whatever the node's zone.
The JSON form (``--log-format json``) has ``time``, ``level``, ``logger`` and ``message``, the
traceback as ``exception`` when there is one, and, on a webhook's decision, the request's fields the
handler attaches as ``admission_*`` record attributes: ``webhook``, ``operation``, ``kind``, ``vm``
(``namespace/name``), ``user``, ``uid``, ``decision``, ``reason`` and ``latency_ms``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Final

import orjson

__all__ = ["LOG_FORMATS", "JsonFormatter", "configure_logging", "text_formatter"]

LOG_FORMATS: Final = ("text", "json")
_REQUEST_PREFIX: Final = "admission_"
# Record attribute (after the prefix) -> JSON key, for the ones whose name would mislead in JSON.
_RENAMED: Final = {"object": "kind", "latency_seconds": None, "namespace": None, "name": None}


def _utc_timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


def _request_fields(record: logging.LogRecord) -> dict[str, Any]:
    attributes = {key[len(_REQUEST_PREFIX):]: value for key, value in vars(record).items()
                  if key.startswith(_REQUEST_PREFIX)}
    if not attributes:
        return {}
    fields: dict[str, Any] = {}
    for key, value in attributes.items():
        renamed = _RENAMED.get(key, key)
        if renamed is not None:
            fields[renamed] = value
    if "name" in attributes:
        namespace = attributes.get("namespace") or ""
        fields["vm"] = f"{namespace}/{attributes['name']}" if namespace else attributes["name"]
    if "latency_seconds" in attributes:
        fields["latency_ms"] = round(float(attributes["latency_seconds"]) * 1000, 3)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": _utc_timestamp(record.created), "level": record.levelname, "logger": record.name,
            "message": record.getMessage(), **_request_fields(record),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(document, default=str).decode()


def text_formatter() -> logging.Formatter:
    formatter = logging.Formatter("%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s",
                                  datefmt="%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    return formatter


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send every record of ``level`` and above to stderr, in ``log_format`` (``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else text_formatter())
    logging.basicConfig(level=level, handlers=[handler])

"""``--log-format json``: every log line is one JSON object, and a webhook decision carries the request's
fields (operation, VM, user, decision, reason, latency) as keys, end to end over real HTTPS."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import aiohttp
import pytest

from nichotplug.logs import JsonFormatter
from nichotplug.rules.cluster import StaticCluster
from nichotplug.webhook.http import VALIDATION_PATH

from .webhook_support import ServeFn, admission_review, vm


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """What the ``nichotplug`` loggers write, through the JSON formatter ``serve`` installs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("nichotplug")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


async def test_a_denied_request_is_one_json_line_with_the_requests_fields(
    serve_tls: ServeFn, session: aiohttp.ClientSession, json_log: io.StringIO,
) -> None:
    from nichotplug.service import build_webhook_app

    server = await serve_tls(build_webhook_app(StaticCluster(vms=[vm("other", ("02:00:00:00:00:aa",))])))
    body = json.dumps(admission_review(vm(macs=("02:00:00:00:00:aa",)), uid="uid-denied")).encode()
    async with session.post(f"https://127.0.0.1:{server.port}{VALIDATION_PATH}", data=body,
                            headers={"Content-Type": "application/json"}) as response:
        assert response.status == 200
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    (decision,) = [line for line in lines if line.get("uid") == "uid-denied"]
    assert decision["level"] == "INFO"
    assert decision["logger"] == "nichotplug.webhook.http"
    assert (decision["webhook"], decision["operation"], decision["kind"], decision["vm"], decision["user"]) \
        == ("validation", "CREATE", "VirtualMachine", "default/vm1", "alice")
    assert (decision["decision"], decision["reason"]) == ("denied", "mac-collision")
    assert 0 < decision["latency_ms"] < 60_000
    assert "denied (mac-collision)" in decision["message"]
    assert decision["time"].endswith("Z")


def test_a_traceback_stays_inside_its_json_line() -> None:
    record = logging.LogRecord("nichotplug.x", logging.ERROR, __file__, 1, "it broke: %s", ("badly",), None)
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    document = json.loads(line)
    assert document["message"] == "it broke: badly"
    assert "ValueError: boom" in document["exception"]


def test_text_stays_the_default_and_json_is_chosen_by_the_flag() -> None:
    script = ("import logging, sys; from nichotplug.logs import configure_logging as c; "
              "c('INFO', *sys.argv[1:]); logging.getLogger('nichotplug.t').info('hello %s', 'there')")
    text = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stderr
    as_json = subprocess.run([sys.executable, "-c", script, "json"], capture_output=True, text=True,
                             check=True).stderr
    assert text.rstrip().endswith("INFO nichotplug.t: hello there")
    assert json.loads(as_json)["message"] == "hello there"


def test_serve_refuses_an_unknown_log_format() -> None:
    done = subprocess.run([sys.executable, "-m", "nichotplug", "serve", "--log-format", "xml"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "argument --log-format: invalid choice: 'xml'" in done.stderr

"""The README's first command, run as a newcomer runs it: ``nichotplug demo`` tells the whole story."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

MAC = r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}"


@pytest.fixture(scope="module")
def demo_output() -> str:
    done = subprocess.run(
        [sys.executable, "-m", "nichotplug", "demo"], capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_generated_macs_are_locally_administered_unicast(demo_output: str) -> None:
    line = next(line for line in demo_output.splitlines() if "MACs in the stored spec" in line)
    macs = re.findall(MAC, line)
    assert len(macs) == 2
    assert all(int(mac[:2], 16) & 0b11 == 0b10 for mac in macs)


def test_hotplug_through_the_action_api_adds_a_nic_with_a_mac(demo_output: str) -> None:
    assert re.search(rf'"dynif1": "{MAC}"', demo_output)
    assert 'findHotunpluggableNics after (200): {"interfaces": ["nic-1", "dynif1"]}' in demo_output
    assert re.search(r"live migration requested so the change applies now: \[\"web-1-\w+\"\]", demo_output)


def test_hot_unplug_marks_the_interface_absent(demo_output: str) -> None:
    assert '"dynif1": "absent"' in demo_output


def test_bad_edits_are_refused_with_the_webhook_message(demo_output: str) -> None:
    assert re.search(r'\(HTTP 403\): admission webhook "validate-vm[^"]*" denied the request: .*e1000',
                     demo_output)
    assert re.search(r"\(HTTP 409\): admission webhook .* already used by default/web-1", demo_output)
    assert '"code": "NetworkNotHotpluggable"' in demo_output


def test_observed_macs_are_recorded_then_backfilled(demo_output: str) -> None:
    assert 'annotation harvesterhci.io/mac-address: {"default":"52:54:00:6b:3c:58"}' in demo_output
    assert "MACs now in legacy-vm's spec: {\"default\": \"52:54:00:6b:3c:58\"}" in demo_output

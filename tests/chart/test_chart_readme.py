"""The chart README as an SRE reads it: every value documented, the memory limit above the measured peak,
and the outage, rollback and prerequisite sections present."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml

from .conftest import CHART_DIR

README = (CHART_DIR / "README.md").read_text()


def _leaf_keys(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield from _leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _documented_keys() -> set[str]:
    """Keys named in the first column of the Values table (``a`` / ``b`` rows name several, with a
    shared prefix written once: ``image.repository`` / ``image.tag`` or ``x.duration`` / ``renewBefore``)."""
    section = README.split("## Values\n", 1)[1].split("\n## ", 1)[0]
    keys: set[str] = set()
    for row in re.findall(r"^\| (`[^|]+) \|", section, re.MULTILINE):
        names = re.findall(r"`([^`]+)`", row)
        prefix = names[0].rpartition(".")[0]
        keys.update(name if "." in name or not prefix else f"{prefix}.{name}" for name in names)
    return keys


def test_every_value_is_in_the_readme_table() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    documented = _documented_keys()
    missing = {key for key in _leaf_keys(values)
               if key not in documented and not any(key.startswith(f"{name}.") for name in documented)}
    assert missing == set()


def _mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return float(number) * (1024 if unit == "Gi" else 1)


def test_the_default_memory_limit_is_above_the_measured_peak_for_100000_vms() -> None:
    limit = _mebibytes(yaml.safe_load((CHART_DIR / "values.yaml").read_text())["resources"]["limits"]["memory"])
    row = re.search(r"^\| 100,000 \| ~(\d+) MiB \| ~(\d+) MiB \|$", README, re.MULTILINE)
    assert row is not None, "the Memory table's 100,000-VM row"
    peak = float(row.group(2))
    assert limit >= 2 * peak, (limit, peak)


def test_the_sre_sections_are_there() -> None:
    for heading in ("## While nichotplug is down", "## Before you install", "## Memory", "## Roll back"):
        assert heading in README, heading
    assert "starting and stopping VMs fail too" in README.replace("**", "")
    assert "helm rollback nichotplug -n harvester-system" in README
    assert "vmRolloutStrategy" in README
    assert "LiveUpdate" in README
    assert "docker push" in README

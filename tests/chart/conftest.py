"""Render charts/nichotplug with the real Helm engine (helm-python-sdk) and index the objects."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

CHART_DIR = Path(__file__).resolve().parents[2] / "charts" / "nichotplug"
RELEASE = "nichotplug"
NAMESPACE = "harvester-system"


@dataclass(frozen=True)
class Rendered:
    """The objects one `helm template` would print, plus NOTES.txt."""

    objects: tuple[dict[str, Any], ...]
    notes: str

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
        return found[0]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        found = [obj for obj in self.all(kind) if obj["metadata"]["name"] == name]
        names = [obj["metadata"]["name"] for obj in self.all(kind)]
        assert len(found) == 1, f"expected one {kind} {name}, rendered {names}"
        return found[0]


def render_chart(values: dict[str, Any] | None = None, *, release: str = RELEASE,
                 namespace: str = NAMESPACE) -> Rendered:
    with helm.Chart.load(CHART_DIR) as chart:
        manifests = chart.render(values, name=release, namespace=namespace, is_install=True)
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(tuple(objects), notes)


@pytest.fixture(scope="module")
def default_chart() -> Rendered:
    return render_chart()

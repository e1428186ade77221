"""The Dockerfile: its build steps replayed in a fresh venv, and its runtime contract with the chart."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# The exact pip steps of the Dockerfile; the test fails if the Dockerfile stops saying them.
WHEEL_SELF = "pip wheel --no-deps --wheel-dir /wheels ."
WHEEL_DEPS = "pip wheel --wheel-dir /wheels /wheels/nichotplug-*.whl"
INSTALL = "/opt/nichotplug/bin/pip install --no-index --find-links /wheels nichotplug"


def _instructions(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in DOCKERFILE.splitlines() if line.startswith(name + " ")]


def _build_context(dest: Path) -> Path:
    """What `docker build` would send: only what .dockerignore lets through."""
    dest.mkdir(parents=True)
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    for name in allowed:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, dest / name)
    return dest


def _run(*cmd: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_image_runs_serve_as_the_unprivileged_user_the_chart_expects() -> None:
    assert _instructions("ENTRYPOINT") == ['["nichotplug", "serve"]']
    assert _instructions("HEALTHCHECK") == []
    assert all(base.startswith("python:3.11-slim") for base in _instructions("FROM"))
    with helm.Chart.load(ROOT / "charts/nichotplug") as chart:
        rendered = chart.render(name="nichotplug", namespace="harvester-system")
    deployment = yaml.safe_load(rendered["nichotplug/templates/deployment.yaml"])
    pod = deployment["spec"]["template"]["spec"]
    chart_user = pod["securityContext"]["runAsUser"]
    assert pod["securityContext"]["runAsGroup"] == chart_user
    assert _instructions("USER") == [f"{chart_user}:{chart_user}"]
    for step in (WHEEL_SELF, WHEEL_DEPS, INSTALL):
        assert step in DOCKERFILE


@pytest.mark.slow
def test_dockerfile_steps_install_a_working_nichotplug(tmp_path: Path) -> None:
    context = _build_context(tmp_path / "context")
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # The build stage: our wheel, then wheels of its runtime dependencies (pip's configured local
    # wheel folders and index answer these; nothing is compiled).
    _run(*pip, *WHEEL_SELF.removeprefix("pip ").replace("/wheels", str(wheels)).split(), cwd=context)
    (ours,) = wheels.glob("nichotplug-*.whl")
    _run(*pip, "wheel", "--wheel-dir", wheels, ours)
    # The runtime stage: a fresh venv that only sees those wheels.
    _run(sys.executable, "-m", "venv", venv)
    _run(venv / "bin/pip", "--disable-pip-version-check", "-q", "install", "--no-index", "--find-links",
         wheels, "nichotplug")

    assert "serve" in _run(venv / "bin/nichotplug", "--help")
    serve_help = _run(venv / "bin/nichotplug", "serve", "--help")
    assert "--self-managed-certs" in serve_help
    freeze = _run(venv / "bin/pip", "freeze").splitlines()
    installed = {line.split("==")[0].lower().replace("_", "-") for line in freeze}
    assert {"aiohttp", "kubernetes-asyncio", "cryptography"} <= installed
    assert not installed & {"pytest", "helm-python-sdk", "mypy", "ruff", "hypothesis"}, "test tools in the image"

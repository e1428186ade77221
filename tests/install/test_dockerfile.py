"""The Dockerfile: its build steps replayed in a fresh venv, and its runtime contract with the chart."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# The exact pip steps of the Dockerfile; the test fails if the Dockerfile stops saying them.
WHEEL_SELF = "pip wheel --no-deps --wheel-dir /wheels ."
INSTALL_LOCKED = "/opt/nichotplug/bin/pip install --require-hashes -r /tmp/requirements.lock"
INSTALL_SELF = "/opt/nichotplug/bin/pip install --no-deps --no-index /wheels/nichotplug-*.whl"
CHECK = "/opt/nichotplug/bin/pip check"


def _instructions(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in DOCKERFILE.splitlines() if line.startswith(name + " ")]


def _build_context(dest: Path) -> Path:
    """What `docker build` would send: what .dockerignore lets through, less what it then excludes again."""
    dest.mkdir(parents=True)
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    for name in (line[1:].rstrip("/") for line in lines if line.startswith("!")):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, dest / name)
    for pattern in (line for line in lines if not line.startswith("!") and line != "*"):
        for path in list(dest.glob(pattern)):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
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
    for step in (WHEEL_SELF, INSTALL_LOCKED, INSTALL_SELF, CHECK):
        assert step in DOCKERFILE


@pytest.mark.slow
def test_dockerfile_steps_install_a_working_nichotplug(tmp_path: Path) -> None:
    context = _build_context(tmp_path / "context")
    assert not (context / "nichotplug" / "testing").exists()
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # The build stage: our wheel alone.
    _run(*pip, *WHEEL_SELF.removeprefix("pip ").replace("/wheels", str(wheels)).split(), cwd=context)
    (ours,) = wheels.glob("nichotplug-*.whl")
    with zipfile.ZipFile(ours) as wheel:
        assert not [name for name in wheel.namelist() if name.startswith("nichotplug/testing/")]
    # The runtime stage: a fresh venv, the locked requirements with their hashes checked (pip's
    # configured index and local mirrors answer), then our wheel without dependencies, then pip check:
    # the lock satisfies every requirement setup.cfg declares.
    _run(sys.executable, "-m", "venv", venv)
    venv_pip = [venv / "bin/pip", "--disable-pip-version-check", "-q"]
    _run(*venv_pip, "install", "--require-hashes", "-r", context / "requirements.lock")
    _run(*venv_pip, "install", "--no-deps", "--no-index", ours)
    _run(venv / "bin/pip", "check")

    assert "serve" in _run(venv / "bin/nichotplug", "--help")
    serve_help = _run(venv / "bin/nichotplug", "serve", "--help")
    assert "--self-managed-certs" in serve_help
    freeze = _run(venv / "bin/pip", "freeze").splitlines()
    installed = {line.split("==")[0].lower().replace("_", "-") for line in freeze}
    assert {"aiohttp", "kubernetes-asyncio", "cryptography"} <= installed
    assert not installed & {"pytest", "helm-python-sdk", "mypy", "ruff", "hypothesis", "jsonschema",
                            "jsonschema-rs"}, "test code or the in-process API server's dependencies in the image"
    # No in-process API server in the image: the demo says which extra brings it.
    demo = subprocess.run([venv / "bin/nichotplug", "demo"], capture_output=True, text=True, timeout=60, check=False)
    assert demo.returncode == 2
    assert "pip install 'nichotplug[testing]'" in demo.stderr

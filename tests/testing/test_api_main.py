"""``python -m nichotplug.testing``: serves until interrupted and prints a kubeconfig kubectl can use."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


async def _kubectl(kubeconfig: str, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        "kubectl", "--kubeconfig", kubeconfig, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, output.decode()


@pytest.mark.kubectl
async def test_module_serves_kubectl_until_interrupted(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nichotplug.testing", "--kubeconfig", str(kubeconfig),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert server.stdout is not None
        printed = (await asyncio.wait_for(server.stdout.readline(), 60)).decode().strip()
        assert printed == str(kubeconfig)
        code, output = await _kubectl(printed, "get", "namespaces", "-o", "name")
        assert code == 0, output
        assert output.split() == ["namespace/default", "namespace/kube-node-lease", "namespace/kube-public",
                                  "namespace/kube-system"]
        code, output = await _kubectl(printed, "get", "crd", "-o", "name")
        assert "customresourcedefinition.apiextensions.k8s.io/virtualmachines.kubevirt.io" in output.split()
    finally:
        server.send_signal(signal.SIGINT)
        returncode = await asyncio.wait_for(server.wait(), 30)
    assert returncode == 0

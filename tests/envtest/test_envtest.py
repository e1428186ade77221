"""The real-control-plane fixture itself: how it starts, fails, skips and is enforced in CI."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from nichotplug.testing.envtest import ASSETS_VARIABLE, EnvtestError, RealApiServer, assets_dir

pytest_plugins = ["pytester"]

SAMPLE_TEST = textwrap.dedent("""
    async def test_on_both(any_apiserver):
        assert any_apiserver.url.startswith("https://127.0.0.1:")
""")


def _fake_apiserver_assets(tmp_path: Path, real_assets: Path) -> Path:
    """Real etcd, and a kube-apiserver that refuses a flag the way the real one does."""
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "etcd").symlink_to(real_assets / "etcd")
    fake = assets / "kube-apiserver"
    fake.write_text("#!/bin/sh\necho 'I1204 starting'\necho 'Error: unknown flag: --secure-port'\nexit 1\n")
    fake.chmod(0o755)
    return assets


@pytest.mark.real
def test_a_failed_start_names_the_binary_the_flag_and_the_log_and_leaves_nothing_running(
        real_apiserver: RealApiServer, tmp_path: Path) -> None:
    server = RealApiServer(_fake_apiserver_assets(tmp_path, real_apiserver.assets))

    with pytest.raises(EnvtestError) as failure:
        server.start()

    message = str(failure.value)
    assert message.startswith("kube-apiserver exited during start (exit code 1)")
    assert "the line about a flag: Error: unknown flag: --secure-port" in message
    assert "I1204 starting" in message  # the log's last lines
    assert not server.workdir.exists()  # the throwaway folder (and etcd with it) is gone


def test_missing_binaries_are_named_with_the_way_to_get_them(tmp_path: Path) -> None:
    server = RealApiServer(tmp_path)

    with pytest.raises(EnvtestError, match=r"etcd not found or not executable in KUBEBUILDER_ASSETS=.*unpack"):
        server.start()


@pytest.mark.real
def test_the_admin_the_viewer_and_the_user_without_rights(real_apiserver: RealApiServer) -> None:
    namespaces = "/api/v1/namespaces"

    assert real_apiserver.request("GET", namespaces).status == 200
    assert real_apiserver.request("GET", namespaces, token=real_apiserver.viewer_token).status == 200
    assert real_apiserver.request("POST", namespaces, {"metadata": {"name": "viewer-made"}},
                                  token=real_apiserver.viewer_token).status == 403
    assert real_apiserver.request("GET", namespaces, token=real_apiserver.nobody_token).status == 403
    assert real_apiserver.request("GET", namespaces, token="not-a-token").status == 401


@pytest.mark.real
def test_reset_deletes_what_a_test_made_even_with_finalizers(real_apiserver: RealApiServer) -> None:
    real_apiserver.ensure_namespace("reset-check")
    vm = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
          "metadata": {"name": "kept", "namespace": "reset-check", "finalizers": ["example.com/hold"]},
          "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {}}}}}}
    path = "/apis/kubevirt.io/v1/namespaces/reset-check/virtualmachines"
    real_apiserver.request("POST", path, vm, expect=(201,))

    real_apiserver.reset()

    assert real_apiserver.request("GET", f"{path}/kept").status == 404
    assert real_apiserver.request("GET", "/api/v1/namespaces/kube-system/configmaps/"
                                  "extension-apiserver-authentication").status == 200


def _run_sample(pytester: pytest.Pytester, **env: str) -> pytest.RunResult:
    pytester.makeconftest('pytest_plugins = ["nichotplug.testing.pytest_plugin"]')
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\naddopts = -ra\n")
    pytester.makepyfile(test_sample=SAMPLE_TEST)
    saved = {key: os.environ.get(key) for key in env}
    try:
        for key, value in env.items():
            if value:
                os.environ[key] = value
            else:
                os.environ.pop(key, None)
        return pytester.runpytest_subprocess("-p", "no:cacheprovider")
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def test_without_assets_the_real_tier_is_skipped_with_one_line_saying_how_to_enable_it(
        pytester: pytest.Pytester) -> None:
    result = _run_sample(pytester, KUBEBUILDER_ASSETS="", NICHOTPLUG_REQUIRE_REAL_TIER="")

    result.assert_outcomes(passed=1, deselected=1)
    tier_lines = [line for line in result.outlines if "real kube-apiserver tier" in line]
    assert tier_lines == ["real kube-apiserver tier: 1 tests not run: "
                          "set KUBEBUILDER_ASSETS=$(../shared/envtest/unpack) to run it"]
    assert result.ret == 0


def test_ci_fails_a_run_whose_real_tier_was_skipped(pytester: pytest.Pytester) -> None:
    result = _run_sample(pytester, KUBEBUILDER_ASSETS="", NICHOTPLUG_REQUIRE_REAL_TIER="1")

    result.assert_outcomes(passed=1, deselected=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_assets_dir_reads_the_ecosystem_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ASSETS_VARIABLE, str(tmp_path))
    assert assets_dir() == tmp_path
    monkeypatch.setenv(ASSETS_VARIABLE, " ")
    assert assets_dir() is None


@pytest.mark.real
def test_the_real_server_speaks_as_recorded(real_apiserver: RealApiServer) -> None:
    """A sanity anchor: the started server is the recorded one (same version, same 404 shape)."""
    version = real_apiserver.request("GET", "/version", expect=(200,)).json()
    assert version["gitVersion"].startswith("v1.36")
    missing = real_apiserver.request("GET", "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/nope")
    assert missing.status == 404
    assert json.loads(missing.body)["reason"] == "NotFound"


@pytest.mark.real
def test_ci_passes_a_run_whose_real_tier_ran(real_apiserver: RealApiServer, pytester: pytest.Pytester) -> None:
    result = _run_sample(pytester, KUBEBUILDER_ASSETS=str(real_apiserver.assets), NICHOTPLUG_REQUIRE_REAL_TIER="1")

    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["real kube-apiserver tier: 1 passed, 0 failed, 0 skipped"])
    assert result.ret == 0

"""The ``nichotplug`` command itself: help, usage errors and ``nichotplug certs``, run as a user runs them."""

from __future__ import annotations

import datetime
import ipaddress
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from nichotplug import __version__


def nichotplug(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nichotplug", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_help_lists_every_subcommand() -> None:
    done = nichotplug("--help")
    assert done.returncode == 0
    for command in ("serve", "certs", "demo"):
        assert command in done.stdout


def test_help_is_plain_text_and_version_is_printed() -> None:
    done = nichotplug("--help")
    assert "safe NIC hot-plug for KubeVirt VMs" in done.stdout
    assert "``" not in done.stdout
    version = nichotplug("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"nichotplug {__version__}"


def test_serve_help_shows_port_defaults_the_required_tls_and_the_controllers_reach() -> None:
    done = nichotplug("serve", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())  # argparse wraps to the terminal width
    assert "HTTPS port for webhooks and actions (default: 9443)" in text
    assert "plain-HTTP port for /metrics, 0 for none (default: 8080)" in text
    assert "TLS (required, one of two ways): Either --tls-cert-file and --tls-key-file, or --self-managed-certs" in text
    assert "the controller WRITES VMs (observed-MAC annotation, MAC backfill) in every namespace" in text
    assert "--controller-namespace NS" in text
    assert "The webhooks still see and judge every namespace" in text


def test_certs_help_says_what_it_writes() -> None:
    done = nichotplug("certs", "--help")
    text = " ".join(done.stdout.split())
    assert "Write a new CA (ca.crt) and a serving certificate signed by it (tls.crt, tls.key)" in text


def test_an_unknown_subcommand_is_a_usage_error() -> None:
    done = nichotplug("frobnicate")
    assert done.returncode == 2
    assert "invalid choice: 'frobnicate'" in done.stderr


def test_an_unknown_log_level_is_a_usage_error_not_a_traceback() -> None:
    done = nichotplug("serve", "--log-level", "verbose")
    assert done.returncode == 2
    assert "argument --log-level: invalid choice: 'VERBOSE'" in done.stderr
    assert "Traceback" not in done.stderr


def test_certs_writes_a_ca_and_a_serving_certificate_for_the_names_given(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    done = nichotplug("certs", "--out", str(out), "--dns", "nichotplug.harvester-system.svc",
                      "--dns", "localhost", "--ip", "127.0.0.1", "--days", "30")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "tls.crt", "tls.key"]

    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((out / "tls.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["nichotplug.harvester-system.svc", "localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    lifetime = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=29) < lifetime <= datetime.timedelta(days=30)


def test_certs_takes_several_names_after_one_flag_and_long_ones(tmp_path: Path) -> None:
    long_name = "a" * 60 + ".nichotplug.harvester-system.svc.cluster.local"  # beyond the CN's 64 characters
    done = nichotplug("certs", "--out", str(tmp_path), "--dns", long_name, "localhost", "--ip", "127.0.0.1", "::1")
    assert done.returncode == 0, done.stderr
    names = x509.load_pem_x509_certificate((tmp_path / "tls.crt").read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [long_name, "localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]


@pytest.mark.parametrize("wildcard", ["*.nichotplug.svc"])
def test_certs_accepts_a_wildcard_name(tmp_path: Path, wildcard: str) -> None:
    assert nichotplug("certs", "--out", str(tmp_path), "--dns", wildcard).returncode == 0


def test_certs_into_a_file_or_an_unwritable_folder_is_one_clear_line(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    done = nichotplug("certs", "--out", str(a_file), "--dns", "localhost")
    assert (done.returncode, done.stderr.strip()) == (
        2, f"nichotplug certs: --out '{a_file}' exists and is not a folder")
    done = nichotplug("certs", "--out", str(a_file / "tls"), "--dns", "localhost")  # fails even for root
    assert (done.returncode, done.stderr.strip()) == (
        1, f"nichotplug certs: cannot write into '{a_file / 'tls'}': Not a directory")


def test_certs_keeps_the_private_key_readable_by_its_owner_only(tmp_path: Path) -> None:
    assert nichotplug("certs", "--out", str(tmp_path), "--dns", "localhost").returncode == 0
    assert stat.S_IMODE((tmp_path / "tls.key").stat().st_mode) == 0o600


@pytest.mark.parametrize(("args", "message"), [
    ((), "give at least one --dns NAME or --ip ADDRESS"),
    (("--ip", "not-an-ip"), "'not-an-ip' is not an IP address"),
    (("--dns", "localhost", "--days", "0"), "--days must be between 1 and 3650 (the CA's validity), got 0"),
    (("--dns", "localhost", "--days", "100000"), "--days must be between 1 and 3650"),
    (("--dns", "bad name!"), "'bad name!' is not a DNS name"),
    (("--dns", ""), "'' is not a DNS name"),
    (("--dns", "bücher.de"), "'bücher.de' is not a DNS name (letters, digits, hyphens and dots; punycode"),
    (("--dns", "trailing-.example"), "'trailing-.example' is not a DNS name"),
], ids=["none", "bad-ip", "zero-days", "outlives-the-ca", "space", "empty", "not-ascii", "trailing-hyphen"])
def test_certs_refuses_bad_input_and_writes_nothing(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    out = tmp_path / "tls"
    done = nichotplug("certs", "--out", str(out), *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert not out.exists()

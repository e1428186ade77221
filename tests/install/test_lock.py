"""requirements.lock, which the image installs from: every runtime requirement of setup.cfg pinned and
hashed, nothing of the test or testing extras in it, and regenerating it from setup.cfg with the
command in its header changes no pin."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def requirements(section: str, key: str) -> list[Requirement]:
    text = setup_cfg()[section][key]
    return [Requirement(line.split("#")[0].strip()) for line in text.splitlines() if line.split("#")[0].strip()]


def pins(text: str) -> dict[str, tuple[str, str]]:
    """name -> (version, marker) of every pinned requirement."""
    found = {}
    for line in text.splitlines():
        match = PIN.match(line)
        if match:
            found[canonicalize_name(match[1])] = (match[2], (match[3] or "").strip())
    return found


def regeneration_command() -> list[str]:
    header = LOCK.read_text().splitlines()[:3]
    (command,) = [line.lstrip("#").strip() for line in header if "pip compile" in line]
    return command.split()


def test_every_runtime_requirement_is_pinned_within_its_range() -> None:
    locked = pins(LOCK.read_text())
    for requirement in requirements("options", "install_requires"):
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is not in requirements.lock: regenerate it"
        assert requirement.specifier.contains(locked[name][0], prereleases=True), \
            f"requirements.lock pins {name}=={locked[name][0]}, outside {requirement}: regenerate it"


def test_every_pin_carries_hashes() -> None:
    blocks = re.split(r"\n(?=[A-Za-z0-9])", LOCK.read_text())
    pinned = [block for block in blocks if PIN.match(block.splitlines()[0])]
    assert len(pinned) == len(pins(LOCK.read_text())) > 10
    assert [block.splitlines()[0] for block in pinned if "--hash=sha256:" not in block] == []


def test_nothing_of_the_test_or_testing_extras_is_locked() -> None:
    extras = requirements("options.extras_require", "testing") + [
        requirement for requirement in requirements("options.extras_require", "test")
        if canonicalize_name(requirement.name) != "nichotplug"]
    runtime = {canonicalize_name(requirement.name) for requirement in requirements("options", "install_requires")}
    test_only = {canonicalize_name(requirement.name) for requirement in extras} - runtime
    assert test_only & set(pins(LOCK.read_text())) == set()


def test_the_readme_documents_the_regeneration_command() -> None:
    assert " ".join(regeneration_command()) in (ROOT / "README.md").read_text()


def test_regenerating_from_setup_cfg_changes_no_pin(tmp_path: Path) -> None:
    """The CI check: the documented command, run on a copy of the lock (uv keeps its pins unless told to
    upgrade), must pin the same set; a requirement added to or changed in setup.cfg without
    regenerating fails here. Hashes are not compared: PyPI may add wheels to a release later."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv is None:
        pytest.skip("uv is not installed (it comes with the test extra)")
    command = regeneration_command()
    output = tmp_path / "requirements.lock"
    shutil.copy(LOCK, output)
    args = [uv, *command[1:command.index("-o")], "-o", str(output)]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert pins(output.read_text()) == pins(LOCK.read_text())

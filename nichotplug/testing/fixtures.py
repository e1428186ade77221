"""Where the recorded kube-apiserver fixtures are (they live outside this repository).

The project's shared folder sits beside the checkout (``<checkout>/../shared``), both on a
developer's machine and in CI's fresh clone; ``$NICHOTPLUG_FIXTURES`` overrides it. Tests that
replay recordings skip when the folder is absent rather than fail on a machine without it.
"""

from __future__ import annotations

import os
from pathlib import Path


def _candidates() -> list[Path]:
    checkout = Path(__file__).resolve().parents[2]
    found = [Path(os.environ["NICHOTPLUG_FIXTURES"])] if os.environ.get("NICHOTPLUG_FIXTURES") else []
    return [*found, checkout.parent / "shared" / "fixtures", Path("/work/shared/fixtures")]


def shared_fixtures() -> Path:
    """The fixtures folder (``admission/``, ``apiserver/``, ``crds/``, ``kubectl/``); may not exist."""
    for candidate in _candidates():
        if candidate.is_dir():
            return candidate
    return _candidates()[0]


SHARED_FIXTURES = shared_fixtures()

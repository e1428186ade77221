"""``python -m nichotplug`` is the ``nichotplug`` command."""

import sys

from nichotplug.cli import main

sys.exit(main())

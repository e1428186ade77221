"""Tests of the action API (nichotplug.actions) against the in-process API server."""

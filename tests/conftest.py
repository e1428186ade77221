"""Shared test configuration: the in-process API server fixtures come from nichotplug.testing."""

pytest_plugins = ["nichotplug.testing.pytest_plugin"]

"""Pytest fixtures for the in-process API server (being built; see ARCHITECTURE.md)."""

"""Unit tests of the host model zoo."""

"""Unit tests of the Kubernetes operator's pure logic."""

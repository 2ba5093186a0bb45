"""Urabrask: validating and benchmarking kernel bundles."""

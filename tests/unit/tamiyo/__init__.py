"""Tamiyo: the policy interface and the heuristic policy."""

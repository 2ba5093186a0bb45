"""Urza's HTTP API (FastAPI)."""

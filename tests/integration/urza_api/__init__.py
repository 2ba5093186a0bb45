"""Urza's HTTP API and client against a real server (uvicorn) on real storage."""

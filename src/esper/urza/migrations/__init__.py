"""Alembic migrations of Urza's database."""

"""Kasmina: seed slots in a host model, their lifecycle, state dicts and kernel loading."""

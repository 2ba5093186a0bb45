"""Urabrask, the kernel validator: correctness, safety at graft, and measured cost."""

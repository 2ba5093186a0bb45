"""The local forge: work units, worker processes, scheduling and reconciliation."""

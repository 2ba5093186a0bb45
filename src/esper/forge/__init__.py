"""The local forge: schedules Tezzeret and Urabrask work units in worker processes."""

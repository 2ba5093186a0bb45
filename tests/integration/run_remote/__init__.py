"""``esper run`` as a cluster's training Job runs it: a remote Urza and the run's events on Oona."""

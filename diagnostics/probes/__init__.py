"""Environment-doctor probes: each returns a ``Finding`` and never raises."""

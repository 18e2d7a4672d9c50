"""Environment-doctor probes: each returns a ``ProbeResult`` and never raises."""

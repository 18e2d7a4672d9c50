"""Face detection, tracking/smoothing, crop geometry and the per-template cache."""

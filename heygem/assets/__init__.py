"""Bundled media: a public-domain NASA portrait (scikit-image's `astronaut`)."""

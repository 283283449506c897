"""Platforms: where blue and green run (local processes/URLs, Kubernetes)."""

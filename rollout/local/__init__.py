"""The embedded local platform's moving parts: HAProxy, Prometheus and SD server processes."""

"""Metric providers: where gate evidence comes from (canary samples, Prometheus, NVML)."""

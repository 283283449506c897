"""The latency histogram can resolve a 30% P95 change anywhere in SD's range."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest


def _metrics() -> ModuleType:
    """Imported here, so that without the server installed the tests skip instead of erroring."""
    import sd_server.metrics

    return sd_server.metrics


def test_buckets_cover_sd_latencies_10_percent_apart() -> None:
    buckets = _metrics().LATENCY_BUCKETS
    b = np.asarray(buckets)
    assert b[0] <= 0.05 and b[-1] >= 120
    ratios = b[1:] / b[:-1]
    assert ratios.max() < 1.11 and ratios.min() > 1.09
    assert {0.1, 1.0, 10.0, 100.0} <= set(buckets)


@pytest.mark.parametrize("p95", [0.08, 0.38, 1.1, 3.4, 16.4, 62.0])
def test_histogram_read_back_tells_a_30_percent_change(p95: float) -> None:
    """Interpolating inside the bucket (what histogram_quantile does) errs by < 10%."""
    buckets = _metrics().LATENCY_BUCKETS

    def read_back(true: float) -> float:
        hi = int(np.searchsorted(buckets, true))
        lo_edge, hi_edge = buckets[hi - 1], buckets[hi]
        return float(lo_edge + hi_edge) / 2  # worst case: anywhere in the bucket

    for true in (p95, p95 * 1.3):
        assert abs(read_back(true) / true - 1) < 0.10
    assert read_back(p95 * 1.3) / read_back(p95) > 1.15


def test_bucket_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        _metrics().geometric_buckets(1.0, 0.5)

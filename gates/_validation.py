"""Input validation for every statistical function, in one place.

Why one place: a NaN that slips into a quantile or a rank test silently turns into a
pass (Flagger #1098 parsed NaN as 0). Every public statistic calls :func:`as_latencies`
first, so bad input is rejected with the arm and position of the offending value, and an
empty arm raises :class:`NoDataError`, which callers turn into the ``nodata`` verdict.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["LatencyInputError", "NoDataError", "as_latencies", "check_probability"]


class LatencyInputError(ValueError):
    """A latency sample holds a value that cannot be a latency (NaN, inf, negative).

    Attributes:
        arm: which sample ("blue", "green", ...).
        index: 0-based position of the first offending value.
        value: the offending value.
    """

    def __init__(self, arm: str, index: int, value: float, reason: str) -> None:
        self.arm = arm
        self.index = index
        self.value = value
        self.reason = reason
        super().__init__(f"{arm}[{index}] = {value!r}: {reason}")


class NoDataError(LookupError):
    """An arm has no observations: there is nothing to judge, which is never a pass."""

    def __init__(self, arm: str) -> None:
        self.arm = arm
        super().__init__(f"{arm}: no observations")


def as_latencies(values: ArrayLike | Iterable[float], *, arm: str) -> NDArray[np.float64]:
    """Return ``values`` as a 1-D float64 array of latencies, or raise.

    Raises:
        LatencyInputError: a value is NaN, infinite or negative, or not a number.
        NoDataError: the sample is empty.
    """
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise LatencyInputError(arm, -1, float("nan"), f"not numeric ({e})") from e
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.size == 0:
        raise NoDataError(arm)
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LatencyInputError(arm, i, float(arr[i]), "latency must be a finite number")
    neg = arr < 0
    if neg.any():
        i = int(np.flatnonzero(neg)[0])
        raise LatencyInputError(arm, i, float(arr[i]), "latency must be >= 0 seconds")
    return arr


def check_probability(value: float, name: str, *, open_interval: bool = True) -> float:
    """Validate a probability-like parameter (alpha, quantile, confidence level)."""
    v = float(value)
    ok = 0.0 < v < 1.0 if open_interval else 0.0 <= v <= 1.0
    if not ok:
        bounds = "(0, 1)" if open_interval else "[0, 1]"
        raise ValueError(f"{name} must lie in {bounds}, got {value!r}")
    return v

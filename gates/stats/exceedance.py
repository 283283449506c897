"""The arithmetic of the stratified exceedance e-test (:mod:`gates.stats.sequential`).

Blue's running quantile ``tau_t`` over a window of past slices, and the per-slice log
likelihood ratios of the tail part (``log LR_rho(Y_t, S_t)``) and the centre part
(``log((K + 1) P_gamma(R_t))``), vectorized over slices and mixture components. The
derivations, and why these are test martingales, are in :mod:`gates.stats.sequential`'s
docstring.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["Floats", "RunningQuantile", "centre_log_lr", "logsumexp", "tail_log_lr"]

Floats = NDArray[np.float64]


class RunningQuantile:
    """Inverse-CDF ``q``-quantile of the latest slices' values: at least ``window`` values
    (all when ``None``), evicted a whole slice at a time, so the order of the values within a
    slice never matters.

    A sorted list plus the slices in arrival order: O(window) per value, which at the default
    window is a memmove of a few hundred pointers.
    """

    def __init__(self, q: float, window: int | None = None) -> None:
        self._q = q
        self._window = window
        self._sorted: list[float] = []
        self._slices: deque[tuple[float, ...]] = deque()

    def __len__(self) -> int:
        return len(self._sorted)

    def add(self, values: Sequence[float] | Floats) -> None:
        """Add one slice's values."""
        group = tuple(float(x) for x in values)
        for v in group:
            bisect.insort(self._sorted, v)
        if self._window is None:
            return
        self._slices.append(group)
        while len(self._sorted) - len(self._slices[0]) >= self._window:
            for v in self._slices.popleft():
                del self._sorted[bisect.bisect_left(self._sorted, v)]

    def value(self) -> float:
        if not self._sorted:
            return math.nan
        # round() guards q * n against binary noise (0.95 * 20 = 19.000000000000004).
        k = max(1, math.ceil(round(self._q * len(self._sorted), 9)))
        return self._sorted[k - 1]


def logsumexp(x: Floats, log_w: Floats) -> Floats:
    """``log(sum_i exp(log_w[i] + x[..., i]))`` along the last axis, stable."""
    z = x + log_w
    m = np.max(z, axis=-1, keepdims=True)
    return np.asarray(m[..., 0] + np.log(np.sum(np.exp(z - m), axis=-1)), dtype=np.float64)


def tail_log_lr(y: NDArray[np.bool_], s: NDArray[np.int64], k: int,
                 rho: Floats) -> Floats:
    """``log LR_rho(Y_t, S_t)`` for each slice (rows) and odds ratio (columns).

    Exactly 0 for slices without a ``tau`` (``Y = S = 0``); 0 up to rounding for ``S = K + 1``.
    """
    s_ = s[:, None].astype(np.float64)
    log_lr = math.log(k + 1) - np.log(rho * s_ + (k + 1 - s_))
    return np.asarray(np.where(y[:, None], log_lr + np.log(rho), log_lr), dtype=np.float64)


def centre_log_lr(rank: NDArray[np.int64], k: int, gamma: Floats) -> Floats:
    """``log((K + 1) P_gamma(R_t))`` for each slice (rows) and Lehmann exponent (columns)."""
    r = rank[:, None].astype(np.float64)
    log_p = gamma * np.log1p(r) + np.log1p(-((r / (r + 1.0)) ** gamma)) - gamma * math.log(k + 1)
    return np.asarray(math.log(k + 1) + log_p, dtype=np.float64)

"""``gates.compare``: one entry point over every latency method, with one result shape.

Why one shape: the CLI, the canary runner, the controller and the benchmark all need the same
facts (per-arm n and P50/P95/P99 with intervals, the ratio, the method's own evidence, a
verdict), and a pipeline reading ``--output json`` should not care which method ran.

One margin under every method: ``limit = max_ratio * (1 + tolerance)``, and ``tolerance`` is 0
unless the caller passes it (no hidden slack). Green may be at most ``limit`` times slower
than blue; each method tests exactly that, or refuses:

``sequential``  the anytime-valid stratified exceedance e-test (:mod:`gates.stats.sequential`)
               with ``max_ratio = limit``; file order is arrival order, ``green[i]`` is paired
               with ``blue[K*i : K*(i+1)]``; data exhausted before a decision ->
               ``inconclusive``.
``kayenta``     Kayenta's Mann-Whitney classifier; ``high`` or ``low`` -> ``fail``. It has its
               own margin (``fraction`` of the estimated shift) and no ratio: ``limit != 1``
               raises ValueError rather than being ignored. ``confidence`` defaults to
               ``1 - 2 * alpha`` (0.98 at alpha 0.01, Kayenta's default), so ``alpha`` bounds
               the one-sided false-fail probability as under the other methods; ``direction``
               defaults to ``increase`` (a latency gate fails a slower green, not a faster one).
``mannwhitney`` one-sided Wilcoxon rank-sum test that green/limit is stochastically larger
               than blue, at level ``alpha``.
``bootstrap``   percentile-bootstrap interval of the quantile ratio against ``limit``.
``threshold``   the field's fixed rule: fail if ``P_q(green) > P_q(blue) * limit`` (no error
               control: ``alpha`` does not apply).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from gates._validation import NoDataError, as_latencies
from gates.stats.fixed import (
    BootstrapResult,
    ThresholdResult,
    bootstrap_ratio_test,
    threshold_test,
)
from gates.stats.kayenta import KayentaResult, kayenta_classify
from gates.stats.mannwhitney import MannWhitneyResult, mannwhitney
from gates.stats.quantiles import QuantileEstimate, QuantileRatio, quantile_ci, quantile_ratio
from gates.stats.sequential import SequentialResult, sequential_test
from gates.verdict import Verdict

__all__ = ["METHODS", "ArmSummary", "Comparison", "Method", "compare", "summarize"]

Method = Literal["sequential", "kayenta", "mannwhitney", "bootstrap", "threshold"]
METHODS: tuple[Method, ...] = ("sequential", "kayenta", "mannwhitney", "bootstrap", "threshold")
_REPORTED = (0.5, 0.95, 0.99)


@dataclass(frozen=True)
class ArmSummary:
    """Size and P50/P95/P99 (with exact order-statistic intervals) of one arm."""

    n: int
    quantiles: tuple[QuantileEstimate, ...] = ()

    def get(self, q: float) -> QuantileEstimate | None:
        """The estimate for quantile ``q``, if it was computed."""
        return next((e for e in self.quantiles if math.isclose(e.quantile, q)), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"n", "p50", "p95", "p99", "ci": {"p95": [lo, hi], ...}}``."""
        out: dict[str, Any] = {"n": self.n}
        ci: dict[str, list[float | None]] = {}
        for e in self.quantiles:
            key = f"p{round(e.quantile * 100):d}"
            out[key] = e.value
            ci[key] = [_finite_or_none(e.ci_low), _finite_or_none(e.ci_high)]
        for q in _REPORTED:
            out.setdefault(f"p{round(q * 100):d}", None)
        out["ci"] = ci
        return out


@dataclass(frozen=True)
class Comparison:
    """Result of :func:`compare`: the verdict plus every piece of evidence behind it."""

    verdict: Verdict
    method: Method
    reason: str
    blue: ArmSummary
    green: ArmSummary
    ratio: QuantileRatio | None = None
    mann_whitney: MannWhitneyResult | None = None
    kayenta: KayentaResult | None = None
    sequential: SequentialResult | None = None
    bootstrap: BootstrapResult | None = None
    threshold: ThresholdResult | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def decided_at(self) -> int | None:
        """Green observations the sequential judge consumed before deciding (None otherwise)."""
        return self.sequential.decided_at if self.sequential is not None else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; infinities become ``null`` so every consumer can parse it."""
        out: dict[str, Any] = {
            "verdict": self.verdict.value,
            "method": self.method,
            "reason": self.reason,
            "parameters": self.parameters,
            "blue": self.blue.to_dict(),
            "green": self.green.to_dict(),
        }
        if self.ratio is not None:
            out["ratio"] = _jsonable(asdict(self.ratio))
        if self.mann_whitney is not None:
            out["mann_whitney"] = _jsonable(asdict(self.mann_whitney))
        if self.kayenta is not None:
            out["kayenta"] = {"classification": self.kayenta.classification.value,
                              "reason": self.kayenta.reason}
        if self.sequential is not None:
            out["decided_at"] = self.sequential.decided_at
            out["sequential"] = _jsonable(self.sequential.summary())
        if self.bootstrap is not None:
            out["bootstrap"] = _jsonable(asdict(self.bootstrap))
        if self.threshold is not None:
            out["threshold"] = _jsonable(asdict(self.threshold))
        return out


def summarize(values: ArrayLike, *, arm: str, conf_level: float = 0.95,
              quantiles: tuple[float, ...] = _REPORTED) -> ArmSummary:
    """Per-arm n and quantiles with intervals; an empty arm gives ``n=0`` and no quantiles."""
    try:
        x = as_latencies(values, arm=arm)
    except NoDataError:
        return ArmSummary(n=0)
    return ArmSummary(n=int(x.size), quantiles=tuple(
        quantile_ci(x, q, conf_level=conf_level, arm=arm) for q in quantiles))


# One branch per method over shared validation and evidence: splitting it would scatter
# the single definition of what every method reports.
def compare(blue: ArrayLike, green: ArrayLike, *, method: Method = "sequential",
            quantile: float = 0.95, max_ratio: float = 1.0, alpha: float = 0.01,
            blue_per_green: int = 1, fraction: float = 0.25, confidence: float | None = None,
            direction: Literal["increase", "decrease", "either"] = "increase",
            tolerance: float = 0.0, conf_level: float = 0.95) -> Comparison:
    """Compare green's latencies with blue's and return a verdict with its evidence.

    Green may be at most ``max_ratio * (1 + tolerance)`` times slower under every method
    (module docstring); Kayenta only takes a limit of 1.

    Raises:
        LatencyInputError: a NaN, infinite or negative latency (never silently dropped).
        ValueError: an unknown method, an out-of-range parameter, or ``method="kayenta"``
            with ``max_ratio * (1 + tolerance) != 1``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not (math.isfinite(max_ratio) and max_ratio > 0):
        raise ValueError(f"max_ratio must be a finite number > 0, got {max_ratio!r}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    limit = max_ratio * (1.0 + tolerance)
    if method == "kayenta" and limit != 1.0:
        raise ValueError(
            f"method kayenta cannot honour a ratio limit of {limit:g} (max_ratio {max_ratio:g}, "
            f"tolerance {tolerance:g}): Kayenta's classifier has its own margin (fraction "
            "of the estimated shift); use max_ratio 1 and tolerance 0, or another method")
    params: dict[str, Any] = {"quantile": quantile, "max_ratio": max_ratio,
                              "tolerance": tolerance, "limit": limit, "alpha": alpha}
    b_sum = summarize(blue, arm="blue", conf_level=conf_level)
    g_sum = summarize(green, arm="green", conf_level=conf_level)
    common: dict[str, Any] = {"method": method, "blue": b_sum, "green": g_sum,
                              "parameters": params}
    if b_sum.n == 0 or g_sum.n == 0:
        empty = " and ".join(a for a, s in (("blue", b_sum), ("green", g_sum)) if s.n == 0)
        return Comparison(verdict=Verdict.NODATA, reason=f"no observations for {empty}",
                          **common)
    ratio = quantile_ratio(blue, green, quantile, conf_level=conf_level)
    common["ratio"] = ratio

    if method == "sequential":
        params["blue_per_green"] = blue_per_green
        seq = sequential_test(green, blue, blue_per_green=blue_per_green, quantile=quantile,
                              alpha=alpha, max_ratio=limit)
        verdict = seq.decision.verdict
        if verdict is Verdict.CONTINUE:
            verdict = Verdict.INCONCLUSIVE
        reason = seq.decision.reason
        if verdict is Verdict.INCONCLUSIVE:
            reason = f"data ran out after {seq.decision.slices} slices: {reason}"
        return Comparison(verdict=verdict, reason=reason, sequential=seq, **common)
    if method == "kayenta":
        level = 1.0 - 2.0 * alpha if confidence is None else confidence
        params.update(fraction=fraction, confidence=level, direction=direction)
        k = kayenta_classify(green, blue, fraction=fraction, confidence=level,
                             direction=direction)
        return Comparison(verdict=k.verdict, reason=f"kayenta {k.reason}", kayenta=k,
                          mann_whitney=k.mann_whitney, **common)
    if method == "mannwhitney":
        g_arr = as_latencies(green, arm="green") / limit
        b_arr = as_latencies(blue, arm="blue")
        if np.ptp(g_arr) == 0 and np.ptp(b_arr) == 0:
            # Both arms constant: the rank test is undefined (R stops); the order is certain.
            failed = bool(g_arr[0] > b_arr[0])
            return Comparison(verdict=Verdict.FAIL if failed else Verdict.PASS, reason=(
                f"both arms constant: green/limit {g_arr[0]:g} s vs blue {b_arr[0]:g} s"),
                **common)
        mw = mannwhitney(g_arr, b_arr, alternative="greater", conf_level=1.0 - alpha)
        failed = mw.p_value < alpha
        verdict = Verdict.FAIL if failed else Verdict.PASS
        word = "<" if failed else ">="
        return Comparison(verdict=verdict, mann_whitney=mw, reason=(
            f"one-sided rank-sum p = {mw.p_value:.3g} {word} alpha {alpha}"), **common)
    if method == "bootstrap":
        bs = bootstrap_ratio_test(blue, green, quantile=quantile, limit=limit,
                                  conf_level=1.0 - 2 * alpha)
        return Comparison(verdict=bs.verdict, bootstrap=bs, reason=(
            f"bootstrap P{quantile * 100:g} ratio {bs.estimate:.3f} "
            f"[{bs.ci_low:.3f}, {bs.ci_high:.3f}] vs limit {limit:.3f}"), **common)
    th = threshold_test(blue, green, quantile=quantile, limit=limit)
    return Comparison(verdict=th.verdict, threshold=th, reason=(
        f"P{quantile * 100:g} green {th.green_quantile:.3f}s vs blue {th.blue_quantile:.3f}s "
        f"x {limit:.3f}"), **common)


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _jsonable(obj: Any) -> Any:
    """Replace non-finite floats with None and enums/arrays with plain values, recursively."""
    if isinstance(obj, float):
        return _finite_or_none(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    if hasattr(obj, "value") and isinstance(obj.value, str):
        return obj.value
    return obj

"""The latency gate's policy block.

The gate compares green's request latencies with blue's through :func:`gates.compare`; the
default method is the anytime-valid sequential judge, so the canary can stop the moment the
evidence suffices while false rollbacks stay bounded by ``alpha`` at every look.

One meaning of the margin under every method and source: green's ``quantile`` may be at most
:attr:`LatencyGateSpec.limit` = ``maxRatio x (1 + tolerance)`` times blue's. ``tolerance`` is
explicit and 0 by default (no hidden slack); it exists for live histograms, whose quantiles
are interpolated within buckets. A combination that cannot honour that meaning is refused at
load: Kayenta's classifier has its own margin (``fraction`` of the estimated shift) and cannot
take a ratio, and a live-histogram gate (``source: prometheus``) applies the ratio rule to
interpolated quantiles, so it has no statistical ``method``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

__all__ = ["LatencyGateSpec"]

_CONFIG = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel,
                     frozen=True, allow_inf_nan=False)


class LatencyGateSpec(BaseModel):
    """Green's latency must not be worse than blue's by more than ``maxRatio``.

    ``ceilingSeconds`` adds an absolute bound on green's P-quantile (its order-statistic lower
    confidence bound must stay below it), for SLOs that hold whatever blue does.
    """

    model_config = _CONFIG

    type: Literal["latency"] = "latency"
    name: str = Field("latency", min_length=1, description="Gate name in verdicts and reports.")
    quantile: float = Field(0.95, gt=0, lt=1, description="Tail quantile judged, e.g. 0.95.")
    max_ratio: float = Field(1.0, gt=0, le=10, description=(
        "Non-inferiority margin: green's quantile may be at most maxRatio x (1 + tolerance) "
        "times blue's, under every method and source (1.0 = no slower, 1.1 = up to 10% "
        "slower)."))
    tolerance: float = Field(0.0, ge=0, le=1, description=(
        "Explicit slack multiplied into the margin: the limit is maxRatio x (1 + tolerance). "
        "Default 0; e.g. 0.15 on a source: prometheus gate absorbs histogram interpolation."))
    ceiling_seconds: float | None = Field(None, gt=0, le=3600, description=(
        "Absolute ceiling on green's quantile in seconds (optional)."))
    alpha: float = Field(0.01, gt=0, lt=0.5, description=(
        "Bound on the probability of rolling back a release that is not slower."))
    method: Literal["sequential", "kayenta", "mannwhitney", "bootstrap", "threshold"] = Field(
        "sequential", description="Statistical method (see docs/statistics.md).")
    source: Literal["canary", "prometheus"] = Field(
        "canary", description="Raw canary samples (preferred) or live Prometheus histograms.")

    @property
    def limit(self) -> float:
        """The margin every method applies: ``max_ratio * (1 + tolerance)``."""
        return self.max_ratio * (1.0 + self.tolerance)

    @model_validator(mode="after")
    def _one_meaning(self) -> LatencyGateSpec:
        if self.source == "prometheus" and self.method != "sequential":
            raise ValueError(
                f"method: {self.method} does not apply to source: prometheus: a live gate "
                "compares interpolated histogram quantiles with the ratio rule (green <= "
                "maxRatio x (1 + tolerance) x blue), no statistical test; remove method, or "
                "use source: canary to judge raw samples with it")
        if self.method == "kayenta" and self.limit != 1.0:
            raise ValueError(
                f"method: kayenta cannot honour maxRatio {self.max_ratio:g} / tolerance "
                f"{self.tolerance:g}: Kayenta's classifier has its own margin (a shift fails "
                "when its whole confidence interval lies beyond 25% of the estimated shift) "
                "and no ratio; set maxRatio: 1.0 and tolerance: 0, or use method sequential "
                "(or mannwhitney, which scales green by the ratio)")
        return self


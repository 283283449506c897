"""The latency gate's policy block.

The gate compares green's request latencies with blue's through :func:`gates.compare`; the
default method is the anytime-valid sequential judge, so the canary can stop the moment the
evidence suffices while false rollbacks stay bounded by ``alpha`` at every look.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = ["LatencyGateSpec"]

_CONFIG = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel,
                     frozen=True)


class LatencyGateSpec(BaseModel):
    """Green's latency must not be worse than blue's by more than ``maxRatio``.

    ``ceilingSeconds`` adds an absolute bound on green's P-quantile (its order-statistic lower
    confidence bound must stay below it), for SLOs that hold whatever blue does.
    """

    model_config = _CONFIG

    type: Literal["latency"] = "latency"
    name: str = Field("latency", min_length=1, description="Gate name in verdicts and reports.")
    quantile: float = Field(0.95, gt=0, lt=1, description="Tail quantile judged, e.g. 0.95.")
    max_ratio: float = Field(1.0, gt=0, description=(
        "Non-inferiority margin: green may be this many times slower than blue "
        "(1.0 = no slower, 1.1 = up to 10% slower)."))
    ceiling_seconds: float | None = Field(None, gt=0, description=(
        "Absolute ceiling on green's quantile in seconds (optional)."))
    alpha: float = Field(0.01, gt=0, lt=0.5, description=(
        "Bound on the probability of rolling back a release that is not slower."))
    method: Literal["sequential", "kayenta", "mannwhitney", "bootstrap", "threshold"] = Field(
        "sequential", description="Statistical method (see docs/statistics.md).")
    source: Literal["canary", "prometheus"] = Field(
        "canary", description="Raw canary samples (preferred) or live Prometheus histograms.")


"""A synthetic Stable Diffusion latency model and the regression scenarios the judges face.

Why synthetic: the judges' error rates and decision times must be measured over thousands of
replications where the truth is known, which real traffic cannot give. The model is the one of
``/work/shared/notes/judge-anchors.md`` (CPU Monte Carlo, not real traffic): one request takes

    L = 2.5 s * exp(0.08 Z) + J * X,   Z ~ N(0, 1),  J ~ Bernoulli(p_spike),  X ~ Exp(mean 1.5 s)

with ``p_spike = 0.05`` for blue (median 2.51 s, P95 2.98 s, P99 4.94 s): a tight log-normal
body (denoising steps are deterministic work) plus occasional slow requests (queueing, a
scheduler hiccup, a cold cache). Green follows one of :data:`SCENARIOS`. Everything is a pure
function of the ``numpy.random.Generator`` passed in, so tests and benchmarks are reproducible.

Requests are generated in *time slices* of one green and ``K = blue_per_green`` blue requests
served concurrently, the unit the sequential judge (:mod:`gates.stats.sequential`) consumes;
fixed-n methods take ``K = 1`` runs as two samples of ``n``. The ``drift`` scenario multiplies
both arms of a slice by the same load factor, ramping linearly from 1 to 1.1 over the first
``ramp_slices`` slices and flat afterwards: the conditions under which a baseline collected
before the canary (or a stale running quantile) misleads a judge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "BASE_MEDIAN_S",
    "BLUE_P_SPIKE",
    "LOG_SIGMA",
    "SCENARIOS",
    "SPIKE_MEAN_S",
    "Scenario",
    "SimulatedRun",
    "exceedance_probability",
    "get_scenario",
    "model_cdf",
    "model_quantile",
    "sd_latencies",
    "simulate",
]

#: Median of the log-normal body (seconds).
BASE_MEDIAN_S = 2.5
#: Log-scale standard deviation of the body.
LOG_SIGMA = 0.08
#: Mean of the exponential extra delay of a spike (seconds).
SPIKE_MEAN_S = 1.5
#: Blue's probability that a request is a spike.
BLUE_P_SPIKE = 0.05


@dataclass(frozen=True)
class Scenario:
    """How green (and, for drift, both arms) differ from the blue model.

    Attributes:
        name: short identifier used in tables (``"tail+30%"``).
        description: one line for reports.
        regression: whether a correct judge should roll this green back.
        p_spike: green's spike probability (blue's is :data:`BLUE_P_SPIKE`).
        scale: multiplies every green latency (``1.1`` = uniformly 10% slower).
        slow_fraction: fraction of green requests multiplied by ``slow_factor`` (bimodal).
        slow_factor: the multiplier of those requests.
        drift: amplitude of the load ramp applied to *both* arms (``0.1`` = +10%).
    """

    name: str
    description: str
    regression: bool
    p_spike: float = BLUE_P_SPIKE
    scale: float = 1.0
    slow_fraction: float = 0.0
    slow_factor: float = 1.0
    drift: float = 0.0


#: The benchmark's scenarios, null first. P(green > blue's P95) is 0.05 for the nulls, about
#: 0.19 / 0.10 / 0.08 / 1.0 / 0.24 for the regressions (see :func:`exceedance_probability`).
SCENARIOS: tuple[Scenario, ...] = (
    Scenario("null", "green = blue", regression=False),
    Scenario("drift+10%", "green = blue, both arms ramp +10% (load)", regression=False,
             drift=0.10),
    Scenario("median+10%", "every green request 10% slower", regression=True, scale=1.10),
    Scenario("tail+30%", "tail only: spikes 12.3% (P95 +30%)", regression=True, p_spike=0.123),
    Scenario("tail+15%", "tail only: spikes 9.1% (P95 +15%)", regression=True, p_spike=0.091),
    Scenario("cpu-x15", "CPU fallback: every request x15", regression=True, scale=15.0),
    Scenario("bimodal", "20% of green requests x1.6", regression=True, slow_fraction=0.20,
             slow_factor=1.6),
)


def get_scenario(name: str) -> Scenario:
    """The scenario called ``name``; raises ``KeyError`` listing the known names."""
    for s in SCENARIOS:
        if s.name == name:
            return s
    raise KeyError(f"unknown scenario {name!r}; known: {', '.join(s.name for s in SCENARIOS)}")


def sd_latencies(rng: np.random.Generator, size: int | tuple[int, ...], *,
                 p_spike: float = BLUE_P_SPIKE) -> NDArray[np.float64]:
    """Draw latencies (seconds) from the SD model with spike probability ``p_spike``."""
    body = BASE_MEDIAN_S * np.exp(LOG_SIGMA * rng.standard_normal(size))
    spikes = rng.random(size) < p_spike
    extra = rng.exponential(SPIKE_MEAN_S, size)
    return np.asarray(body + np.where(spikes, extra, 0.0), dtype=np.float64)


@dataclass(frozen=True)
class SimulatedRun:
    """One run of ``n`` slices: ``green[i]`` was served alongside ``blue[K*i : K*(i+1)]``."""

    green: NDArray[np.float64]
    blue: NDArray[np.float64]
    blue_per_green: int


def simulate(scenario: Scenario | str, n_slices: int, rng: np.random.Generator, *,
             blue_per_green: int = 1, ramp_slices: int = 200) -> SimulatedRun:
    """Generate ``n_slices`` slices of one green and ``blue_per_green`` blue latencies.

    Deterministic given ``rng``'s state. ``ramp_slices`` sets how fast a drifting scenario's
    common load factor reaches ``1 + drift`` (ignored by the others).
    """
    sc = get_scenario(scenario) if isinstance(scenario, str) else scenario
    if n_slices < 0 or blue_per_green < 1 or ramp_slices < 1:
        raise ValueError("need n_slices >= 0, blue_per_green >= 1 and ramp_slices >= 1")
    k = blue_per_green
    blue = sd_latencies(rng, (n_slices, k))
    green = sd_latencies(rng, n_slices, p_spike=sc.p_spike) * sc.scale
    if sc.slow_fraction > 0:
        green = np.where(rng.random(n_slices) < sc.slow_fraction, green * sc.slow_factor, green)
    if sc.drift != 0:
        load = 1.0 + sc.drift * np.minimum(np.arange(n_slices) / ramp_slices, 1.0)
        green = green * load
        blue = blue * load[:, None]
    return SimulatedRun(green=green, blue=blue.reshape(-1), blue_per_green=k)


# Quadrature nodes over the standard normal body, shared by the exact CDFs below.
_Z = np.linspace(-9.0, 9.0, 6001)
_PHI = np.exp(-0.5 * _Z**2) / np.sqrt(2.0 * np.pi)


def model_cdf(x: float, *, p_spike: float = BLUE_P_SPIKE) -> float:
    """``P(L <= x)`` for the undrifted model, by quadrature over the log-normal body.

    For a body value ``B = b``, the latency is ``<= x`` if no spike and ``b <= x`` or a spike
    with ``X <= x - b``, which has probability ``1 - exp(-(x - b) / 1.5)``.
    """
    if x <= 0:
        return 0.0
    body = BASE_MEDIAN_S * np.exp(LOG_SIGMA * _Z)
    room = np.maximum(x - body, 0.0)
    below = body <= x
    p_no_spike = np.where(below, 1.0, 0.0)
    p_spike_ok = np.where(below, -np.expm1(-room / SPIKE_MEAN_S), 0.0)
    integrand = (1.0 - p_spike) * p_no_spike + p_spike * p_spike_ok
    return float(np.trapezoid(integrand * _PHI, _Z))


def model_quantile(q: float, *, p_spike: float = BLUE_P_SPIKE) -> float:
    """The exact ``q``-quantile of the undrifted model (bisection on :func:`model_cdf`)."""
    lo, hi = 0.0, BASE_MEDIAN_S * 100.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if model_cdf(mid, p_spike=p_spike) < q:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def exceedance_probability(scenario: Scenario | str, quantile: float = 0.95) -> float:
    """``P(green > blue's true quantile)`` under ``scenario`` (undrifted): the ``p1`` of the
    exceedance SPRT that bounds every judge, which is ``1 - quantile`` under the nulls."""
    sc = get_scenario(scenario) if isinstance(scenario, str) else scenario
    tau = model_quantile(quantile)

    def green_cdf(x: float) -> float:
        return model_cdf(x / sc.scale, p_spike=sc.p_spike)

    cdf = (1.0 - sc.slow_fraction) * green_cdf(tau)
    if sc.slow_fraction > 0:
        cdf += sc.slow_fraction * green_cdf(tau / sc.slow_factor)
    return 1.0 - cdf

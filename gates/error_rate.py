r"""The error-rate gate: green's failed-request fraction, judged with anytime-valid evidence.

Why not "fail if errors / requests > maxRate": checked after every canary request, that rule
rolls back healthy releases whenever two early errors land close together, and waiting for a
fixed n throws away the chance to stop a green that answers nothing but 500s after a handful of
requests. Like the latency judge (:mod:`gates.stats.sequential`) this gate uses e-processes
(Ville's inequality), so it may be looked at after every request and stopped at any time.

Let ``p`` be green's per-request failure probability and ``p0 = maxRate``. After ``n`` green
requests with ``x`` failures:

*Fail* evidence (null "p <= p0") is the uniform mixture, over alternatives ``p1`` in
:func:`fail_alternatives` (all ``> p0``), of the likelihood ratios

    LR(p1) = (p1 / p0)^x ((1 - p1) / (1 - p0))^(n - x).

Each is a test supermartingale for every ``p <= p0`` (its one-step mean
``p p1/p0 + (1-p)(1-p1)/(1-p0)`` increases in ``p`` and equals 1 at ``p0``), so failing when the
mixture reaches ``1 / alpha`` rolls back a green within its error budget with probability at most
``alpha``, whenever the run is looked at or stopped. With ``maxRate = 0`` a single failure fails.

*Pass* evidence (null "p >= p_f", ``p_f = min(futility_ratio * p0, (1 + p0) / 2)``) is
``(p0 / p_f)^x ((1 - p0) / (1 - p_f))^(n - x)``, a supermartingale whenever ``p >= p_f``:
passing when it reaches ``1 / beta`` (and at least ``minRequests`` requests were seen) passes a
green that fails ``futility_ratio`` times too often with probability at most ``beta``. Without
failures this takes ``ln(1/beta) / ln((1 - p0) / (1 - p_f))`` requests: 56 at ``maxRate = 0.05``,
296 at ``0.01`` (for ``beta = 0.05``, ``futility_ratio = 2``). With ``maxRate = 0`` nothing can be
ruled out statistically: the gate passes after ``minRequests`` requests without a failure.

Decisions are sticky in one direction only: a *pass* may still turn into a *fail* if the run goes
on (other gates undecided) and failures pile up, because the fail e-process stays valid at every
look; a *fail* is final. Until either evidence suffices the verdict is ``continue``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from gates._validation import check_probability
from gates.verdict import Verdict

__all__ = [
    "FAIL_RATE_FACTORS",
    "ErrorRateGateSpec",
    "ErrorRateJudge",
    "ErrorRateResult",
    "evaluate_error_rate",
    "fail_alternatives",
]

#: Alternatives of the fail mixture, as multiples of ``maxRate`` (plus 0.5 and 0.9 absolute,
#: so that a green failing nearly everything is caught within two or three requests).
FAIL_RATE_FACTORS: tuple[float, ...] = (1.5, 2.0, 3.0, 5.0, 10.0, 20.0)
_FAIL_ABSOLUTE: tuple[float, ...] = (0.5, 0.9)


class ErrorRateGateSpec(BaseModel):
    """Green's failed-request fraction must stay at or below ``maxRate``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=to_camel,
                              frozen=True, allow_inf_nan=False)

    type: Literal["error-rate"] = "error-rate"
    name: str = Field("error-rate", min_length=1)
    max_rate: float = Field(0.01, ge=0, lt=1, description="Largest acceptable error fraction.")
    min_requests: int = Field(20, ge=1, le=1_000_000, description=(
        "Requests needed before a pass can be declared (a failure can come sooner)."))


@dataclass(frozen=True)
class ErrorRateResult:
    """The error-rate gate's state after ``requests`` green requests.

    Attributes:
        verdict: ``fail``, ``pass``, ``continue`` (evidence insufficient so far) or ``nodata``
            (no request yet).
        requests: green requests judged.
        errors: failed ones among them.
        rate: ``errors / requests`` (NaN without requests).
        max_rate: the gate's ``maxRate``.
        fail_e: fail evidence (mixture likelihood ratio); fails at ``fail_threshold``.
        fail_threshold: ``1 / alpha``.
        pass_e: pass evidence; passes at ``pass_threshold`` once ``min_requests`` were seen.
        pass_threshold: ``1 / beta``.
        decided_at: request count at which the verdict last became ``pass`` or ``fail``.
        reason: one human sentence.
    """

    verdict: Verdict
    requests: int
    errors: int
    rate: float
    max_rate: float
    fail_e: float
    fail_threshold: float
    pass_e: float
    pass_threshold: float
    decided_at: int | None
    reason: str


def fail_alternatives(max_rate: float) -> tuple[float, ...]:
    """The failure probabilities ``p1 > max_rate`` mixed in the fail evidence."""
    grid = {max_rate * f for f in FAIL_RATE_FACTORS} | set(_FAIL_ABSOLUTE)
    alternatives = tuple(sorted(p for p in grid if max_rate < p < 1))
    # maxRate >= 0.9 leaves no grid point above it: half-way to 1 keeps the mixture non-empty.
    return alternatives or ((1 + max_rate) / 2,)


class ErrorRateJudge:
    """Streaming error-rate gate: feed it each green request's outcome, in order.

    Args:
        max_rate: ``maxRate``, the largest acceptable failure probability (``[0, 1)``).
        min_requests: requests needed before a pass.
        alpha: bound on the probability of failing a green whose error rate is within budget.
        beta: bound on the probability of passing a green failing ``futility_ratio`` times too
            often.
        futility_ratio: how much worse than ``max_rate`` a pass must rule out (> 1).

    Raises:
        ValueError: a parameter out of range.
    """

    def __init__(self, max_rate: float = 0.01, min_requests: int = 20, *, alpha: float = 0.01,
                 beta: float = 0.05, futility_ratio: float = 2.0) -> None:
        if not 0 <= max_rate < 1:
            raise ValueError(f"max_rate must lie in [0, 1), got {max_rate!r}")
        if min_requests < 1:
            raise ValueError(f"min_requests must be >= 1, got {min_requests!r}")
        if not (math.isfinite(futility_ratio) and futility_ratio > 1):
            raise ValueError(f"futility_ratio must be a finite number > 1, got {futility_ratio!r}")
        self.max_rate = float(max_rate)
        self.min_requests = int(min_requests)
        self.alpha = check_probability(alpha, "alpha")
        self.beta = check_probability(beta, "beta")
        self.futility_rate = min(futility_ratio * self.max_rate, (1 + self.max_rate) / 2)
        self._alts = fail_alternatives(self.max_rate)
        self._n = 0
        self._x = 0
        self._verdict = Verdict.NODATA
        self._decided_at: int | None = None
        self._result = self._evaluate()

    @classmethod
    def from_spec(cls, spec: ErrorRateGateSpec, *, alpha: float = 0.01,
                  beta: float = 0.05) -> ErrorRateJudge:
        """A judge configured from a policy's error-rate gate block."""
        return cls(spec.max_rate, spec.min_requests, alpha=alpha, beta=beta)

    @property
    def result(self) -> ErrorRateResult:
        """The current state (``nodata`` before the first request)."""
        return self._result

    def observe(self, failed: bool) -> ErrorRateResult:
        """Consume one green request's outcome (``failed=True`` for any failure kind)."""
        return self.observe_counts(1, int(bool(failed)))

    def observe_counts(self, requests: int, errors: int) -> ErrorRateResult:
        """Consume ``requests`` more green requests, ``errors`` of them failed, in one look.

        Raises:
            ValueError: negative counts or ``errors > requests``.
        """
        if requests < 0 or not 0 <= errors <= requests:
            raise ValueError(f"need 0 <= errors <= requests, got errors={errors}, "
                             f"requests={requests}")
        self._n += requests
        self._x += errors
        self._result = self._evaluate()
        return self._result

    def _log_fail_e(self) -> float:
        n, x, p0 = self._n, self._x, self.max_rate
        if p0 == 0:
            return math.inf if x else 0.0
        terms = [x * math.log(p1 / p0) + (n - x) * math.log((1 - p1) / (1 - p0))
                 for p1 in self._alts]
        m = max(terms)
        return m + math.log(sum(math.exp(t - m) for t in terms) / len(terms))

    def _log_pass_e(self) -> float:
        n, x, p0, pf = self._n, self._x, self.max_rate, self.futility_rate
        if p0 == 0:  # nothing to rule out statistically: "no failure in min_requests"
            return -math.inf if x else 0.0
        return x * math.log(p0 / pf) + (n - x) * math.log((1 - p0) / (1 - pf))

    def _evaluate(self) -> ErrorRateResult:
        log_fail, log_pass = self._log_fail_e(), self._log_pass_e()
        fail_at, pass_at = 1 / self.alpha, 1 / self.beta
        if self._verdict is not Verdict.FAIL:
            verdict: Verdict = self._verdict
            if log_fail >= math.log(fail_at):
                verdict = Verdict.FAIL
            elif self._n >= self.min_requests and (
                    log_pass >= math.log(pass_at) or (self.max_rate == 0 and self._x == 0)):
                verdict = Verdict.PASS
            elif self._n > 0 and verdict is Verdict.NODATA:
                verdict = Verdict.CONTINUE
            if verdict is not self._verdict and verdict in (Verdict.PASS, Verdict.FAIL):
                self._decided_at = self._n
            self._verdict = verdict
        rate = self._x / self._n if self._n else math.nan
        return ErrorRateResult(
            verdict=self._verdict, requests=self._n, errors=self._x, rate=rate,
            max_rate=self.max_rate, fail_e=_exp(log_fail), fail_threshold=fail_at,
            pass_e=_exp(log_pass), pass_threshold=pass_at, decided_at=self._decided_at,
            reason=self._reason(rate, _exp(log_fail), _exp(log_pass)))

    def _reason(self, rate: float, fail_e: float, pass_e: float) -> str:
        seen = f"{self._x} of {self._n} green requests failed"
        if self._verdict is Verdict.NODATA:
            return "no green requests yet"
        if self._verdict is Verdict.FAIL:
            return (f"{seen} ({rate:.1%}): error rate above {self.max_rate:.2%} "
                    f"(evidence {fail_e:.3g} >= {1 / self.alpha:g}; false-fail risk <= "
                    f"alpha = {self.alpha:g})")
        if self._verdict is Verdict.PASS and self.max_rate == 0:
            return f"{seen}: none in at least {self.min_requests} requests"
        if self._verdict is Verdict.PASS:
            return (f"{seen} ({rate:.1%}): a rate of {self.futility_rate:.2%} or more ruled "
                    f"out at beta = {self.beta:g}")
        short = (f", at least {self.min_requests} requests needed"
                 if self._n < self.min_requests else "")
        return (f"{seen} ({rate:.1%}): need more requests (fail evidence {fail_e:.3g} of "
                f"{1 / self.alpha:g}, pass evidence {pass_e:.3g} of {1 / self.beta:g}{short})")


def evaluate_error_rate(errors: int, requests: int, spec: ErrorRateGateSpec | None = None, *,
                        alpha: float = 0.01, beta: float = 0.05) -> ErrorRateResult:
    """Judge totals seen at one look (e.g. counters scraped from live traffic).

    Raises:
        ValueError: negative counts, ``errors > requests``, or a parameter out of range.
    """
    judge = ErrorRateJudge.from_spec(spec if spec is not None else ErrorRateGateSpec(),
                                     alpha=alpha, beta=beta)
    return judge.observe_counts(requests, errors)


def _exp(log_v: float) -> float:
    return math.inf if log_v >= 709 else math.exp(log_v)

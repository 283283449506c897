"""Verdicts shared by every gate and statistical test.

One vocabulary everywhere, so that a pipeline reading ``--output json`` never has to
translate between tools: ``pass`` and ``fail`` are decisions, ``continue`` means a
sequential test wants more data, ``inconclusive`` means the budget ran out before the
evidence sufficed, ``nodata`` means there was nothing to judge (never treated as a pass),
and ``error`` means the measurement itself broke (counted, never crashing the controller).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["EXIT_CODES", "Verdict"]


class Verdict(StrEnum):
    """Outcome of a gate or a statistical comparison."""

    PASS = "pass"
    FAIL = "fail"
    CONTINUE = "continue"
    INCONCLUSIVE = "inconclusive"
    NODATA = "nodata"
    ERROR = "error"


#: Process exit code for each final verdict (2 is reserved for bad input).
EXIT_CODES: dict[Verdict, int] = {
    Verdict.PASS: 0,
    Verdict.FAIL: 1,
    Verdict.INCONCLUSIVE: 3,
    Verdict.CONTINUE: 3,
    Verdict.NODATA: 4,
    Verdict.ERROR: 4,
}

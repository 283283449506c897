"""What a policy load refuses with: :class:`PolicyIssue` (file, line, field, message),
:class:`PolicyError` (every issue found), and the :class:`LoaderLimits` on a document."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_LIMITS", "LoaderLimits", "PolicyError", "PolicyIssue", "dotted",
           "non_finite_message"]


@dataclass(frozen=True)
class LoaderLimits:
    """Bounds on a policy document (see the module docstring for why these values)."""

    max_bytes: int = 1 << 20
    max_depth: int = 64
    max_nodes: int = 10_000
    max_aliases: int = 100


DEFAULT_LIMITS = LoaderLimits()


@dataclass(frozen=True)
class PolicyIssue:
    """One problem in a policy file."""

    file: str
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path or '<document>'}: {self.message}"


class PolicyError(ValueError):
    """A policy file is invalid; ``issues`` lists every problem found, not just the first."""

    def __init__(self, issues: Sequence[PolicyIssue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))



def dotted(keys: tuple[Any, ...]) -> str:
    out = ""
    for k in keys:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out



def non_finite_message(written: str, value: float) -> str:
    what = "not a number (NaN)" if math.isnan(value) else "infinite"
    return (f"{written} is {what}: the controller cannot run with it and the saved JSON copy of "
            "the policy cannot store it; write a finite number (e.g. 1.5 for a ratio, 3600 for "
            "seconds), or leave the field out for its default")

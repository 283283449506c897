"""Seeded canary requests to blue and green in shared time slices, judged as they finish.

The pieces, each in its own module: prompt sets (:mod:`~gates.canary.prompts`), one adapter
per image API (:mod:`~gates.canary.adapters`), the run's settings (:mod:`~gates.canary.config`),
each arm's fleet of instances and how requests are spread over them (:mod:`~gates.canary.fleet`),
the async runner (:mod:`~gates.canary.runner`, with its loops in :mod:`~gates.canary.loops`,
one request in :mod:`~gates.canary.exchange` and what it reports in
:mod:`~gates.canary.outcome`), the judging of finished slices
(:mod:`~gates.canary.evaluation`), JSON Lines records readable by ``rollout compare``
(:mod:`~gates.canary.records`), the image check (:mod:`~gates.canary.output_check`) and a
loopback server with a known service time for benchmarks and tests
(:mod:`~gates.canary.loopback`). Verdicts are :class:`gates.gate.GateResult`, combined by
:func:`gates.gate.combine`.
"""

from gates.canary.adapters import API_NAMES, ImageAPI, get_adapter
from gates.canary.evaluation import CanaryEvaluation, SliceOutcome
from gates.canary.fleet import Instance
from gates.canary.outcome import InstanceOutcome
from gates.canary.output_check import OutputCheckResult, OutputCheckSpec
from gates.canary.prompts import Prompt, PromptSet, PromptSetError, load_prompts, parse_prompts
from gates.canary.records import ERROR_KINDS, RecordWriter, RequestRecord, in_arm_file
from gates.canary.runner import (
    CanaryConfig,
    CanaryProgress,
    CanaryResult,
    run_canary,
    run_canary_sync,
)
from gates.gate import GateResult, combine

__all__ = [
    "API_NAMES",
    "ERROR_KINDS",
    "CanaryConfig",
    "CanaryEvaluation",
    "CanaryProgress",
    "CanaryResult",
    "GateResult",
    "ImageAPI",
    "Instance",
    "InstanceOutcome",
    "OutputCheckResult",
    "OutputCheckSpec",
    "Prompt",
    "PromptSet",
    "PromptSetError",
    "RecordWriter",
    "RequestRecord",
    "SliceOutcome",
    "combine",
    "get_adapter",
    "in_arm_file",
    "load_prompts",
    "parse_prompts",
    "run_canary",
    "run_canary_sync",
]

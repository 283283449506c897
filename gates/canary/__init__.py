"""Seeded canary requests to blue and green in shared time slices, judged as they finish.

The pieces, each in its own module: prompt sets (:mod:`~gates.canary.prompts`), one adapter
per image API (:mod:`~gates.canary.adapters`), the async runner
(:mod:`~gates.canary.runner`), the judging of finished slices
(:mod:`~gates.canary.evaluation`), JSON Lines records readable by ``rollout compare``
(:mod:`~gates.canary.records`), the image check (:mod:`~gates.canary.output_check`) and a
loopback server with a known service time for benchmarks and tests
(:mod:`~gates.canary.loopback`).
"""

from gates.canary.adapters import API_NAMES, ImageAPI, get_adapter
from gates.canary.evaluation import CanaryEvaluation, GateResult, SliceOutcome, combine_verdicts
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

__all__ = [
    "API_NAMES",
    "ERROR_KINDS",
    "CanaryConfig",
    "CanaryEvaluation",
    "CanaryProgress",
    "CanaryResult",
    "GateResult",
    "ImageAPI",
    "OutputCheckResult",
    "OutputCheckSpec",
    "Prompt",
    "PromptSet",
    "PromptSetError",
    "RecordWriter",
    "RequestRecord",
    "SliceOutcome",
    "combine_verdicts",
    "get_adapter",
    "in_arm_file",
    "load_prompts",
    "parse_prompts",
    "run_canary",
    "run_canary_sync",
]

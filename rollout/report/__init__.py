"""Evidence people can look at: the HTML rollout report and per-decision evidence bundles.

* :func:`load_rollout` / :func:`load_records` gather what a report shows (from a rollout's
  state directory, or from canary records alone) into :class:`ReportData`;
* :func:`render_report` / :func:`write_report` turn it into one self-contained HTML page
  (plots need matplotlib: the ``report`` extra);
* :class:`EvidenceWriter` is a ``Controller.on_transition`` callback writing one JSON bundle
  per decision next to the state; :func:`utilization_evidence` is what the analyzer records for
  the utilization timeline.

Importing this package does not import matplotlib.
"""

from rollout.report.evidence import EvidenceWriter, decision_bundle, utilization_evidence
from rollout.report.html import render_report, write_report
from rollout.report.source import (
    CanaryRun,
    LatencyGateParams,
    ReportData,
    load_records,
    load_rollout,
)

__all__ = [
    "CanaryRun",
    "EvidenceWriter",
    "LatencyGateParams",
    "ReportData",
    "decision_bundle",
    "load_records",
    "load_rollout",
    "render_report",
    "utilization_evidence",
    "write_report",
]

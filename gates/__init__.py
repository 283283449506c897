"""gates: the statistics and gates that decide whether green may take traffic.

Pure functions over numpy arrays with named results (scipy style); every verdict is one of
:class:`Verdict`. The controller (:mod:`rollout`) composes them; nothing here imports torch.
"""

from gates._validation import LatencyInputError, NoDataError
from gates.compare import METHODS, ArmSummary, Comparison, compare, summarize
from gates.records import LatencyRecords, RecordsError, load_latencies
from gates.stats.fixed import (
    BootstrapResult,
    ThresholdResult,
    bootstrap_ratio_test,
    threshold_test,
)
from gates.stats.kayenta import Classification, KayentaResult, kayenta_classify
from gates.stats.mannwhitney import MannWhitneyResult, mannwhitney
from gates.stats.quantiles import QuantileEstimate, QuantileRatio, quantile_ci, quantile_ratio
from gates.stats.sequential import Decision, SequentialJudge, SequentialResult, sequential_test
from gates.verdict import EXIT_CODES, Verdict

__all__ = [
    "EXIT_CODES",
    "METHODS",
    "ArmSummary",
    "BootstrapResult",
    "Classification",
    "Comparison",
    "Decision",
    "KayentaResult",
    "LatencyInputError",
    "LatencyRecords",
    "MannWhitneyResult",
    "NoDataError",
    "QuantileEstimate",
    "QuantileRatio",
    "RecordsError",
    "SequentialJudge",
    "SequentialResult",
    "ThresholdResult",
    "Verdict",
    "bootstrap_ratio_test",
    "compare",
    "kayenta_classify",
    "load_latencies",
    "mannwhitney",
    "quantile_ci",
    "quantile_ratio",
    "sequential_test",
    "summarize",
    "threshold_test",
]

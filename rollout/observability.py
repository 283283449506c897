"""Controller observability: Prometheus metrics, structured logs, and safe callback composition.

Metrics (Prometheus text exposition format 0.0.4, served at ``/metrics`` with
``--metrics-port``):

* ``rollout_phase{rollout,phase}`` (gauge): 1 for the current phase, 0 for every other;
* ``rollout_traffic_weight_percent{rollout,arm}`` (gauge): weights the router last read back;
* ``rollout_transitions_total{rollout,from,to}`` (counter): persisted transitions;
* ``rollout_gate_decisions_total{rollout,gate,verdict}`` (counter): every gate verdict;
* ``rollout_analysis_duration_seconds{rollout,phase}`` (histogram): admission, analysis and
  verification phases, end to end;
* ``rollout_canary_requests_total{rollout,arm,outcome}`` (counter): measured canary requests,
  ``ok`` or their error kind.

Why a few dozen lines of our own instead of ``prometheus_client``: the controller is a CLI
process with six metric families; the text format is small and stable, and one less dependency
is one less thing to install on every CI runner. The format is checked with ``promtool check
metrics`` in the tests.

Why callbacks are isolated (:func:`compose`): metrics, logs, evidence bundles and notifications
are observers. The controller persists each transition before calling them, so an observer that
raises must not stop the rollout half-way; :func:`compose` logs the failure and carries on.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the CLI imports this module at start-up: keep pydantic and scipy out
    from http.server import ThreadingHTTPServer

    from rollout.machine import Observation, RolloutStatus

    Transition = Callable[[RolloutStatus, RolloutStatus, Observation], None]

__all__ = [
    "ANALYSIS_BUCKETS",
    "ControllerMetrics",
    "JsonFormatter",
    "LogFormat",
    "MetricsServer",
    "compose",
    "configure",
    "configure_logging",
    "log_format",
    "log_transition",
    "metrics",
    "serve_metrics",
]

_log = logging.getLogger("rollout.controller")

#: Seconds: SD canary analyses take from seconds (a fast-failing regression) to half an hour.
ANALYSIS_BUCKETS: tuple[float, ...] = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)
_ANALYSIS_PHASES = frozenset({"Admitting", "Analyzing", "Verifying"})


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class _Family:
    """One metric family: name, type, help, label names and its samples."""

    def __init__(self, name: str, kind: str, doc: str, labels: Sequence[str]) -> None:
        self.name, self.kind, self.doc, self.labels = name, kind, doc, tuple(labels)
        self.values: dict[tuple[str, ...], float] = {}

    def set(self, labels: Sequence[str], value: float) -> None:
        self.values[tuple(labels)] = value

    def inc(self, labels: Sequence[str], amount: float = 1.0) -> None:
        key = tuple(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} {self.kind}"]
        out += [f"{self.name}{_labels(self.labels, k)} {_num(v)}"
                for k, v in sorted(self.values.items())]
        return out


class _Histogram(_Family):
    """Cumulative buckets, sum and count per label set."""

    def __init__(self, name: str, doc: str, labels: Sequence[str],
                 buckets: Sequence[float]) -> None:
        super().__init__(name, "histogram", doc, labels)
        self.buckets = tuple(sorted(buckets))
        self.series: dict[tuple[str, ...], tuple[list[int], float, int]] = {}

    def observe(self, labels: Sequence[str], value: float) -> None:
        key = tuple(labels)
        counts, total, n = self.series.get(key, ([0] * len(self.buckets), 0.0, 0))
        for j in range(bisect.bisect_left(self.buckets, value), len(counts)):
            counts[j] += 1
        self.series[key] = (counts, total + value, n + 1)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} histogram"]
        for key, (counts, total, n) in sorted(self.series.items()):
            bounds = [*(_num(b) for b in self.buckets), "+Inf"]
            for le, c in zip(bounds, [*counts, n], strict=True):
                bucket = _labels(self.labels, key, 'le="' + le + '"')
                out.append(f"{self.name}_bucket{bucket} {c}")
            out.append(f"{self.name}_sum{_labels(self.labels, key)} {_num(total)}")
            out.append(f"{self.name}_count{_labels(self.labels, key)} {n}")
        return out


class ControllerMetrics:
    """The controller's metrics; an instance is a ``Controller.on_transition`` callback.

    ``rollout_analysis_duration_seconds`` is the time from the previous transition (or from
    this object's creation, for the first) to the transition that ends an admission, analysis
    or verification: the whole phase action, canary and live queries included.

    Args:
        clock: monotonic clock (tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        from rollout.machine import Phase

        self.clock = clock
        self._phases = tuple(p.value for p in Phase)
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._started = clock()
        self.phase = _Family("rollout_phase", "gauge",
                             "1 for the rollout's current phase, 0 for every other phase.",
                             ("rollout", "phase"))
        self.weight = _Family("rollout_traffic_weight_percent", "gauge",
                              "Traffic share per arm as the router last read it back.",
                              ("rollout", "arm"))
        self.transitions = _Family("rollout_transitions_total", "counter",
                                   "Persisted phase transitions.", ("rollout", "from", "to"))
        self.decisions = _Family("rollout_gate_decisions_total", "counter",
                                 "Gate verdicts reported by admissions, analyses and "
                                 "verifications.", ("rollout", "gate", "verdict"))
        self.analysis = _Histogram("rollout_analysis_duration_seconds",
                                   "Duration of admission, analysis and verification phases.",
                                   ("rollout", "phase"), ANALYSIS_BUCKETS)
        self.canary = _Family("rollout_canary_requests_total", "counter",
                              "Measured canary requests per arm by outcome (ok or error kind).",
                              ("rollout", "arm", "outcome"))

    def __call__(self, prev: RolloutStatus, nxt: RolloutStatus, obs: Observation) -> None:
        now = self.clock()
        name = nxt.name
        with self._lock:
            for phase in self._phases:
                self.phase.set((name, phase), 1.0 if phase == nxt.phase.value else 0.0)
            if nxt.weights is not None:
                self.weight.set((name, "blue"), nxt.weights.blue)
                self.weight.set((name, "green"), nxt.weights.green)
            self.transitions.inc((name, prev.phase.value, nxt.phase.value))
            for gate, g in obs.gates.items():
                self.decisions.inc((name, gate, g.verdict.value))
            if prev.phase.value in _ANALYSIS_PHASES:
                key = (name, prev.phase.value)
                self.analysis.observe(key, now - self._last.get(name, self._started))
            self._last[name] = now
            canary = obs.evidence.get("canary") or {}
            errors: Mapping[str, Mapping[str, int]] = canary.get("errors") or {}
            for arm, n in (canary.get("requests") or {}).items():
                failed = errors.get(arm, {})
                self.canary.inc((name, arm, "ok"), n - sum(failed.values()))
                for kind, count in failed.items():
                    self.canary.inc((name, arm, kind), count)

    def exposition(self) -> str:
        """Every metric in the Prometheus text format."""
        with self._lock:
            families = (self.phase, self.weight, self.transitions, self.decisions,
                        self.analysis, self.canary)
            return "\n".join(line for f in families for line in f.render()) + "\n"


class MetricsServer:
    """``/metrics`` over HTTP from a daemon thread; ``close()`` stops it."""

    def __init__(self, metrics: ControllerMetrics, *, host: str, port: int) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        registry = metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics here")
                    return
                body = registry.exposition().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would drown the controller's own log

        self._server: ThreadingHTTPServer = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="rollout-metrics", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve_metrics(metrics: ControllerMetrics, port: int,
                  host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``metrics`` at ``http://host:port/metrics`` (loopback unless told otherwise).

    Raises:
        OSError: the port cannot be bound.
    """
    return MetricsServer(metrics, host=host, port=port)


# -- logs -----------------------------------------------------------------------------------


class LogFormat(StrEnum):
    """``--log-format`` choices."""

    text = "text"
    json = "json"


_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message",
                                                                                  "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` and every ``extra``
    field, so log pipelines can filter on ``rollout``, ``to``, ``gates``... without parsing
    prose."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is *now* (test runners and ``rollout demo`` swap it),
    never to a stream captured at configuration time and closed since."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure_logging(fmt: LogFormat = LogFormat.text, *, level: int = logging.INFO,
                      stream: Any = None) -> logging.Handler:
    """Send the ``rollout`` loggers to ``stream`` (default: stderr) as text or JSON lines.

    Idempotent: a second call replaces the handler the first one installed.
    """
    logger = logging.getLogger("rollout")
    for h in list(logger.handlers):
        if getattr(h, "_rollout_handler", False):
            logger.removeHandler(h)
    handler: logging.Handler = _StderrHandler() if stream is None else \
        logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt is LogFormat.json else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler._rollout_handler = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler


def log_transition(prev: RolloutStatus, nxt: RolloutStatus, obs: Observation) -> None:
    """``on_transition`` callback logging each transition with its fields as ``extra``."""
    _log.info("%s: %s -> %s: %s", nxt.name, prev.phase.value, nxt.phase.value, nxt.reason,
              extra={
                  "rollout": nxt.name, "from": prev.phase.value, "to": nxt.phase.value,
                  "step": nxt.step, "generation": nxt.generation, "reason": nxt.reason,
                  "weights": nxt.weights.model_dump() if nxt.weights else None,
                  "gates": {n: {"verdict": g.verdict.value, "reason": g.reason}
                            for n, g in obs.gates.items()},
                  "error": obs.error,
              })


def compose(*callbacks: Transition | None) -> Transition:
    """One ``on_transition`` calling each callback in order; a callback that raises is logged
    and skipped, never propagated into the controller."""
    active = [c for c in callbacks if c is not None]

    def run(prev: RolloutStatus, nxt: RolloutStatus, obs: Observation) -> None:
        for callback in active:
            try:
                callback(prev, nxt, obs)
            except Exception:
                _log.exception("on_transition observer %r failed (the rollout goes on)",
                               getattr(callback, "__qualname__", callback))

    return run


# -- process-wide settings (the CLI's --log-format and --metrics-port) ----------------------

_state: dict[str, Any] = {"log_format": None, "server": None, "metrics": None}


def metrics() -> ControllerMetrics:
    """This process's controller metrics, what ``--metrics-port`` serves (made on first use)."""
    if _state["metrics"] is None:
        _state["metrics"] = ControllerMetrics()
    m: ControllerMetrics = _state["metrics"]
    return m


def configure(*, log_format: LogFormat | None = None, metrics_port: int | None = None,
              metrics_host: str = "127.0.0.1") -> None:
    """Apply the CLI's observability options for this process.

    Logging goes to stderr in ``log_format``; with ``metrics_port`` :func:`metrics` is served
    until the process exits. ``None`` keeps what an earlier call set (``rollout demo`` runs
    ``rollout promote`` in-process: the inner call must not undo the outer one's options).

    Raises:
        OSError: ``metrics_port`` cannot be bound.
    """
    if log_format is not None or _state["log_format"] is None:
        _state["log_format"] = log_format or LogFormat.text
        configure_logging(_state["log_format"])
    if metrics_port is not None and _state["server"] is None:
        _state["server"] = serve_metrics(metrics(), metrics_port, metrics_host)


def log_format() -> LogFormat:
    """The log format :func:`configure` set (``text`` until it is called)."""
    fmt: LogFormat | None = _state["log_format"]
    return fmt or LogFormat.text

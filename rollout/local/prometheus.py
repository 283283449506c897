"""Run Prometheus on loopback scraping the blue and green servers, labelled by colour.

Its readiness polls are bounded reads (:mod:`gates.bounded`): one deadline per exchange and a
cap on the body.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from gates.bounded import PROMETHEUS_MAX_BYTES, BoundedReadError, BoundedResponse, read_bounded
from rollout.local.processes import ManagedProcess, require_binary, start_process, wait_until

__all__ = ["prometheus_config", "start_prometheus"]

_POLL_S = 1.0  # deadline of one readiness poll


def _get(url: str, params: dict[str, str] | None = None) -> BoundedResponse:
    """``GET url`` within one poll's deadline and Prometheus' body cap.

    Raises:
        httpx.HTTPError: no answer.
        gates.bounded.BoundedReadError: a bound was broken.
    """
    with httpx.Client() as client:
        return read_bounded(client, client.build_request("GET", url, params=params),
                            deadline_s=_POLL_S, max_bytes=PROMETHEUS_MAX_BYTES)


def prometheus_config(targets: dict[str, str], *, interval: str = "1s") -> str:
    """Scrape config: one job per colour so every series carries ``color``.

    ``targets`` maps colour to ``host:port``. A 1 s interval keeps the demo's analysis windows
    short; production scrapes are slower and the gates' windows scale with them.
    """
    jobs = "".join(f"""\
  - job_name: sd-{color}
    static_configs:
      - targets: ["{hostport}"]
        labels:
          color: {color}
""" for color, hostport in targets.items())
    return f"""\
global:
  scrape_interval: {interval}
  evaluation_interval: {interval}
scrape_configs:
{jobs}"""


def start_prometheus(root: Path, *, port: int, targets: dict[str, str],
                     wait_for_scrape: bool = True) -> ManagedProcess:
    """Write the config under ``root``, start Prometheus on 127.0.0.1:``port``, wait until it
    is ready and (``wait_for_scrape``) has scraped every target once."""
    binary = require_binary("prometheus", "prometheus")
    root.mkdir(parents=True, exist_ok=True)
    cfg = root / "prometheus.yml"
    cfg.write_text(prometheus_config(targets))
    proc = start_process("prometheus", [
        binary, f"--config.file={cfg}", f"--storage.tsdb.path={root / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d",
        "--log.level=warn"], log=root / "prometheus.log")

    def ready() -> bool:
        try:
            return _get(f"http://127.0.0.1:{port}/-/ready").status_code == 200
        except (httpx.HTTPError, BoundedReadError):
            return False

    wait_until(ready, timeout=30, what="prometheus", proc=proc.proc, log=proc.log)

    def scraped() -> bool:
        # New targets are picked up after Prometheus' ~5 s discovery throttle; a gate that
        # queried before would see no series at all (nodata).
        try:
            r = _get(f"http://127.0.0.1:{port}/api/v1/query",
                     {"query": "count(up)"}).json()["data"]["result"]
        except (httpx.HTTPError, BoundedReadError, KeyError, ValueError, TypeError):
            return False
        return bool(r) and int(float(r[0]["value"][1])) >= len(targets)

    if wait_for_scrape:
        wait_until(scraped, timeout=30, what="prometheus' first scrape", proc=proc.proc,
                   log=proc.log)
    return proc

"""Webhook notifications against a real local HTTP receiver: payloads, retries with backoff,
failing and hanging receivers, and the rollout's outcome untouched by any of it."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fakes import Router
from pydantic import ValidationError

from gates.verdict import Verdict
from rollout.controller import Controller
from rollout.machine import GateResult, Observation, Phase, Plan, RolloutStatus
from rollout.notify import Notifier, NotifyEvent, NotifySpec, WebhookSpec, event_for
from rollout.store import StateStore

SECRET_PATH = "/services/T000/B000/s3cr3tTok3n"
TOKEN = "Bearer do-not-log-me"


class Receiver:
    """A local webhook receiver answering with scripted statuses (the last one repeats)."""

    def __init__(self, statuses: list[int], *, delay_s: float = 0.0,
                 headers: dict[str, str] | None = None) -> None:
        self.statuses = statuses
        self.delay_s = delay_s
        self.extra_headers = headers or {}
        self.requests: list[dict[str, Any]] = []
        self.times: list[float] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.times.append(time.monotonic())
                receiver.requests.append({"path": self.path, "headers": dict(self.headers),
                                          "body": json.loads(body)})
                time.sleep(receiver.delay_s)
                n = len(receiver.requests)
                status = receiver.statuses[min(n, len(receiver.statuses)) - 1]
                self.send_response(status)
                for k, v in receiver.extra_headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class Scripted:
    def __init__(self, verdicts: list[Verdict]) -> None:
        self.verdicts = iter(verdicts)

    def _obs(self) -> Observation:
        return Observation(gates={"p95": GateResult(next(self.verdicts), "scripted")})

    def admit(self, status: RolloutStatus) -> Observation:
        return self._obs()

    def analyze(self, status: RolloutStatus, step: int) -> Observation:
        return self._obs()

    def verify(self, status: RolloutStatus) -> Observation:
        return self._obs()


def run_rollout(tmp: Path, verdicts: list[Verdict], notifier: Notifier | None,
                **plan: Any) -> RolloutStatus:
    store = StateStore(tmp)
    status = RolloutStatus(name="shop", plan=Plan(weights=(0, 100), **plan))
    store.save(status, previous=None)
    return Controller(store, Router(), Scripted(verdicts), on_transition=notifier).run(status)


def hook(url: str, **kw: Any) -> WebhookSpec:
    return WebhookSpec(url=url, **{"backoff_seconds": 0.01, "max_backoff_seconds": 0.05, **kw})


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, "rollout.notify"):
        yield caplog


def test_promotion_posts_the_event_as_json(tmp_path: Path) -> None:
    with Receiver([200]) as rx:
        notifier = Notifier([hook(rx.url)])
        final = run_rollout(tmp_path, [Verdict.PASS] * 3, notifier)
        assert notifier.close(5)
    assert final.phase is Phase.PROMOTED
    (req,) = rx.requests  # only the promotion: no event for the intermediate phases
    assert req["path"] == SECRET_PATH
    assert req["headers"]["Content-Type"] == "application/json"
    body = req["body"]
    assert body["event"] == "promoted" and body["rollout"] == "shop"
    assert (body["phase"], body["previous_phase"]) == ("Promoted", "Promoting")
    assert body["weights"] == {"blue": 0, "green": 100} and body["verdicts"] == {"p95": "pass"}
    assert body["generation"] == final.generation and body["reason"] == final.reason
    assert notifier.deliveries[0].ok and notifier.deliveries[0].attempts == 1


def test_policy_labels_are_copied_into_every_json_payload(tmp_path: Path) -> None:
    with Receiver([200]) as rx:
        notifier = Notifier.from_spec(NotifySpec(webhooks=[hook(rx.url)]),
                                      labels={"team": "ml", "model": "sd15"})
        run_rollout(tmp_path, [Verdict.PASS] * 3, notifier)
        assert notifier.close(5)
    (req,) = rx.requests
    assert req["body"]["labels"] == {"team": "ml", "model": "sd15"}


def test_rollback_in_slack_format_with_header_from_env(tmp_path: Path) -> None:
    with Receiver([200]) as rx:
        spec = hook(rx.url, format="slack", headers_from_env={"Authorization": "HOOK_TOKEN"})
        notifier = Notifier([spec], env={"HOOK_TOKEN": TOKEN})
        final = run_rollout(tmp_path, [Verdict.PASS, Verdict.FAIL], notifier)
        assert notifier.close(5)
    assert final.phase is Phase.ROLLED_BACK
    (req,) = rx.requests
    assert req["headers"]["Authorization"] == TOKEN
    body = req["body"]
    assert body["text"].startswith(":rewind: Rollout *shop* rolled back")
    assert "step 0 analysis fail" in body["text"]
    kinds = [b["type"] for b in body["blocks"]]
    assert kinds == ["section", "section", "section", "context"]
    assert body["blocks"][2]["fields"] == [{"type": "mrkdwn", "text": "*p95*\nfail"}]


def test_failing_receiver_is_retried_and_the_rollout_outcome_is_unchanged(
        tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    baseline = run_rollout(tmp_path / "a", [Verdict.PASS, Verdict.FAIL], None)
    with Receiver([500, 503, 200]) as rx:
        notifier = Notifier([hook(rx.url)])
        final = run_rollout(tmp_path / "b", [Verdict.PASS, Verdict.FAIL], notifier)
        assert notifier.close(10)
    assert (final.phase, final.reason, final.weights) == \
        (baseline.phase, baseline.reason, baseline.weights)
    assert len(rx.requests) == 3 and all(r["body"] == rx.requests[0]["body"] for r in rx.requests)
    (d,) = notifier.deliveries
    assert d.ok and d.attempts == 3 and d.status == 200
    gaps = [b - a for a, b in zip(rx.times, rx.times[1:], strict=False)]
    assert gaps[0] >= 0.005 and gaps[1] >= 0.01  # backoff 0.01 s doubling, jitter >= half
    assert "retry 1" in logs.text and "retry 2" in logs.text


def test_receiver_down_gives_up_after_max_attempts_without_leaking_secrets(
        tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    with Receiver([500]) as rx:
        spec = hook(rx.url, max_attempts=4, headers={"Authorization": TOKEN})
        notifier = Notifier([spec])
        final = run_rollout(tmp_path, [Verdict.PASS, Verdict.FAIL], notifier)
        assert notifier.close(10)
    assert final.phase is Phase.ROLLED_BACK
    assert len(rx.requests) == 4
    (d,) = notifier.deliveries
    assert not d.ok and d.attempts == 4 and d.error == "HTTP 500"
    assert "not delivered after 4 attempt(s)" in logs.text
    assert "127.0.0.1" in logs.text  # the host is named...
    assert "s3cr3tTok3n" not in logs.text and "do-not-log-me" not in logs.text  # ...not secrets


def test_unreachable_receiver_connection_errors_are_scrubbed(
        tmp_path: Path, logs: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    notifier = Notifier([hook(f"http://127.0.0.1:{port}{SECRET_PATH}", max_attempts=2)])
    run_rollout(tmp_path, [Verdict.PASS, Verdict.FAIL], notifier)
    assert notifier.close(10)
    (d,) = notifier.deliveries
    assert not d.ok and d.attempts == 2 and d.status is None
    assert d.error is not None and d.error.startswith("ConnectError")
    assert "s3cr3tTok3n" not in logs.text


def test_a_rejected_request_is_not_repeated(tmp_path: Path) -> None:
    with Receiver([400]) as rx:
        notifier = Notifier([hook(rx.url)])
        run_rollout(tmp_path, [Verdict.PASS, Verdict.FAIL], notifier)
        assert notifier.close(5)
    assert len(rx.requests) == 1 and notifier.deliveries[0].error == "HTTP 400"


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    with Receiver([429, 200], headers={"Retry-After": "0.3"}) as rx:
        notifier = Notifier([hook(rx.url, max_backoff_seconds=1.0)])
        run_rollout(tmp_path, [Verdict.PASS, Verdict.FAIL], notifier)
        assert notifier.close(5)
    assert len(rx.requests) == 2 and rx.times[1] - rx.times[0] >= 0.3


def test_a_hanging_receiver_never_holds_the_rollout(tmp_path: Path) -> None:
    with Receiver([200], delay_s=3.0) as rx:
        notifier = Notifier([hook(rx.url, timeout_seconds=10)])
        t0 = time.monotonic()
        final = run_rollout(tmp_path, [Verdict.PASS, Verdict.FAIL], notifier)
        took = time.monotonic() - t0
        assert final.phase is Phase.ROLLED_BACK and took < 1.0
        assert notifier.close(0.2) is False  # still sending: the caller does not wait longer
        assert notifier.close(10) is True
    assert notifier.deliveries[0].ok


def test_a_full_queue_drops_instead_of_blocking(tmp_path: Path,
                                                logs: pytest.LogCaptureFixture) -> None:
    with Receiver([200], delay_s=0.5) as rx:
        notifier = Notifier([hook(rx.url), hook(rx.url, name="second"),
                             hook(rx.url, name="third")], queue_size=1)
        run_rollout(tmp_path, [Verdict.PASS, Verdict.FAIL], notifier)
        assert notifier.close(10)
    assert "dropped: queue full" in logs.text
    assert 1 <= len(rx.requests) < 3


def test_events_filter_and_pause(tmp_path: Path) -> None:
    with Receiver([200]) as rx:
        notifier = Notifier([hook(rx.url, events=["paused"])])
        final = run_rollout(tmp_path, [Verdict.PASS, Verdict.NODATA], notifier,
                            on_inconclusive="pause")
        assert notifier.close(5)
    assert final.phase is Phase.PAUSED
    assert [r["body"]["event"] for r in rx.requests] == ["paused"]


def test_event_for_each_transition_worth_telling() -> None:
    base = RolloutStatus(name="x", plan=Plan(weights=(0,), max_rollback_attempts=3))

    def at(phase: Phase, **kw: Any) -> RolloutStatus:
        return base.model_copy(update={"phase": phase, **kw})

    assert event_for(at(Phase.PROMOTING), at(Phase.PROMOTED)) is NotifyEvent.promoted
    assert event_for(at(Phase.ROLLING_BACK), at(Phase.ROLLED_BACK)) is NotifyEvent.rolled_back
    assert event_for(at(Phase.ROLLING_BACK), at(Phase.ABORTED)) is NotifyEvent.aborted
    assert event_for(at(Phase.ANALYZING), at(Phase.PAUSED)) is NotifyEvent.paused
    assert event_for(at(Phase.PAUSED), at(Phase.PAUSED)) is None
    assert event_for(at(Phase.ANALYZING), at(Phase.ROLLING_BACK)) is None
    assert event_for(at(Phase.ROLLING_BACK, rollback_attempts=2),
                     at(Phase.ROLLING_BACK, rollback_attempts=3)) is NotifyEvent.rollback_stuck
    assert event_for(at(Phase.ROLLING_BACK, rollback_attempts=1),
                     at(Phase.ROLLING_BACK, rollback_attempts=2)) is None


def test_policy_block_camel_case_and_strict() -> None:
    spec = NotifySpec.model_validate({"webhooks": [
        {"name": "ops", "urlEnv": "SLACK_URL", "format": "slack", "events": ["rolledBack"],
         "headersFromEnv": {"Authorization": "TOKEN"}, "maxAttempts": 3,
         "backoffSeconds": 2, "timeoutSeconds": 4}]})
    (w,) = spec.webhooks
    assert (w.url_env, w.max_attempts, w.events) == ("SLACK_URL", 3, [NotifyEvent.rolled_back])
    with pytest.raises(ValidationError, match="maxAtempts"):
        NotifySpec.model_validate({"webhooks": [{"url": "http://x", "maxAtempts": 3}]})
    with pytest.raises(ValidationError, match="exactly one of url and urlEnv"):
        WebhookSpec.model_validate({"url": "http://x", "urlEnv": "X"})
    with pytest.raises(ValidationError, match="exactly one of url and urlEnv"):
        WebhookSpec.model_validate({})
    assert NotifySpec().webhooks == [] and Notifier.from_spec(NotifySpec()).targets == []


def test_webhook_with_unset_env_is_disabled_not_fatal(tmp_path: Path,
                                                      logs: pytest.LogCaptureFixture) -> None:
    notifier = Notifier.from_spec(NotifySpec(webhooks=[WebhookSpec(url_env="NOPE_URL")]),
                                  env={})
    assert notifier.targets == []
    assert "webhook webhook disabled: environment variable(s) NOPE_URL not set" in logs.text
    assert run_rollout(tmp_path, [Verdict.PASS] * 3, notifier).phase is Phase.PROMOTED
    assert notifier.close(1) and notifier.deliveries == []

"""Crash safety: SIGKILL the controller at every transition point, then `rollout resume`.

The controller is killed (``ROLLOUT_CRASH_AT``) before and after the side effect of each phase
of a three-step rollout, and of a rollback. ``rollout resume`` must finish the rollout; HAProxy
must end in the state the persisted phase says; the recorded transitions must be exactly the
uninterrupted path (nothing lost, nothing replayed with another outcome).
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from e2e_stack import Stack, last_json, start_stack

from rollout.machine import Weights
from rollout.store import StateStore

PASSING = [{"type": "error-rate", "name": "errors", "maxRate": 0.3, "minRequests": 5}]
# Green may not be slower than a third of blue: a healthy green fails, so we roll back.
FAILING = [{"type": "latency", "name": "p95", "maxRatio": 0.3}]
HAPPY = ["Pending", "Admitting", "Shifting", "Analyzing", "Shifting", "Analyzing", "Shifting",
         "Analyzing", "Promoting", "Promoted"]
BACK = ["Pending", "Admitting", "Shifting", "Analyzing", "RollingBack", "RolledBack"]
POINTS = [f"{phase}:{step}:{when}"
          for phase, step in [("Admitting", 0), ("Shifting", 0), ("Analyzing", 0),
                              ("Shifting", 1), ("Analyzing", 1), ("Shifting", 2),
                              ("Analyzing", 2), ("Promoting", 2)]
          for when in ("before", "after")]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("crash"))
    try:
        yield s
    finally:
        s.stop()


def _run_path(stack: Stack, name: str) -> list[str]:
    """Phases recorded for the latest run of ``name`` (from its 'Pending' on)."""
    rows = StateStore(stack.root / "state").history(name)
    starts = [i for i, r in enumerate(rows) if r.to_phase == "Pending"]
    run = rows[starts[-1]:]
    gens = [r.generation for r in run]
    assert gens == list(range(gens[0], gens[0] + len(gens))), "a generation was lost or repeated"
    return [r.to_phase for r in run]


def _crash_then_resume(stack: Stack, policy: Path, name: str, point: str) -> dict[str, object]:
    stack.router.set_weights(Weights(blue=100, green=0))
    crashed = stack.rollout("promote", str(policy), env={"ROLLOUT_CRASH_AT": point})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    persisted = StateStore(stack.root / "state").load(name)
    assert persisted is not None
    assert f"{persisted.phase.value}:{persisted.step}" == point.rsplit(":", 1)[0]
    resumed = stack.rollout("resume", name, "--output", "json")
    doc = last_json(resumed.stdout)
    doc["exit"] = resumed.returncode
    return doc


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_killed_promotion_resumes_to_promoted(stack: Stack, point: str) -> None:
    policy = stack.policy("crash", PASSING)
    doc = _crash_then_resume(stack, policy, "crash", point)
    assert (doc["exit"], doc["phase"]) == (0, "Promoted"), doc["reason"]
    assert stack.weights() == Weights(blue=0, green=100)
    assert _run_path(stack, "crash") == HAPPY


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "after"])
def test_killed_rollback_resumes_to_rolled_back(stack: Stack, when: str) -> None:
    policy = stack.policy("crash-back", FAILING)
    doc = _crash_then_resume(stack, policy, "crash-back", f"RollingBack:0:{when}")
    assert (doc["exit"], doc["phase"]) == (1, "RolledBack"), doc["reason"]
    assert stack.weights() == Weights(blue=100, green=0)
    assert _run_path(stack, "crash-back") == BACK


def test_second_promote_is_locked_out(stack: Stack) -> None:
    policy = stack.policy("locked", PASSING)
    store = StateStore(stack.root / "state")
    with store.lock("locked"):
        res = stack.rollout("promote", str(policy))
    assert res.returncode == 2
    assert "locked by pid" in res.stderr


def test_bad_inputs_exit_2_and_leave_the_router_alone(stack: Stack, tmp_path: Path) -> None:
    stack.router.set_weights(Weights(blue=90, green=10))
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: rollout-gates.dev/v1alpha1\nkind: RolloutPolicy\n")
    res = stack.rollout("promote", str(bad))
    assert res.returncode == 2 and "spec" in res.stderr and "Traceback" not in res.stderr

    unreachable = stack.policy("unreachable", PASSING)
    text = unreachable.read_text().replace(stack.urls["green"], "http://127.0.0.1:9")
    unreachable.write_text(text)
    res = stack.rollout("promote", str(unreachable))
    assert res.returncode == 2 and "unreachable" in res.stderr

    nosock = stack.policy("nosock", PASSING)
    nosock.write_text(nosock.read_text().replace(str(stack.socket), str(tmp_path / "x.sock")))
    res = stack.rollout("promote", str(nosock))
    assert res.returncode == 2 and "does not exist" in res.stderr
    assert stack.weights() == Weights(blue=90, green=10)


HAPPY_VERIFIED = [*HAPPY[:-1], "Verifying", "Promoted"]


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "after"])
def test_killed_verification_resumes_to_promoted(stack: Stack, when: str) -> None:
    policy = stack.policy("crash-verify", PASSING, promotion={"verifySeconds": 1})
    doc = _crash_then_resume(stack, policy, "crash-verify", f"Verifying:2:{when}")
    assert (doc["exit"], doc["phase"]) == (0, "Promoted"), doc["reason"]
    assert stack.weights() == Weights(blue=0, green=100)
    assert _run_path(stack, "crash-verify") == HAPPY_VERIFIED


@pytest.mark.slow
def test_killed_between_the_two_router_commands_never_leaves_nobody_serving(
        stack: Stack) -> None:
    policy = stack.policy("crash-router", PASSING, steps=[{"weight": 50}, {"weight": 100}])
    stack.router.set_weights(Weights(blue=100, green=0))
    crashed = stack.rollout("promote", str(policy), env={"ROLLOUT_CRASH_AT": "router:between"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    half = stack.weights()
    assert half.blue > 0 and half.green > 0, half  # both serve: the raise went first
    doc = last_json(stack.rollout("resume", "crash-router", "--output", "json").stdout)
    assert doc["phase"] == "Promoted", doc["reason"]
    assert stack.weights() == Weights(blue=0, green=100)


@pytest.mark.slow
def test_killed_rollback_retry_resumes_to_rolled_back(stack: Stack) -> None:
    policy = stack.policy("crash-retry", FAILING)
    stack.router.set_weights(Weights(blue=100, green=0))
    first = stack.rollout("promote", str(policy), env={"ROLLOUT_CRASH_AT": "RollingBack:0:after"})
    assert first.returncode == -signal.SIGKILL
    again = stack.rollout("resume", "crash-retry",
                                     env={"ROLLOUT_CRASH_AT": "RollingBack:0:after"})
    assert again.returncode == -signal.SIGKILL  # the retried rollback was killed too
    doc = last_json(stack.rollout("resume", "crash-retry", "--output", "json").stdout)
    assert doc["phase"] == "RolledBack", doc["reason"]
    assert stack.weights() == Weights(blue=100, green=0)
    assert _run_path(stack, "crash-retry") == BACK


@pytest.mark.slow
def test_killed_after_resume_from_pause_can_still_be_aborted(stack: Stack) -> None:
    # A budget of 4 slices cannot decide a P95 ratio between identical servers: inconclusive.
    policy = stack.policy("crash-pause", [{"type": "latency", "name": "p95", "maxRatio": 1.5}],
                          rollback={"onInconclusive": "pause"}, steps=[{"weight": 50}])
    policy.write_text(policy.read_text().replace("maxRequests: 80", "maxRequests: 4"))
    stack.router.set_weights(Weights(blue=100, green=0))
    paused = stack.rollout("promote", str(policy), "--output", "json")
    assert paused.returncode == 3, paused.stderr[-2000:]
    assert stack.weights() == Weights(blue=50, green=50)
    killed = stack.rollout("resume", "crash-pause", env={"ROLLOUT_CRASH_AT": "Analyzing:0:before"})
    assert killed.returncode == -signal.SIGKILL
    persisted = StateStore(stack.root / "state").load("crash-pause")
    assert persisted is not None and persisted.phase.value == "Analyzing"
    doc = last_json(stack.rollout("abort", "crash-pause", "--output", "json").stdout)
    assert doc["phase"] == "Aborted"
    assert stack.weights() == Weights(blue=100, green=0)


class Receiver:
    """A webhook receiver recording each request's Idempotency-Key and body."""

    def __init__(self) -> None:
        got: list[tuple[str | None, dict[str, object]]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                got.append((self.headers.get("Idempotency-Key"), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.got = got
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.mark.slow
def test_a_notification_lost_to_a_kill_is_delivered_on_resume(stack: Stack) -> None:
    hook = Receiver()
    try:
        policy = stack.policy("crash-notify", PASSING, steps=[{"weight": 100}],
                              notify={"webhooks": [{"name": "ops", "url": hook.url}]})
        stack.router.set_weights(Weights(blue=100, green=0))
        killed = stack.rollout("promote", str(policy),
                               env={"ROLLOUT_CRASH_AT": "notify:before:Promoted"})
        assert killed.returncode == -signal.SIGKILL
        assert hook.got == []  # saved as Promoted, never announced
        status = StateStore(stack.root / "state").load("crash-notify")
        assert status is not None and status.phase.value == "Promoted"
        res = stack.rollout("resume", "crash-notify")
        assert res.returncode == 0, res.stderr[-2000:]
    finally:
        hook.server.shutdown()
    assert [(k, b["event"]) for k, b in hook.got] == [
        (f"crash-notify/{status.generation}", "promoted")]
    assert hook.got[0][1]["id"] == f"crash-notify/{status.generation}"

"""The controller's traffic guarantees with a real SQLite store (issue: traffic always known).

* an unexpected exception in any action after traffic moved rolls back, read back at blue 100,
  and is marked as an internal error (a distinct exit code), never left at the forward split;
* an abort pending before an action preempts it: no analysis re-run, no forward weight;
* an abort arriving *during* an analysis preempts that analysis' outcome;
* a broken store mid-run still returns traffic to blue before the error propagates;
* a corrupt or truncated store is an error naming the file, never an empty store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from test_controller_loop import RecordingRouter, ScriptedAnalyzer, start

from gates.verdict import Verdict
from rollout.controller import Controller, NoAnalysis, stop_probe
from rollout.errors import StoreCorruptError
from rollout.machine import Observation, Phase, Plan, RolloutStatus, Weights
from rollout.store import StateStore

BLUE = Weights(blue=100, green=0)


class CrashingAnalyzer(ScriptedAnalyzer):
    """Passes admission, then its step analysis raises like a gate with a bug would."""

    def __init__(self, exc: Exception) -> None:
        super().__init__(iter([Verdict.PASS] * 10))
        self.exc = exc

    def analyze(self, status: RolloutStatus, step: int) -> Observation:
        self.calls.append(f"analyze {step}")
        raise self.exc


@pytest.mark.parametrize("exc", [ValueError("selector must be a PromQL matcher"),
                                 MemoryError(), ZeroDivisionError("x"), AssertionError()])
def test_a_crashing_gate_rolls_back_to_blue_as_an_internal_error(tmp_path: Path,
                                                                 exc: Exception) -> None:
    store, router = StateStore(tmp_path), RecordingRouter()
    ctl = Controller(store, router, CrashingAnalyzer(exc))
    final = ctl.run(start(store, Plan(weights=(50, 100))))
    assert final.phase is Phase.ROLLED_BACK and final.internal_error
    assert router.history == [Weights(blue=50, green=50), BLUE]
    assert router.get_weights() == BLUE
    rows = store.history("demo")
    crashed = next(r for r in rows if r.from_phase == "Analyzing")
    assert crashed.evidence["internal"] is True
    assert type(exc).__name__ in crashed.evidence["traceback"]
    assert "internal error in Analyzing" in crashed.reason


def test_paused_policy_still_rolls_back_on_an_internal_error(tmp_path: Path) -> None:
    store, router = StateStore(tmp_path), RecordingRouter()
    ctl = Controller(store, router, CrashingAnalyzer(RuntimeError("bug")))
    final = ctl.run(start(store, Plan(weights=(50,), on_inconclusive="pause")))
    assert final.phase is Phase.ROLLED_BACK and router.get_weights() == BLUE


def test_pending_abort_preempts_the_analysis_and_never_applies_a_forward_step(
        tmp_path: Path) -> None:
    store, router = StateStore(tmp_path), RecordingRouter()
    analyzer = ScriptedAnalyzer(iter([Verdict.PASS] * 10))
    s = start(store, Plan(weights=(0, 50, 100)))
    s = s.model_copy(update={"phase": Phase.ANALYZING, "generation": 1})
    store.save(s, previous=RolloutStatus(name="demo", plan=s.plan))
    store.request("demo", "abort")
    final = Controller(store, router, analyzer).run(s)
    assert final.phase is Phase.ABORTED
    assert analyzer.calls == []  # the analysis was not re-run
    assert router.history == [BLUE]
    assert [r.to_phase for r in store.history("demo")][-2:] == ["RollingBack", "Aborted"]


class AbortDuringAnalysis(ScriptedAnalyzer):
    """A user runs ``rollout abort`` while the step's canary is running."""

    def __init__(self, store: StateStore) -> None:
        super().__init__(iter([Verdict.PASS] * 10))
        self.store = store
        self.stop: Callable[[], str | None] = stop_probe(store, "demo", every_s=0.0)
        self.seen: list[str | None] = []

    def analyze(self, status: RolloutStatus, step: int) -> Observation:
        self.seen.append(self.stop())
        self.store.request("demo", "abort")
        self.seen.append(self.stop())
        return super().analyze(status, step)  # the analysis itself would pass


def test_abort_during_an_analysis_preempts_its_passing_outcome(tmp_path: Path) -> None:
    store, router = StateStore(tmp_path), RecordingRouter()
    analyzer = AbortDuringAnalysis(store)
    final = Controller(store, router, analyzer).run(start(store, Plan(weights=(50, 100))))
    assert final.phase is Phase.ABORTED
    assert analyzer.seen == [None, "abort requested by user"]
    assert router.history == [Weights(blue=50, green=50), BLUE]  # never 0/100
    phases = [r.to_phase for r in store.history("demo")]
    assert phases == ["Pending", "Admitting", "Shifting", "Analyzing", "RollingBack", "Aborted"]


class BrokenStore(StateStore):
    def __init__(self, root: Path, fail_after: int) -> None:
        super().__init__(root)
        self.fail_after = fail_after

    def save(self, status: RolloutStatus, **kw: object) -> None:  # type: ignore[override]
        if self.fail_after == 0:
            raise sqlite3.OperationalError("disk I/O error")
        self.fail_after -= 1
        super().save(status, **kw)  # type: ignore[arg-type]


def test_a_store_failure_mid_rollout_returns_traffic_to_blue_then_raises(
        tmp_path: Path) -> None:
    store, router = BrokenStore(tmp_path, fail_after=3), RecordingRouter()
    s = RolloutStatus(name="demo", plan=Plan(weights=(50, 100)))
    store.save(s, previous=None)  # counts as one save
    with pytest.raises(sqlite3.OperationalError):
        Controller(store, router, ScriptedAnalyzer(iter([Verdict.PASS] * 10))).run(s)
    assert Weights(blue=50, green=50) in router.history
    assert router.get_weights() == BLUE


def test_no_analysis_controller_returns_traffic_to_blue(tmp_path: Path) -> None:
    store, router = StateStore(tmp_path), RecordingRouter()
    router.weights = Weights(blue=50, green=50)
    s = start(store, Plan(weights=(50, 100)))
    store.request("demo", "rollback")
    final = Controller(store, router, NoAnalysis()).run(s)
    assert final.phase is Phase.ROLLED_BACK and router.get_weights() == BLUE


def _stored(tmp_path: Path) -> StateStore:
    store = StateStore(tmp_path)
    start(store, Plan(weights=(50,)))
    return store


@pytest.mark.parametrize("damage", ["half", "garbage", "empty"])
def test_a_corrupt_store_is_an_error_that_names_the_file(tmp_path: Path, damage: str) -> None:
    store = _stored(tmp_path)
    for side in tmp_path.glob("rollouts.db-*"):
        side.unlink()
    data = store.path.read_bytes()
    store.path.write_bytes({"half": data[: len(data) // 2], "garbage": b"x" * len(data),
                            "empty": b""}[damage])
    with pytest.raises(StoreCorruptError, match=str(store.path)):
        StateStore(tmp_path).load("demo")


def test_the_stop_probe_reads_the_store_at_most_once_per_interval(tmp_path: Path) -> None:
    """The canary asks many times a second from its event loop: the store is read at most
    every ``every_s``, and a pending abort is seen at the next read."""
    class CountingStore(StateStore):
        reads = 0

        def pending_intents(self, status: RolloutStatus) -> tuple[RolloutStatus, list[int]]:
            CountingStore.reads += 1
            return super().pending_intents(status)

    store, now = CountingStore(tmp_path), [0.0]
    probe = stop_probe(store, "demo", every_s=0.25, clock=lambda: now[0])
    assert [probe() for _ in range(20)] == [None] * 20 and CountingStore.reads == 1
    store.request("demo", "abort")
    assert probe() is None  # not read again yet
    now[0] = 0.3
    assert probe() == "abort requested by user" and CountingStore.reads == 2

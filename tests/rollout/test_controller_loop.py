"""The controller loop with a real SQLite store and scripted gate outcomes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gates.verdict import Verdict
from rollout.controller import Controller
from rollout.errors import LockedError, RouterError, StateConflictError
from rollout.machine import GateResult, Observation, Phase, Plan, RolloutStatus, Weights
from rollout.store import StateStore


class RecordingRouter:
    def __init__(self, fail_sets: int = 0) -> None:
        self.weights = Weights(blue=100, green=0)
        self.history: list[Weights] = []
        self.fail_sets = fail_sets

    def check(self) -> None:
        pass

    def set_weights(self, weights: Weights) -> None:
        if self.fail_sets:
            self.fail_sets -= 1
            raise RouterError("socket timeout")
        self.weights = weights
        self.history.append(weights)

    def get_weights(self) -> Weights:
        return self.weights


class ScriptedAnalyzer:
    def __init__(self, verdicts: Iterator[Verdict]) -> None:
        self.verdicts = verdicts
        self.calls: list[str] = []

    def _obs(self, what: str) -> Observation:
        self.calls.append(what)
        return Observation(gates={"p95": GateResult(next(self.verdicts), what)},
                           evidence={"what": what})

    def admit(self, status: RolloutStatus) -> Observation:
        return self._obs("admit")

    def analyze(self, status: RolloutStatus, step: int) -> Observation:
        return self._obs(f"analyze {step}")

    def verify(self, status: RolloutStatus) -> Observation:
        return self._obs("verify")


def start(store: StateStore, plan: Plan) -> RolloutStatus:
    s = RolloutStatus(name="demo", plan=plan)
    store.save(s, previous=None)
    return s


def test_promotes_and_records_every_transition(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    router = RecordingRouter()
    ctl = Controller(store, router, ScriptedAnalyzer(iter([Verdict.PASS] * 5)))
    final = ctl.run(start(store, Plan(weights=(0, 50, 100), verify=True)))
    assert final.phase is Phase.PROMOTED
    assert router.history == [Weights(blue=100, green=0), Weights(blue=50, green=50),
                              Weights(blue=0, green=100), Weights(blue=0, green=100)]
    assert store.load("demo") == final
    hist = store.history("demo")
    assert [h.to_phase for h in hist][-3:] == ["Promoting", "Verifying", "Promoted"]
    assert [h.generation for h in hist] == list(range(len(hist)))
    analysed = [h for h in hist if h.evidence.get("action") == "analyze"]
    assert analysed[0].evidence["gates"]["p95"]["verdict"] == "pass"


def test_failed_step_rolls_back_and_weights_return_to_blue(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    router = RecordingRouter()
    ctl = Controller(store, router, ScriptedAnalyzer(iter([Verdict.PASS, Verdict.PASS,
                                                           Verdict.FAIL])))
    final = ctl.run(start(store, Plan(weights=(0, 50, 100))))
    assert final.phase is Phase.ROLLED_BACK
    assert router.weights == Weights(blue=100, green=0)
    assert "step 1 analysis fail" in store.history("demo")[-2].reason


def test_router_errors_are_retried_then_rollback_completes(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    router = RecordingRouter(fail_sets=2)  # the first shift and the first rollback attempt
    final = Controller(store, router, ScriptedAnalyzer(iter([Verdict.PASS]))).run(
        start(store, Plan(weights=(10,))))
    assert final.phase is Phase.ROLLED_BACK
    reasons = [h.reason for h in store.history("demo")]
    assert any("not applied: RouterError: socket timeout" in r for r in reasons)
    assert any(r.startswith("retrying rollback") for r in reasons)


def test_pause_then_resume_intent_then_abort(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    router = RecordingRouter()
    analyzer = ScriptedAnalyzer(iter([Verdict.PASS, Verdict.NODATA, Verdict.NODATA]))
    ctl = Controller(store, router, analyzer)
    paused = ctl.run(start(store, Plan(weights=(0, 100), on_inconclusive="pause")))
    assert paused.phase is Phase.PAUSED
    assert ctl.run(paused).phase is Phase.PAUSED  # no intent: stays, does nothing
    store.request("demo", "resume")
    again = ctl.run(paused)
    assert again.phase is Phase.PAUSED and analyzer.calls.count("analyze 0") == 2
    store.request("demo", "abort")
    assert ctl.run(again).phase is Phase.ABORTED
    assert router.weights == Weights(blue=100, green=0)
    assert store.pending_intents(store.load("demo"))[1] == []  # type: ignore[arg-type]


def test_stale_writer_conflicts(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    s = start(store, Plan(weights=(0,)))
    newer = s.model_copy(update={"generation": 1, "phase": Phase.ADMITTING})
    store.save(newer, previous=s)
    with pytest.raises(StateConflictError):
        store.save(newer.model_copy(update={"generation": 2}), previous=s)


def test_lock_names_the_holder(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    other = StateStore(tmp_path)
    with store.lock("demo"), pytest.raises(LockedError, match=r"locked by pid \d+ on "), \
            other.lock("demo"):
        pass
    with store.lock("demo"):  # released after use
        pass

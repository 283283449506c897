"""``promotion.auto: false`` as users run it: promote stops in Paused/AwaitingPromotion with the
last step's split, ``rollout resume`` does not promote, ``rollout promote NAME --confirm`` does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from e2e_stack import Stack, last_json, start_stack

from rollout.machine import Weights

PASSING = [{"type": "error-rate", "name": "errors", "maxRate": 0.3, "minRequests": 5}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("manual"))
    try:
        yield s
    finally:
        s.stop()


@pytest.mark.slow
def test_manual_promotion_gate(stack: Stack) -> None:
    policy = stack.policy("manual", PASSING, steps=[{"weight": 0}, {"weight": 50}],
                          promotion={"auto": False})
    stack.router.set_weights(Weights(blue=100, green=0))
    waiting = stack.rollout("promote", "--policy", str(policy), "--output", "json")
    assert waiting.returncode == 3, waiting.stderr[-2000:]
    doc = last_json(waiting.stdout)
    assert doc["phase"] == "Paused" and doc["reason"].startswith("AwaitingPromotion")
    assert stack.weights() == Weights(blue=50, green=50)

    resumed = stack.rollout("resume", "manual", "--output", "json")
    assert resumed.returncode == 3 and last_json(resumed.stdout)["phase"] == "Paused"
    assert stack.weights() == Weights(blue=50, green=50)

    confirmed = stack.rollout("promote", "manual", "--confirm", "--output", "json")
    assert confirmed.returncode == 0, confirmed.stderr[-2000:]
    assert last_json(confirmed.stdout)["phase"] == "Promoted"
    assert stack.weights() == Weights(blue=0, green=100)

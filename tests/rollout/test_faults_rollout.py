"""A rollout to a green that draws broken images is rolled back by the default output check.

Real tiny SD servers, a real HAProxy and the real ``rollout promote`` (the e2e stack of
``tests/e2e``). Green is a :class:`FaultyPeer` that proxies blue's probes and capabilities (so
it is admitted) and answers every image request with one fault; the policy leaves
``outputCheck`` at its default. Each ends ``RolledBack`` with exit 1, traffic all blue, no
traceback, and the controller's peak resident memory under 1 GiB.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fakes import PEAK_WRAPPER, split_peak
from faulty_peer import FaultyPeer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from e2e_stack import Stack, last_json, start_stack

from rollout.machine import Weights

BLUE = Weights(blue=100, green=0)
GIB = 1 << 30


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("broken-images"))
    try:
        yield s
    finally:
        s.stop()


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["not_png", "truncated_png", "wrong_count", "bomb", "blank"])
def test_broken_image_green_is_rolled_back_by_default(stack: Stack, fault: str) -> None:
    with FaultyPeer(fault, proxy=stack.urls["blue"]) as green:
        policy = stack.policy(f"broken-{fault.replace('_', '-')}", [
            {"type": "error-rate", "name": "errors", "maxRate": 0.3, "minRequests": 5}],
            steps=[{"weight": 50}, {"weight": 100}])
        doc = yaml.safe_load(policy.read_text())
        doc["spec"]["targets"]["green"]["url"] = green.url
        assert "outputCheck" not in doc["spec"]["canary"]  # the default judges validity
        policy.write_text(yaml.safe_dump(doc))
        stack.router.set_weights(BLUE)
        res = stack.rollout("promote", str(policy), "--output", "json",
                            prefix=tuple(PEAK_WRAPPER))
    stderr, peak = split_peak(res.stderr)
    res.stderr = stderr
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.returncode == 1, res.stderr[-3000:]
    out = last_json(res.stdout)
    assert out["phase"] == "RolledBack" and "broken green images" in out["reason"], out
    assert stack.weights() == BLUE and out["weights"] == BLUE.model_dump()
    assert peak < GIB, f"peak RSS {peak >> 20} MiB"

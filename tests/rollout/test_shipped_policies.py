"""Every policy we ship loads, from any working directory, and its analyzer is built: its
gates resolve through the registry and its canary maps to a CanaryConfig.

The shipped ``sd15-512.yaml`` once validated and then crashed the controller in Analyzing
(its utilization selector was refused only at run time); this builds each policy's run-time
pieces at load time so that class of defect fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gates.canary.fleet import Instance
from gates.registry import checks
from gates.utilization.prometheus import dcgm_query
from rollout.analysis import PolicyAnalyzer
from rollout.machine import RolloutStatus
from rollout.policy.loader import load_policy

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted([*ROOT.glob("policies/examples/*.yaml"), *ROOT.glob("deploy/**/policy.yaml")])


class UnreachablePlatform:
    """One instance per colour at a port nothing listens on: nothing is contacted here."""

    def check(self) -> None:
        pass

    def endpoints(self, color: str) -> list[str]:
        return [f"http://127.0.0.1:9/{color}"]

    def instances(self, color: str) -> list[Instance]:
        return [Instance(u) for u in self.endpoints(color)]

    def config_map_text(self, name: str, key: str) -> str:
        """The overlays' ConfigMap (kustomize generates it from the shipped set)."""
        return (ROOT / "policies" / "prompts" / "sd15-512.yaml").read_text()

    def wait_ready(self, color: str, *, timeout: float) -> None:
        pass

    def finish(self, status: RolloutStatus) -> None:
        pass


def test_the_shipped_set_is_what_we_expect() -> None:
    assert len(SHIPPED) >= 5, SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_policy_builds_its_analyzer_from_another_directory(
        path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # file references resolve from the policy, not the cwd
    policy = load_policy(path)
    analyzer = PolicyAnalyzer(policy, UnreachablePlatform(), records_dir=tmp_path / "records")
    config = analyzer.canary_config()
    assert config.prompts, "the canary has prompts to send"
    names = {c.name for c in checks(policy.spec.gates, live=policy.spec.metrics.prometheus
                                    is not None)}
    assert {g.name for g in policy.spec.gates} <= names
    for gate in policy.spec.gates:
        if gate.type == "utilization" and gate.source == "prometheus":
            assert dcgm_query(gate.metric, gate.selector)  # raised ValueError at run time

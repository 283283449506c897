"""deploy/gitops: Argo CD's health check in Lua, run by two Lua interpreters (lupa's Lua 5.1
in-process, the language of Argo CD's gopher-lua, and Debian's lua5.4 binary), maps each
status as the contract says; Flux reads the same status through kstatus; the argocd-cm
snippet, the Application and the Flux Kustomization point at what the manifests really ship;
ci-promote.sh runs the GitOps argv and passes its code on."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import lupa.lua51
import pytest
import yaml
from k8s_manifests import GITOPS, K8S, OVERLAYS, objects, one, validate

from rollout.k8s.resource import ConditionStatus, RolloutPolicyStatus

HEALTH_LUA = GITOPS / "argocd" / "rolloutpolicy-health.lua"
HEALTH_KEY = "resource.customizations.health.rollout-gates.dev_RolloutPolicy"
LUA54 = shutil.which("lua5.4")


def _condition(kind: str, true: bool, generation: int) -> ConditionStatus:
    return ConditionStatus(type=kind, status="True" if true else "False",
                           reason="Test", last_transition_time="2026-01-01T00:00:00Z",
                           observed_generation=generation)


def _object(phase: str | None, *, generation: int = 2, observed: int = 2,
            awaiting: bool = False) -> dict[str, Any]:
    """A RolloutPolicy as the API server returns it, with a status the controller's model
    builds (conditions set as the contract says for that phase)."""
    obj: dict[str, Any] = {"apiVersion": "rollout-gates.dev/v1alpha1", "kind": "RolloutPolicy",
                           "metadata": {"name": "sd", "namespace": "sd",
                                        "generation": generation}, "spec": {}}
    if phase is None:
        return obj
    current = observed == generation
    terminal = phase in ("Promoted", "RolledBack", "Aborted")
    obj["status"] = RolloutPolicyStatus(
        observed_generation=observed, phase=phase, awaiting_promotion=awaiting, step=1,
        steps=3, blue_weight=90, green_weight=10, reason=f"{phase} for a reason",
        conditions=[_condition("Reconciling", current and not terminal, generation),
                    _condition("Stalled", current and phase in ("RolledBack", "Aborted"),
                               generation),
                    _condition("Ready", current and phase == "Promoted", generation)],
    ).model_dump(by_alias=True)
    return obj


#: (object, Argo CD health, kstatus status): the contract's mapping, case by case.
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("no status", _object(None), "Progressing", "InProgress"),
    ("pending", _object("Pending"), "Progressing", "InProgress"),
    ("analyzing", _object("Analyzing"), "Progressing", "InProgress"),
    ("shifting", _object("Shifting"), "Progressing", "InProgress"),
    ("promoted", _object("Promoted"), "Healthy", "Current"),
    ("promoted, stale", _object("Promoted", generation=3, observed=2), "Progressing",
     "InProgress"),
    ("rolled back", _object("RolledBack"), "Degraded", "Failed"),
    ("rolled back, stale", _object("RolledBack", generation=3, observed=2), "Progressing",
     "InProgress"),
    ("aborted", _object("Aborted"), "Degraded", "Failed"),
    ("paused", _object("Paused"), "Suspended", "InProgress"),
    ("awaiting promotion", _object("Paused", awaiting=True), "Suspended", "InProgress"),
]


def _lupa(obj: dict[str, Any]) -> tuple[str, str]:
    lua = lupa.lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(HEALTH_LUA.read_text(encoding="utf-8"))
    return str(hs["status"]), str(hs["message"])


def _lua_literal(value: Any) -> str:
    """A Python value as a Lua table constructor (what Argo CD hands the script as ``obj``)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{json.dumps(k)}] = {_lua_literal(v)}"
                               for k, v in value.items() if v is not None) + "}"
    if isinstance(value, list):
        return "{" + ", ".join(_lua_literal(v) for v in value) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)


def _lua54(obj: dict[str, Any], tmp_path: Path) -> tuple[str, str]:
    assert LUA54, "Debian's lua5.4 is part of make system-deps"
    driver = tmp_path / "driver.lua"
    driver.write_text(f"obj = {_lua_literal(obj)}\n"
                      f"local hs = assert(loadfile({json.dumps(str(HEALTH_LUA))}))()\n"
                      "io.write(hs.status, '\\n', hs.message)\n", encoding="utf-8")
    result = subprocess.run([LUA54, str(driver)], capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 0, result.stderr
    status, message = result.stdout.split("\n", 1)
    return status, message


@pytest.mark.parametrize(("case", "obj", "health", "kstatus"), CASES, ids=[c[0] for c in CASES])
def test_argo_cd_health_maps_each_status_on_both_interpreters(
        case: str, obj: dict[str, Any], health: str, kstatus: str, tmp_path: Path) -> None:
    in_process = _lupa(obj)
    binary = _lua54(obj, tmp_path)
    assert in_process == binary  # one script, one answer, whatever runs it
    status, message = in_process
    assert status == health
    if "stale" in case:
        assert "Generation 3 not observed yet" in message
    elif "status" in obj:
        assert message.startswith(obj["status"]["phase"]) and "step 2/3, green 10%" in message
    if "awaiting" in case:
        assert "rollout promote sd --confirm" in message


def _kstatus(obj: dict[str, Any]) -> str:
    """kstatus' reading of a custom resource (sigs.k8s.io/cli-utils/pkg/kstatus/status,
    the generic conditions rules Flux and `kubectl wait` rely on)."""
    status = obj.get("status")
    if not status:
        return "InProgress"
    generation = obj["metadata"].get("generation")
    if generation is not None and status.get("observedGeneration", generation) != generation:
        return "InProgress"
    conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
    if conditions.get("Reconciling") == "True":
        return "InProgress"
    if conditions.get("Stalled") == "True":
        return "Failed"
    if conditions.get("Ready") == "False":
        return "InProgress"
    return "Current"


@pytest.mark.parametrize(("case", "obj", "health", "kstatus"), CASES, ids=[c[0] for c in CASES])
def test_flux_reads_the_same_verdict_through_kstatus(
        case: str, obj: dict[str, Any], health: str, kstatus: str) -> None:
    assert _kstatus(obj) == kstatus
    # The two readers never disagree on a verdict: Healthy is Current, Degraded is Failed.
    assert (health == "Healthy") == (kstatus == "Current")
    assert (health == "Degraded") == (kstatus == "Failed")


def test_argocd_cm_carries_the_same_lua(tmp_path: Path) -> None:
    cm = yaml.safe_load((GITOPS / "argocd" / "argocd-cm.yaml").read_text(encoding="utf-8"))
    assert (cm["metadata"]["name"], cm["metadata"]["namespace"]) == ("argocd-cm", "argocd")
    assert cm["data"][HEALTH_KEY] == HEALTH_LUA.read_text(encoding="utf-8")
    result = validate(GITOPS / "argocd" / "argocd-cm.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_argo_application_points_at_an_overlay_and_ignores_what_the_controller_owns() -> None:
    app = yaml.safe_load((GITOPS / "argocd" / "application.yaml").read_text(encoding="utf-8"))
    assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
    path = app["spec"]["source"]["path"]
    assert (K8S.parents[1] / path / "kustomization.yaml").is_file()
    overlay = Path(path).name
    objs = objects(overlay)
    assert app["spec"]["destination"]["namespace"] == one(objs, "RolloutPolicy", "sd")[
        "metadata"]["namespace"]
    ignored = {(i.get("kind"), i.get("name")) for i in app["spec"]["ignoreDifferences"]}
    # every router object of every overlay: self-heal must not undo a promotion
    router_objects = {("Service", "sd-active"), ("Service", "sd-preview"), ("HTTPRoute", "sd"),
                      ("Deployment", "sd-blue"), ("Deployment", "sd-green")}
    assert router_objects <= ignored
    assert "RespectIgnoreDifferences=true" in app["spec"]["syncPolicy"]["syncOptions"]


def test_flux_kustomization_health_checks_the_rollout_and_drops_the_hook() -> None:
    ks = yaml.safe_load((GITOPS / "flux" / "rollout-gates.yaml").read_text(encoding="utf-8"))
    assert ks["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1"
    spec = ks["spec"]
    overlay = Path(spec["path"]).name
    assert overlay in OVERLAYS
    objs = objects(overlay)
    # wait: true would make Flux ignore healthChecks: the list is what is checked.
    assert spec["wait"] is False
    for check in spec["healthChecks"]:
        obj = one(objs, check["kind"], check["name"])
        assert (obj["apiVersion"], obj["metadata"]["namespace"]) == (
            check["apiVersion"], check["namespace"])
    assert {c["kind"] for c in spec["healthChecks"]} >= {"RolloutPolicy"}
    deleted = [p for p in spec["patches"] if "$patch: delete" in p["patch"]]
    assert [(p["target"]["kind"], p["target"]["name"]) for p in deleted] == [
        ("Job", "rollout-promote")]
    one(objs, "Job", "rollout-promote")  # the patch names a Job that exists


@pytest.mark.parametrize(("code", "says"), [
    (0, "rollout: promoted Promoted - all traffic on green"),
    (1, "::error::rollout: green rolled back"),
    (2, "::error::rollout: bad input, nothing applied"),
    (3, "::warning::rollout: paused, awaiting promotion or timed out"),
    (5, "::error::rollout: internal error, traffic returned to blue"),
    (7, "::error::rollout: infrastructure error (exit 7)")])
def test_ci_step_runs_the_gitops_argv_keeps_the_report_and_passes_the_code_on(
        tmp_path: Path, code: int, says: str) -> None:
    fake = tmp_path / "bin" / "rollout"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho \"$@\" > \"$(dirname \"$0\")/argv\"\n"
                    "echo '{\"phase\": \"Promoted\", \"reason\": \"all traffic on green\"}'\n"
                    f"exit {code}\n", encoding="utf-8")
    fake.chmod(0o755)
    result = subprocess.run(
        ["bash", str(GITOPS / "ci-promote.sh"), "policy.yaml", "prod"], cwd=tmp_path,
        capture_output=True, text=True, timeout=30, check=False,
        env={"PATH": f"{fake.parent}:/usr/bin:/bin", "ROLLOUT_REPORT": "report.json"})
    assert result.returncode == code
    assert says in result.stdout
    job_args = one(objects(OVERLAYS[0]), "Job", "rollout-promote")["spec"]["template"]["spec"][
        "containers"][0]["args"]
    policy_at = job_args.index("--policy") + 1
    expected = [*job_args[:policy_at], "policy.yaml", *job_args[policy_at + 1:],
                "--context", "prod"]
    assert (fake.parent / "argv").read_text().split() == expected  # the PostSync Job's argv
    assert '"phase": "Promoted"' in (tmp_path / "report.json").read_text()

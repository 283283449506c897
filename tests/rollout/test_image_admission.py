"""Admission's ``image`` gate: green's declared image digest, audited and signature-checked.

Green is a loopback server whose ``/capabilities`` snapshot declares its image (the block the SD
server fills from ROLLOUT_IMAGE_REF/ROLLOUT_IMAGE_DIGEST); reads go over real HTTP through the
analyzer's own :func:`read_endpoint`; the policy is loaded from a file whose key, signature
directory and archive are relative to it; signatures are made by skopeo with real gpg keys.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import serve_text, url_policy
from gpg_keys import signing_key
from images import bloated_image, clean_image, write_forms
from typer.testing import CliRunner

from gates.capability import CAPABILITIES_PATH
from gates.capability.snapshot import ImageFacts
from gates.gate import GateResult
from gates.image.policy import POLICY_DIR_CONTEXT
from gates.image.signing import lookaside_path, sign
from gates.verdict import Verdict
from rollout.admission import IMAGE_GATE, admission_gates, read_endpoint
from rollout.cli import app
from rollout.policy.loader import load_policy
from rollout.policy.models import POLICY_DIR, LimitsSpec, RolloutPolicy

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = json.loads((ROOT / "bench/results/snapshot_h100.json").read_text())
IDENTITY = "registry.example/sd/server:1.4"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two images (v1 clean, v2 bloated), a trusted and an untrusted key, v1 signed."""
    root = tmp_path_factory.mktemp("image-admission")
    with signing_key(root, "release") as release, signing_key(root, "mallory") as mallory:
        images = {"v1": write_forms(clean_image(), root, "v1"),
                  "v2": write_forms(bloated_image(), root, "v2")}
        sigs = root / "policy" / "sigs"
        v1 = images["v1"]
        sign(v1["oci-archive"], key=release.fingerprint, identity=IDENTITY,
             output=lookaside_path(sigs, IDENTITY, v1["manifest_digest"]),
             gnupg_home=release.home)
        shutil.copy(release.public, root / "policy" / "release.asc")
        yield {"root": root, "images": images, "release": release, "mallory": mallory,
               "sigs": sigs}


def policy_for(world: dict[str, Any], image_block: str) -> RolloutPolicy:
    """A policy file beside keys and signatures, its spec.image paths relative to it."""
    path = world["root"] / "policy" / "policy.yaml"
    path.write_text(url_policy("img", "http://127.0.0.1:1", "http://127.0.0.1:2", f"""
  steps: [{{weight: 0}}]
  admission: {{samePathAsBlue: false}}
  gates: [{{type: latency}}]
  image:
{image_block}"""))
    return load_policy(path)


SIGNED = """    requireSignature: true
    keys: [release.asc]
    signatures: sigs
"""


def declaring(digest: str | None, ref: str | None = IDENTITY) -> dict[str, Any]:
    """A /capabilities body whose snapshot declares this image (None: declares nothing)."""
    image = {k: v for k, v in {"ref": ref, "digest": digest}.items() if v is not None}
    snapshot = {**SNAPSHOT, "image": image} if digest or ref else SNAPSHOT
    return {"snapshot": snapshot, "pipeline": None, "degraded": False}


def admit(policy: RolloutPolicy, *green_docs: dict[str, Any]) -> tuple[dict[str, GateResult],
                                                                       dict[str, Any]]:
    servers = [serve_text(lambda d=doc: json.dumps(d), "application/json")  # type: ignore[misc]
               for doc in green_docs]
    try:
        limits = LimitsSpec()
        with httpx.Client() as client:
            urls = [f"http://127.0.0.1:{s.server_port}" for s in servers]
            ready = {u: read_endpoint(client, u, "/readyz", limits) for u in urls}
            docs = {u: read_endpoint(client, u, CAPABILITIES_PATH, limits) for u in urls}
        evidence: dict[str, Any] = {}
        gates = admission_gates(ready, docs, None, [], same_path_as_blue=False,
                                evidence=evidence, image=policy.spec.image)
        return gates, evidence
    finally:
        for s in servers:
            s.shutdown()


def test_paths_resolve_against_the_policy_file(world: dict[str, Any]) -> None:
    spec = policy_for(world, SIGNED).spec.image
    assert spec is not None
    assert spec.keys == (str(world["root"] / "policy" / "release.asc"),)
    assert spec.signatures == str(world["sigs"])
    assert POLICY_DIR_CONTEXT == POLICY_DIR  # one context key, spelled twice (gates/rollout)


def test_a_signed_green_is_admitted(world: dict[str, Any]) -> None:
    v1 = world["images"]["v1"]
    gates, evidence = admit(policy_for(world, SIGNED), declaring(v1["manifest_digest"]))
    assert gates[IMAGE_GATE].verdict is Verdict.PASS, gates[IMAGE_GATE].reason
    assert f"signed for {IDENTITY}" in gates[IMAGE_GATE].reason
    assert evidence["image"]["signatures"][-1]["signer"] == world["release"].fingerprint
    assert evidence["release"]["green"]["image"]["digest"] == v1["manifest_digest"]
    assert evidence["release"]["green"]["snapshot"]["hostname"] == SNAPSHOT["hostname"]


def test_an_unsigned_green_is_refused(world: dict[str, Any]) -> None:
    v2 = world["images"]["v2"]
    gates, _ = admit(policy_for(world, SIGNED), declaring(v2["manifest_digest"]))
    verdict = gates[IMAGE_GATE]
    assert verdict.verdict is Verdict.FAIL
    assert f"unsigned: no signature for {v2['manifest_digest']} as {IDENTITY}" in verdict.reason


def test_an_undeclared_or_uncheckable_image_is_never_a_pass(world: dict[str, Any]) -> None:
    """No declaration: refused when a signature is required, no gate otherwise; a
    declaration the policy has nothing to check with: nodata."""
    gates, _ = admit(policy_for(world, SIGNED), declaring(None, None))
    assert gates[IMAGE_GATE].verdict is Verdict.FAIL
    assert "ROLLOUT_IMAGE_DIGEST unset" in gates[IMAGE_GATE].reason
    budget_only = policy_for(world, "    maxPullSize: 2GB\n")
    audit_only, evidence = admit(budget_only, declaring(None, None))
    assert IMAGE_GATE not in audit_only and "skipped" in evidence["image"]
    declared, _ = admit(budget_only, declaring(world["images"]["v1"]["manifest_digest"]))
    assert declared[IMAGE_GATE].verdict is Verdict.NODATA  # nothing to check it with
    assert "neither an archive to audit nor requireSignature" in declared[IMAGE_GATE].reason


def test_a_retagged_signature_is_refused(world: dict[str, Any], tmp_path: Path) -> None:
    """v1's signature copied into v2's slot: the signature names v1's digest, not v2's."""
    v1, v2 = world["images"]["v1"], world["images"]["v2"]
    stolen = lookaside_path(world["sigs"], IDENTITY, v2["manifest_digest"])
    stolen.parent.mkdir(parents=True)
    shutil.copy(lookaside_path(world["sigs"], IDENTITY, v1["manifest_digest"]), stolen)
    try:
        gates, _ = admit(policy_for(world, SIGNED), declaring(v2["manifest_digest"]))
    finally:
        shutil.rmtree(stolen.parent)
    reason = gates[IMAGE_GATE].reason
    assert gates[IMAGE_GATE].verdict is Verdict.FAIL
    assert f"the signature is for {v1['manifest_digest']}, the image is " \
           f"{v2['manifest_digest']} (re-tagged or another image)" in reason


def test_a_signature_for_another_identity_or_by_an_untrusted_key_is_refused(
        world: dict[str, Any]) -> None:
    v1 = world["images"]["v1"]
    other = policy_for(world, SIGNED + "    identity: registry.example/sd/server:latest\n")
    gates, _ = admit(other, declaring(v1["manifest_digest"]))
    assert gates[IMAGE_GATE].verdict is Verdict.FAIL
    assert "unsigned: no signature" not in gates[IMAGE_GATE].reason  # same repository slot
    assert f"the signature is for {IDENTITY!r}" in gates[IMAGE_GATE].reason
    shutil.copy(world["mallory"].public, world["root"] / "policy" / "mallory.asc")
    untrusted = policy_for(world, SIGNED.replace("release.asc", "mallory.asc"))
    gates, _ = admit(untrusted, declaring(v1["manifest_digest"]))
    assert "which is not one of the trusted keys" in gates[IMAGE_GATE].reason


def test_the_archive_is_audited_and_must_be_greens_digest(world: dict[str, Any]) -> None:
    v1, v2 = world["images"]["v1"], world["images"]["v2"]
    archive = Path(v1["oci-archive"].removeprefix("oci-archive:"))
    shutil.copy(archive, world["root"] / "policy" / "v1.oci.tar")
    audited = policy_for(world, SIGNED + "    archive: oci-archive:v1.oci.tar\n"
                         "    gpu: true\n    allowWeights: [opt/models]\n")
    gates, evidence = admit(audited, declaring(v1["manifest_digest"]))
    assert gates[IMAGE_GATE].verdict is Verdict.PASS, gates[IMAGE_GATE].reason
    assert "audited" in gates[IMAGE_GATE].reason
    assert "skopeo standalone-verify" in evidence["image"]["signatures"][-1]["reason"]
    assert evidence["image"]["audit"]["digest"] == v1["manifest_digest"]
    gates, _ = admit(audited, declaring(v2["manifest_digest"]))
    assert gates[IMAGE_GATE].verdict is Verdict.FAIL
    assert f"spec.image.archive is {v1['manifest_digest']} (re-tagged" in \
        gates[IMAGE_GATE].reason


def test_instances_on_different_images_are_refused(world: dict[str, Any]) -> None:
    v1, v2 = world["images"]["v1"], world["images"]["v2"]
    gates, _ = admit(policy_for(world, SIGNED), declaring(v1["manifest_digest"]),
                     declaring(v2["manifest_digest"]))
    assert gates[IMAGE_GATE].verdict is Verdict.FAIL
    assert "green's instances run different images" in gates[IMAGE_GATE].reason


def test_policy_refuses_a_signature_requirement_without_keys(world: dict[str, Any]) -> None:
    path = world["root"] / "policy" / "bad.yaml"
    path.write_text(url_policy("img", "http://127.0.0.1:1", "http://127.0.0.1:2", """
  steps: [{weight: 0}]
  gates: [{type: latency}]
  image: {requireSignature: true, keys: [nope.asc], signatures: sigs}
"""))
    result = CliRunner().invoke(app, ["policy", "validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "nope.asc" in result.output and "does not exist" in result.output


def test_the_declaration_comes_from_the_environment_as_kubernetes_writes_it(
        world: dict[str, Any]) -> None:
    """ROLLOUT_IMAGE_DIGEST may be a pod's imageID; anything else is kept as an error and
    refused at admission, never guessed at."""
    digest = world["images"]["v1"]["manifest_digest"]
    pod = ImageFacts.from_env({"ROLLOUT_IMAGE_REF": IDENTITY, "ROLLOUT_IMAGE_DIGEST":
                               f"docker-pullable://registry.example/sd/server@{digest}"})
    assert pod == ImageFacts(ref=IDENTITY, digest=digest)
    assert ImageFacts.from_env({}) is None
    bad = ImageFacts.from_env({"ROLLOUT_IMAGE_DIGEST": f"{digest}-rebuilt"})
    assert bad is not None and bad.digest is None and "is not sha256:<64 hex>" in str(bad.error)
    body = declaring(None, None)
    body["snapshot"] = {**SNAPSHOT, "image": bad.model_dump(exclude_none=True)}
    gates, _ = admit(policy_for(world, SIGNED), body)
    assert gates[IMAGE_GATE].verdict is Verdict.FAIL
    assert "green declares a malformed image digest" in gates[IMAGE_GATE].reason

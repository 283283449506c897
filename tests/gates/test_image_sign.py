"""Simple signing of image digests: real gpg keys, real skopeo, synthesized OCI images.

Every signature is made by ``skopeo standalone-sign`` (through ``rollout image sign`` or
directly) and checked both by our decoding and by ``skopeo standalone-verify``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpg_keys import Key, signing_key
from images import clean_image, write_forms
from typer.testing import CliRunner

from gates.image.reader import ImageError
from gates.image.signing import (
    SignatureError,
    find_signatures,
    image_manifest,
    lookaside_path,
    sign,
    verify,
)
from rollout.cli import app

IDENTITY = "registry.example/sd/server:1.4"


def run(*args: str) -> Any:
    """``rollout ARGS`` through the real command line app."""
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Key]]:
    root = tmp_path_factory.mktemp("keys")
    with signing_key(root, "release") as release, signing_key(root, "mallory") as mallory:
        yield {"release": release, "mallory": mallory}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    root = tmp_path_factory.mktemp("sign-images")
    return {"v1": write_forms(clean_image(), root, "v1"),
            "v2": write_forms(clean_image(onnxruntime="1.19.0"), root, "v2")}


@pytest.fixture(scope="module")
def signed_v1(keys: dict[str, Key], images: dict[str, dict[str, str]],
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sig") / "v1.sig"
    result = run("image", "sign", images["v1"]["oci-archive"], "--key",
                 keys["release"].fingerprint, "--gpg-home", str(keys["release"].home),
                 "--identity", IDENTITY, "-o", str(out), "--output", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["digest"] == images["v1"]["manifest_digest"]
    return out


def test_round_trip_every_oci_form(signed_v1: Path, keys: dict[str, Key],
                                   images: dict[str, dict[str, str]]) -> None:
    for form in ("oci-archive", "oci"):
        result = run("image", "verify", images["v1"][form], "--signature", str(signed_v1),
                     "--identity", IDENTITY, "--keyring", str(keys["release"].public),
                     "--output", "json")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["verdict"] == "pass"
        assert doc["signatures"][0]["signer"] == keys["release"].fingerprint
        assert "skopeo standalone-verify" in doc["reason"]


def test_the_signature_is_the_standard_format(signed_v1: Path, keys: dict[str, Key],
                                              images: dict[str, dict[str, str]],
                                              tmp_path: Path) -> None:
    """skopeo itself accepts it, and its payload is an atomic container signature."""
    digest, manifest = image_manifest(images["v1"]["oci-archive"])
    (tmp_path / "manifest.json").write_bytes(manifest)
    env = {**os.environ, "GNUPGHOME": str(keys["release"].home)}
    done = subprocess.run(["skopeo", "standalone-verify", str(tmp_path / "manifest.json"),
                           IDENTITY, keys["release"].fingerprint, str(signed_v1)],
                          env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert digest in done.stdout
    payload = subprocess.run(["gpg", "--batch", "--decrypt", str(signed_v1)], env=env,
                             capture_output=True, check=True).stdout
    critical = json.loads(payload)["critical"]
    assert critical == {"type": "atomic container signature",
                        "image": {"docker-manifest-digest": digest},
                        "identity": {"docker-reference": IDENTITY}}


def test_tampered_digest_refused(signed_v1: Path, keys: dict[str, Key],
                                 images: dict[str, dict[str, str]]) -> None:
    """v1's signature presented for v2 (another image's manifest): exit 1, both digests named."""
    result = run("image", "verify", images["v2"]["oci-archive"], "--signature", str(signed_v1),
                 "--identity", IDENTITY, "--keyring", str(keys["release"].public))
    assert result.exit_code == 1, result.output
    assert "REFUSED" in result.output
    assert images["v1"]["manifest_digest"] in result.output
    assert images["v2"]["manifest_digest"] in result.output
    assert "re-tagged or another image" in result.output


def test_skopeo_refuses_a_manifest_that_is_not_the_signed_one(
        signed_v1: Path, keys: dict[str, Key], images: dict[str, dict[str, str]]) -> None:
    """The manifest check is skopeo's own: our decoding told the right digest, the bytes lie."""
    digest, _ = image_manifest(images["v1"]["oci-archive"])
    _, other = image_manifest(images["v2"]["oci-archive"])
    check = verify(signed_v1, digest=digest, identity=IDENTITY,
                   keys=[keys["release"].public], manifest=other)
    assert not check.ok
    assert check.reason.startswith("skopeo standalone-verify:")
    assert "does not match" in check.reason


def test_retagged_identity_refused(signed_v1: Path, keys: dict[str, Key],
                                   images: dict[str, dict[str, str]]) -> None:
    result = run("image", "verify", images["v1"]["oci"], "--signature", str(signed_v1),
                 "--identity", "registry.example/sd/server:latest",
                 "--keyring", str(keys["release"].public), "--output", "json")
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "fail"
    assert doc["signatures"][0]["identity"] == IDENTITY
    assert f"the signature is for {IDENTITY!r}" in doc["reason"]


def test_unknown_key_refused(keys: dict[str, Key], images: dict[str, dict[str, str]],
                             tmp_path: Path) -> None:
    """Signed by a key that is not trusted: refused, whoever holds the secret key."""
    sig = tmp_path / "mallory.sig"
    sign(images["v1"]["oci-archive"], key=keys["mallory"].fingerprint, identity=IDENTITY,
         output=sig, gnupg_home=keys["mallory"].home)
    result = run("image", "verify", images["v1"]["oci-archive"], "--signature", str(sig),
                 "--identity", IDENTITY, "--keyring", str(keys["release"].public))
    assert result.exit_code == 1, result.output
    assert "which is not one of the trusted keys" in result.output
    both = run("image", "verify", images["v1"]["oci-archive"], "--signature", str(sig),
               "--identity", IDENTITY, "--keyring", str(keys["release"].public),
               "--keyring", str(keys["mallory"].public))
    assert both.exit_code == 0, both.output


def test_corrupted_signature_refused(signed_v1: Path, keys: dict[str, Key],
                                     images: dict[str, dict[str, str]], tmp_path: Path) -> None:
    data = bytearray(signed_v1.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.sig"
    bad.write_bytes(bytes(data))
    digest = images["v1"]["manifest_digest"]
    check = verify(bad, digest=digest, identity=IDENTITY, keys=[keys["release"].public])
    assert not check.ok and check.signer is None


def test_sigstore_layout_and_digest_only_verification(
        keys: dict[str, Key], images: dict[str, dict[str, str]], tmp_path: Path) -> None:
    """--sigstore writes containers' lookaside layout; a second signature gets index 2; a
    digest alone (no manifest at hand, as at admission) verifies through gpg."""
    store = tmp_path / "sigstore"
    k = keys["release"]
    for _ in range(2):
        result = run("image", "sign", images["v1"]["oci"], "--key", k.fingerprint,
                     "--gpg-home", str(k.home), "--identity", IDENTITY, "--sigstore", str(store))
        assert result.exit_code == 0, result.output
    digest = images["v1"]["manifest_digest"]
    hexa = digest.removeprefix("sha256:")
    assert find_signatures(store, IDENTITY, digest) == [
        store / f"sd/server@sha256={hexa}" / "signature-1",
        store / f"sd/server@sha256={hexa}" / "signature-2"]
    assert lookaside_path(store, "sd-server", digest).parent.name.startswith("sd-server@")
    check = verify(find_signatures(store, IDENTITY, digest)[0], digest=digest,
                   identity=IDENTITY, keys=[k.public])
    assert check.ok and "skopeo" not in check.reason
    unsigned = run("image", "verify", images["v2"]["oci"], "--sigstore", str(store),
                   "--identity", IDENTITY, "--keyring", str(k.public))
    assert unsigned.exit_code == 1 and "unsigned: no signature" in unsigned.output


def test_bad_input_exits_2(signed_v1: Path, keys: dict[str, Key],
                           images: dict[str, dict[str, str]], tmp_path: Path) -> None:
    k = keys["release"]
    docker = run("image", "sign", images["v1"]["docker-archive"], "--key", k.fingerprint,
                 "--gpg-home", str(k.home), "--identity", IDENTITY, "-o", str(tmp_path / "s"))
    assert docker.exit_code == 2 and "no manifest digest" in docker.output
    missing = run("image", "verify", str(tmp_path / "nope.tar"), "--signature", str(signed_v1),
                  "--identity", IDENTITY, "--keyring", str(k.public), "--output", "json")
    assert missing.exit_code == 2 and json.loads(missing.stdout)["verdict"] == "error"
    not_a_key = tmp_path / "junk.asc"
    not_a_key.write_text("not a key\n")
    junk = run("image", "verify", images["v1"]["oci"], "--signature", str(signed_v1),
               "--identity", IDENTITY, "--keyring", str(not_a_key))
    assert junk.exit_code == 2 and "not an OpenPGP public key" in junk.output
    no_key = run("image", "sign", images["v1"]["oci"], "--key", "0" * 40, "--gpg-home",
                 str(k.home), "--identity", IDENTITY, "-o", str(tmp_path / "s"))
    assert no_key.exit_code == 2 and "skopeo standalone-sign" in no_key.output
    assert not (tmp_path / "s").exists()
    bad_ref = run("image", "sign", images["v1"]["oci"], "--key", k.fingerprint, "--gpg-home",
                  str(k.home), "--identity", "Not A Ref", "-o", str(tmp_path / "s"))
    assert bad_ref.exit_code == 2 and "not a docker reference" in bad_ref.output
    with pytest.raises(ImageError):
        image_manifest(images["v1"]["docker-archive"])
    with pytest.raises(SignatureError):
        verify(signed_v1, digest=images["v1"]["manifest_digest"], identity=IDENTITY, keys=[])

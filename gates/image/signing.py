"""Signed image digests in containers' *simple signing* format, made and checked offline.

Why this format: it is what ``skopeo``, ``podman`` and CRI-O verify (``policy.json``
``signedBy``), it needs nothing but GPG and a file, and its payload names exactly the two facts
admission must bind: the manifest digest (``docker-manifest-digest``) and the docker reference
it was released as (``docker-reference``). A signature is an OpenPGP-signed JSON document::

    {"critical": {"type": "atomic container signature",
                  "image": {"docker-manifest-digest": "sha256:..."},
                  "identity": {"docker-reference": "registry.example/sd/server:1.4"}},
     "optional": {"creator": "...", "timestamp": ...}}

* :func:`sign` runs ``skopeo standalone-sign`` on the image's manifest with a key of a GNUPGHOME;
* :func:`verify` imports the trusted key files into a throwaway GNUPGHOME (no keyring of the
  user's is read or changed), decodes the signature with ``gpg`` (signer, digest and identity
  each checked, so a refusal says which of them is wrong), and where the manifest itself is at
  hand also runs ``skopeo standalone-verify`` on it: the standard tool recomputes the digest;
* :func:`lookaside_path` / :func:`find_signatures`: the directory layout containers/image reads
  signatures from (``DIR/<repository path>@sha256=<hex>/signature-N``).

Nothing here touches the network. Missing tools or unreadable key files raise
:class:`SignatureError` (bad input); a signature that does not hold is a :class:`Verification`
with ``ok`` false and the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict

from gates.image.reader import manifest_bytes, open_image

__all__ = [
    "SIGNATURE_TYPE",
    "SignatureError",
    "Signed",
    "Verification",
    "check_signatures",
    "find_signatures",
    "image_manifest",
    "is_docker_reference",
    "lookaside_path",
    "repository_path",
    "sign",
    "verify",
]

SIGNATURE_TYPE: Final = "atomic container signature"
#: A docker reference as simple signing names it: [domain[:port]/]path[:tag], no digest.
_DOCKER_REF = re.compile(r"(?:(?P<domain>[A-Za-z0-9.-]+(?::\d+)?)/)?"
                         r"(?P<path>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
                         r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
                         r"(?::(?P<tag>\w[\w.-]{0,127}))?")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
#: Bound on one gpg/skopeo call: both answer in well under a second for a signature.
_TOOL_TIMEOUT_S = 60.0
_FROZEN = ConfigDict(extra="forbid", frozen=True)


class SignatureError(Exception):
    """Signing or verification could not be attempted (tool missing, key file unreadable,
    key not in the GNUPGHOME): bad input, never a verdict on the signature."""


class Signed(BaseModel):
    """What :func:`sign` wrote."""

    model_config = _FROZEN

    signature: str
    digest: str
    identity: str
    key: str


class Verification(BaseModel):
    """One signature checked against a digest and identity; ``reason`` says why not when
    ``ok`` is false. ``signer``, ``digest`` and ``identity`` are what the signature claims."""

    model_config = _FROZEN

    ok: bool
    reason: str
    signature: str
    signer: str | None = None
    digest: str | None = None
    identity: str | None = None


def is_docker_reference(text: str) -> bool:
    """``registry.example/sd/server:1.4``, ``sd-server``, ``localhost:5000/sd:tag``..."""
    match = _DOCKER_REF.fullmatch(text)
    return match is not None and _split(match)[0] is not None


def _split(match: re.Match[str]) -> tuple[str | None, str]:
    """(domain, repository path) the way docker normalises them (``docker.io/library/x``)."""
    domain, path = match.group("domain"), match.group("path")
    if domain is not None and not ("." in domain or ":" in domain or domain == "localhost"):
        path, domain = f"{domain}/{path}", None  # "team/app": a path, not a registry
    if domain is None and "/" not in path:
        path = f"library/{path}"
    return domain or "docker.io", path


def repository_path(identity: str) -> str:
    """The repository path of a docker reference, without registry and tag (what the
    lookaside layout is keyed by): ``reg.example/sd/server:1`` -> ``sd/server``."""
    match = _DOCKER_REF.fullmatch(identity)
    if match is None:
        raise SignatureError(f"{identity!r} is not a docker reference")
    return _split(match)[1]


def lookaside_path(root: Path, identity: str, digest: str, index: int = 1) -> Path:
    """``root/<repository path>@sha256=<hex>/signature-<index>`` (containers/image's layout)."""
    if not _DIGEST.fullmatch(digest):
        raise SignatureError(f"{digest!r} is not a sha256:<64 hex> digest")
    algorithm, hexa = digest.split(":", 1)
    return root / f"{repository_path(identity)}@{algorithm}={hexa}" / f"signature-{index}"


def find_signatures(root: Path, identity: str, digest: str) -> list[Path]:
    """The signatures stored for ``digest`` under ``identity``'s repository, in index order."""
    found = []
    index = 1
    while (path := lookaside_path(root, identity, digest, index)).is_file():
        found.append(path)
        index += 1
    return found


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SignatureError(f"{name} is not installed (apt-get install {name})")
    return found


def _run(argv: list[str], home: Path | None,
         stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    if home is not None:
        env["GNUPGHOME"] = str(home)
    try:
        return subprocess.run(argv, env=env, input=stdin, capture_output=True,
                              timeout=_TOOL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SignatureError(f"{Path(argv[0]).name}: {e}") from e


def _last_line(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    text = lines[-1] if lines else "no message"
    found = re.search(r'msg="(.*)"', text)  # skopeo's logrus line
    return found.group(1).replace('\\"', '"') if found else text


def image_manifest(image: str) -> tuple[str, bytes]:
    """The manifest digest and bytes of ``image`` (any form :func:`open_image` accepts).

    Raises:
        gates.image.reader.ImageError: not an image, or one without a manifest digest.
    """
    with open_image(image) as opened:
        manifest = manifest_bytes(opened)
        digest = opened.manifest_digest
    assert digest is not None  # manifest_bytes refuses an image without one
    return digest, manifest


def sign(image: str, *, key: str, identity: str, output: Path,
         gnupg_home: Path | None = None, passphrase_file: Path | None = None) -> Signed:
    """Sign ``image``'s manifest digest for ``identity`` with ``key`` (a fingerprint or key id
    of ``gnupg_home``, default ``$GNUPGHOME``) through ``skopeo standalone-sign``.

    Raises:
        gates.image.reader.ImageError: not an image, or one without a manifest digest.
        SignatureError: skopeo missing, a bad identity, the key not usable for signing.
    """
    if not is_docker_reference(identity):
        raise SignatureError(f"--identity {identity!r} is not a docker reference such as "
                             "registry.example/sd/server:1.4")
    digest, manifest = image_manifest(image)
    with tempfile.TemporaryDirectory(prefix="rollout-sign-") as tmp:
        manifest_file = Path(tmp) / "manifest.json"
        manifest_file.write_bytes(manifest)
        argv = [_tool("skopeo"), "standalone-sign", str(manifest_file), identity, key,
                "--output", str(output)]
        if passphrase_file is not None:
            argv += ["--passphrase-file", str(passphrase_file)]
        output.parent.mkdir(parents=True, exist_ok=True)
        done = _run(argv, gnupg_home)
    if done.returncode != 0:
        output.unlink(missing_ok=True)
        raise SignatureError(f"skopeo standalone-sign: {_last_line(done.stderr)}")
    return Signed(signature=str(output), digest=digest, identity=identity, key=key)


@contextmanager
def _trusted_home(keys: Sequence[Path]) -> Iterator[Path]:
    """A throwaway GNUPGHOME holding exactly the trusted keys (nothing of the user's)."""
    if not keys:
        raise SignatureError("no trusted key given")
    gpg = _tool("gpg")
    with tempfile.TemporaryDirectory(prefix="rollout-gpg-") as tmp:
        home = Path(tmp)
        home.chmod(0o700)
        for key in keys:
            if not key.is_file():
                raise SignatureError(f"key file {key}: no such file")
            done = _run([gpg, "--batch", "--no-autostart", "--import", str(key)], home)
            if done.returncode != 0:
                raise SignatureError(f"key file {key}: not an OpenPGP public key "
                                     f"({_last_line(done.stderr)})")
        yield home


def _status(stderr: bytes) -> dict[str, list[str]]:
    """gpg's ``[GNUPG:] KEYWORD args`` lines: keyword -> args of its first occurrence."""
    out: dict[str, list[str]] = {}
    for line in stderr.decode(errors="replace").splitlines():
        if line.startswith("[GNUPG:] "):
            keyword, *args = line[len("[GNUPG:] "):].split()
            out.setdefault(keyword, args)
    return out


def _claims(payload: bytes) -> tuple[str | None, str | None, str | None]:
    """(digest, identity, problem) of a simple-signing payload."""
    try:
        doc: Any = json.loads(payload)
        critical = doc["critical"]
        kind = critical["type"]
        digest = critical["image"]["docker-manifest-digest"]
        identity = critical["identity"]["docker-reference"]
    except (ValueError, KeyError, TypeError):
        return None, None, "the signed payload is not an atomic container signature document"
    if kind != SIGNATURE_TYPE:
        return None, None, f"the signed payload is of type {kind!r}, not {SIGNATURE_TYPE!r}"
    return str(digest), str(identity), None


def verify(signature: Path, *, digest: str, identity: str, keys: Sequence[Path],
           manifest: bytes | None = None) -> Verification:
    """Does ``signature`` sign ``digest`` as ``identity`` with one of ``keys``?

    With ``manifest`` (the image's manifest bytes, e.g. from a local archive) the signature
    must also pass ``skopeo standalone-verify`` on it, which recomputes the digest itself.

    Raises:
        SignatureError: gpg/skopeo missing, a key file unreadable, the signature unreadable.
    """
    try:
        data = signature.read_bytes()
    except OSError as e:
        raise SignatureError(f"signature {signature}: {e.strerror}") from e

    def refused(reason: str, **claims: str | None) -> Verification:
        return Verification(ok=False, reason=reason, signature=str(signature), **claims)

    with _trusted_home(keys) as home:
        done = _run([_tool("gpg"), "--batch", "--no-autostart", "--status-fd", "2",
                     "--decrypt"], home, data)
        status = _status(done.stderr)
        if "VALIDSIG" not in status:
            if "NO_PUBKEY" in status:
                return refused(f"signed by key {status['NO_PUBKEY'][0]}, which is not one of "
                               "the trusted keys")
            if "BADSIG" in status:
                return refused("the signature does not match its payload (tampered)")
            return refused(f"not an OpenPGP signature ({_last_line(done.stderr)})")
        signer = status["VALIDSIG"][0]
        claimed, claimed_identity, problem = _claims(done.stdout)
        claims = {"signer": signer, "digest": claimed, "identity": claimed_identity}
        if problem is not None:
            return refused(problem, **claims)
        if claimed != digest:
            return refused(f"the signature is for {claimed}, the image is {digest} (re-tagged "
                           "or another image)", **claims)
        if claimed_identity != identity:
            return refused(f"the signature is for {claimed_identity!r}, not {identity!r}",
                           **claims)
        if manifest is not None:
            with tempfile.TemporaryDirectory(prefix="rollout-verify-") as tmp:
                manifest_file = Path(tmp) / "manifest.json"
                manifest_file.write_bytes(manifest)
                checked = _run([_tool("skopeo"), "standalone-verify", str(manifest_file),
                                identity, signer, str(signature)], home)
            if checked.returncode != 0:
                return refused(f"skopeo standalone-verify: {_last_line(checked.stderr)}",
                               **claims)
    how = " (skopeo standalone-verify on the manifest)" if manifest is not None else ""
    return Verification(ok=True, reason=f"signed by {signer} for {identity}{how}",
                        signature=str(signature), **claims)


def check_signatures(signatures: Sequence[Path], *, digest: str, identity: str,
                     keys: Sequence[Path], manifest: bytes | None = None) -> list[Verification]:
    """:func:`verify` each signature in turn until one holds (then the last entry is ``ok``):
    an image may carry several signatures (re-signed, several keys)."""
    out: list[Verification] = []
    for path in signatures:
        out.append(verify(path, digest=digest, identity=identity, keys=keys, manifest=manifest))
        if out[-1].ok:
            break
    return out

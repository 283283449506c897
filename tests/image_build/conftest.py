"""Shared by the real image builds here: the tool check, the cached base, a scratch tag.

Every test in this directory builds with buildah from the mmdebstrap base that
``deploy/images/build.py`` caches (``${XDG_CACHE_HOME:-~/.cache}/rollout-gates``) and imports;
the first run on a machine makes it (~1 min, Debian's mirror), later runs reuse it. Without
buildah or mmdebstrap (``make system-deps`` installs both; CI does) the tests skip and say so:
nothing else makes them skip (``image_build_support.REQUIRES_TOOLS``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from image_build_support import run_build_script


@pytest.fixture(scope="session")
def base_tag() -> str:
    """The imported mmdebstrap base (made once per machine, then reused from the cache)."""
    return str(run_build_script("--base-only")["base"]["tag"])


@pytest.fixture
def scratch_tag(request: pytest.FixtureRequest) -> Iterator[str]:
    """A tag unique to the test, removed from the machine's image store afterwards."""
    tag = f"localhost/rollout-gates-test/{request.node.name.lower().replace('_', '-')}:1"
    yield tag
    subprocess.run(["buildah", "rmi", "--force", tag], capture_output=True, check=False)

"""Session-scoped servers shared by the tests in this directory (two paths can be compared).

Without torch or diffusers (the ``deploy/sd-server`` install) every test here is skipped with the
reason; CI installs them, so there they run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
from sdserver_harness import ORT_CUDA_ARGS, TOKEN, Server, server_env, start_server

MISSING = [m for m in ("torch", "diffusers", "sd_server") if importlib.util.find_spec(m) is None]
HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not MISSING:
        return
    reason = (f"{', '.join(MISSING)} not importable: install the server with "
              "`pip install torch==2.13.0 && pip install -e 'deploy/sd-server[ort]'`")
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export of the tiny UNet per test session."""
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="session")
def main_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Default fast path, explicit fp32, bearer auth, a small queue for the overload test."""
    log = tmp_path_factory.mktemp("main") / "server.log"
    env = server_env()
    env["SD_SERVER_AUTH_TOKEN"] = TOKEN
    server = start_server(["--dtype", "fp32", "--attention", "sdpa", "--queue-size", "2",
                           "--max-batch", "4", "--max-wait-ms", "20"], log, env=env)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def generic_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The generic path (math attention, bf16) with deliberate fault injection on."""
    log = tmp_path_factory.mktemp("generic") / "server.log"
    server = start_server(["--attention", "math", "--dtype", "bf16",
                           "--fault-latency-ms", "60", "--fault-error-rate", "0.5",
                           "--fault-seed", "7", "--max-wait-ms", "0"], log)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ort_server(onnx_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The ORT UNet asked for CUDA on a CPU-only onnxruntime, served with --allow-degraded,
    with ORT runtime settings (a CUDA arena cap that cannot take effect, no CPU arena)."""
    log = tmp_path_factory.mktemp("ort") / "server.log"
    server = start_server([*ORT_CUDA_ARGS, "--allow-degraded", "--onnx-cache", str(onnx_cache),
                           "--ort-gpu-mem-limit", "2GiB", "--ort-no-cpu-mem-arena"], log)
    yield server
    server.stop()

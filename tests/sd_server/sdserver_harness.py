"""Run the real ``sd-server`` as a subprocess on a free loopback port, and read its answers.

Every server uses the tiny model on the CPU with one thread (``--threads 1`` and
``OMP_NUM_THREADS=1``): image bits depend on the thread count, and the machine is shared.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

TOKEN = "test-token-3f9c"
#: The ONNX Runtime UNet asking for CUDA first: on this CPU-only onnxruntime, a real fallback.
ORT_CUDA_ARGS = ("--unet-backend", "onnxruntime",
                 "--ort-providers", "CUDAExecutionProvider,CPUExecutionProvider")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop("SD_SERVER_AUTH_TOKEN", None)
    return env


def sd_server_command() -> list[str]:
    """The installed console script (proves the entry point), else ``python -m sd_server``."""
    script = Path(sys.executable).with_name("sd-server")
    if script.exists():
        return [str(script)]
    found = shutil.which("sd-server")
    return [found] if found else [sys.executable, "-m", "sd_server"]


BASE_ARGS = ("--model", "tiny", "--device", "cpu", "--threads", "1")


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(args: Sequence[str], log: Path, *, env: dict[str, str] | None = None,
                 timeout_s: float = 150.0) -> Server:
    """Start a server and wait for ``/readyz`` 200; fail with its log if it exits or hangs."""
    port = free_port()
    cmd = [*sd_server_command(), *BASE_ARGS, "--port", str(port), *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env=env or server_env())
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited {proc.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    pytest.fail(f"server not ready after {timeout_s} s:\n{server.log_tail()}")


def run_server_to_exit(args: Sequence[str], *, timeout_s: float = 150.0
                       ) -> subprocess.CompletedProcess[str]:
    """Run a server that is expected to refuse to start; return its exit and output."""
    port = free_port()
    cmd = [*sd_server_command(), *BASE_ARGS, "--port", str(port), *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout_s,
                          env=server_env())


def png_size(b64: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(b64))) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        return img.size


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0.0 when the series is absent)."""
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m or m[1] != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m[2] or ""))
        if got == labels:
            return float(m[3])
    return 0.0



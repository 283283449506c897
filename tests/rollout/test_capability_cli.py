"""``rollout snapshot`` and ``rollout admit`` on this machine: the issue's acceptance lines.

The commands are registered on a local typer app exactly as ``rollout.cli`` registers them
(``register(app)``); one test also runs the real ``python -m rollout.cli`` once they are there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
from typer.testing import CliRunner

from gates.capability.collect import capabilities_document, collect_local
from gates.capability.snapshot import CapabilitySnapshot
from rollout.cli.admit import register as register_admit
from rollout.cli.snapshot import register as register_snapshot

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "policies" / "capability-snapshot.schema.json"
HAS_GPU = Path("/dev/nvidiactl").exists()
_APP_SOURCE = (
    "import typer\n"
    "from rollout.cli.admit import register\n"
    "app = typer.Typer(callback=lambda: None)\n"
    "register(app)\n"
    "app()\n"
)

app = typer.Typer(callback=lambda: None)  # a command group, like rollout.cli.app
register_snapshot(app)
register_admit(app)
runner = CliRunner()


def run(*args: str) -> Any:
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def local() -> CapabilitySnapshot:
    return collect_local(deadline_s=30)


@pytest.fixture(scope="module")
def snap_file(local: CapabilitySnapshot, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("snap") / "green.json"
    path.write_text(local.model_dump_json())
    return path


@pytest.fixture(scope="module")
def server(local: CapabilitySnapshot) -> Iterator[str]:
    """A server publishing the snapshot at GET /capabilities (and nonsense at /bad)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            doc = capabilities_document(local) if self.path == "/capabilities" else {"x": 1}
            body = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{http.server_port}"
    http.shutdown()


def test_admit_local_requiring_cuda_names_the_cpu_fallback() -> None:
    r = run("admit", "--local", "--require-provider", CUDA)
    assert r.exit_code == 1, r.output
    assert "providers.required" in r.stdout and "fell back to CPU" in r.stdout
    assert f"-> bound [{CPU}]" in r.stdout
    r = run("admit", "--local", "--require-provider", CUDA, "--output", "json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 1 and doc["admitted"] is False
    (v,) = doc["violations"]
    assert (v["check"], v["expected"], v["observed"]) == ("providers.required", CUDA, [CPU])
    assert set(v) == {"check", "expected", "observed", "message"}


@pytest.mark.skipif(HAS_GPU, reason="needs a machine without a GPU")
def test_admit_local_requiring_a_gpu_shows_nvmls_error() -> None:
    r = run("admit", "--local", "--require-gpus", "1", "-o", "json")
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    count = next(v for v in doc["violations"] if v["check"] == "gpu.count")
    assert count["observed"] == "NVMLError_LibraryNotFound: NVML Shared Library Not Found"
    r = run("admit", "--local", "--require-gpus", "1")
    assert r.exit_code == 1 and "NVML Shared Library Not Found" in r.stdout


def test_snapshot_local_json_validates_against_the_committed_schema() -> None:
    r = run("snapshot", "--local", "--output", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(doc)
    assert doc["provider_probe"]["requested"][0] == "TensorrtExecutionProvider"
    table = run("snapshot", "--providers", CPU)
    assert table.exit_code == 0 and "providers  bound" in table.stdout


def test_admit_logs_with_the_phrase_ort_emitted_names_the_line(
    local: CapabilitySnapshot, snap_file: Path, tmp_path: Path
) -> None:
    assert local.provider_probe is not None and local.provider_probe.warnings
    log = tmp_path / "server.log"
    log.write_text("booting\nloading model\n" + local.provider_probe.warnings[-1] + "\nready\n")
    r = run("admit", "--snapshot", str(snap_file), "--logs", str(log))
    assert r.exit_code == 1, r.output
    assert f"{log}:3: provider-unavailable" in r.stdout
    clean = tmp_path / "clean.log"
    clean.write_text("booting\nready\n")
    assert run("admit", "--snapshot", str(snap_file), "--logs", str(clean)).exit_code == 0


def test_snapshot_diff(local: CapabilitySnapshot, snap_file: Path, tmp_path: Path) -> None:
    same = run("snapshot", "diff", str(snap_file), str(snap_file))
    assert same.exit_code == 0 and "no differences" in same.stdout
    doc = local.model_dump(mode="json", exclude={"versions", "fingerprint"})
    doc["python_packages"]["onnxruntime-gpu"] = "1.23.0"  # the shadowed-wheel classic
    other = tmp_path / "other.json"
    other.write_text(json.dumps(doc))
    r = run("snapshot", "diff", str(snap_file), str(other), "-o", "json")
    assert r.exit_code == 1
    (entry,) = json.loads(r.stdout)["entries"]
    assert entry == {
        "category": "packages",
        "key": "onnxruntime-gpu",
        "blue": None,
        "green": "1.23.0",
    }
    assert run("snapshot", "diff", str(snap_file), str(tmp_path / "missing.json")).exit_code == 2


def test_url_source_reads_capabilities(server: str, local: CapabilitySnapshot) -> None:
    r = run("snapshot", "--url", server, "-o", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["fingerprint"] == local.fingerprint
    r = run("admit", "--url", server, "--require-provider", CUDA)
    assert r.exit_code == 1 and "fell back to CPU" in r.stdout
    assert run("admit", "--url", f"{server}/capabilities", "--forbid-provider", CUDA).exit_code == 0
    bad = run("admit", "--url", f"{server}/bad")
    assert bad.exit_code == 2 and "no 'snapshot' key" in bad.output
    assert run("snapshot", "--url", "http://127.0.0.1:1").exit_code == 2


def test_policy_file_and_same_as_blue(snap_file: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate.yaml"
    gate.write_text(
        "type: capability\nname: gpu-path\nrequireProviders: [CPUExecutionProvider]\n"
        "versions: {onnxruntime: same-as-blue}\nfingerprint: same-as-blue\n"
    )
    no_blue = run("admit", "--policy", str(gate), "--snapshot", str(snap_file))
    assert no_blue.exit_code == 2 and "blue snapshot is required" in no_blue.output
    r = run("admit", "--policy", str(gate), "--snapshot", str(snap_file), "--blue", str(snap_file))
    assert r.exit_code == 0 and r.stdout.startswith("admitted"), r.output
    typo = tmp_path / "typo.yaml"
    typo.write_text("type: capability\nrequireProvider: [CPUExecutionProvider]\n")
    r = run("admit", "--policy", str(typo), "--snapshot", str(snap_file))
    assert r.exit_code == 2 and "requireProvider" in r.output


def test_capability_gate_inside_a_rollout_policy(snap_file: Path, tmp_path: Path) -> None:
    from typing import get_args

    from gates.capability.spec import CapabilityRequirements
    from rollout.policy.models import GateSpec

    # It used to skip exactly when this regressed; a policy must accept capability gates.
    assert CapabilityRequirements in get_args(get_args(GateSpec)[0])
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "apiVersion: rollout-gates.dev/v1alpha1\nkind: RolloutPolicy\n"
        "metadata: {name: sd15}\n"
        "spec:\n  targets:\n    blue: {type: url, url: 'http://127.0.0.1:1'}\n"
        "    green: {type: url, url: 'http://127.0.0.1:2'}\n"
        "  steps: [{weight: 10}]\n"
        "  gates:\n    - {type: latency}\n"
        "    - {type: capability, requireProviders: [CUDAExecutionProvider]}\n"
    )
    r = run("admit", "--policy", str(policy), "--snapshot", str(snap_file))
    assert r.exit_code == 1 and "providers.required" in r.stdout, r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["admit"], "exactly one of"),
        (["admit", "--local", "--snapshot", "x.json"], "exactly one of"),
        (["admit", "--local", "--require-provider", "CUDA"], "ExecutionProvider"),
        (["admit", "--local", "--providers", "cuda,cpu"], "--providers"),
        (["admit", "--local", "--require-gpus", "-1"], "--require-gpus"),
        (["snapshot", "--logs", "/nonexistent.log"], "nonexistent"),
    ],
)
def test_bad_input_exits_2(args: list[str], message: str) -> None:
    r = run(*args)
    assert r.exit_code == 2 and message in r.output, r.output


def _admit_process(snap_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _APP_SOURCE, "admit", "--snapshot", str(snap_file), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def test_exec_only_when_admitted(snap_file: Path) -> None:
    served = [sys.executable, "-c", "print('serving'); raise SystemExit(7)"]
    ok = _admit_process(snap_file, "--require-provider", CPU, "--", *served)
    # Exit 7 is the command's own: it replaced the admit process (execvp).
    assert ok.returncode == 7, ok.stderr
    assert ok.stdout.splitlines() == [
        f"admitted (fingerprint {_fingerprint(snap_file)})",
        "serving",
    ]
    refused = _admit_process(snap_file, "--require-provider", CUDA, "--", *served)
    assert refused.returncode == 1 and "serving" not in refused.stdout
    missing = _admit_process(snap_file, "--", "/nonexistent/server")
    assert missing.returncode == 2 and "cannot exec" in missing.stderr


def _fingerprint(path: Path) -> str:
    return CapabilitySnapshot.from_file(path).fingerprint


def test_registered_in_the_rollout_cli(snap_file: Path) -> None:
    import rollout.cli

    names = {c.name for c in rollout.cli.app.registered_commands}
    names |= {g.name for g in rollout.cli.app.registered_groups}
    assert {"admit", "snapshot"} <= names  # used to skip exactly when this regressed
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rollout.cli",
            "admit",
            "--snapshot",
            str(snap_file),
            "--require-provider",
            CUDA,
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 1 and json.loads(proc.stdout)["admitted"] is False

"""``rollout image audit|diff`` and ``rollout audit-image``: output, options and exit codes.

The commands are registered on a local typer app exactly as ``rollout.cli`` registers them.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from images import bloated_image, clean_image, write_forms
from typer.testing import CliRunner

from rollout.cli.image import register

app = typer.Typer(callback=lambda: None)
register(app)
runner = CliRunner()


def run(*args: str) -> Any:
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    root = tmp_path_factory.mktemp("cli-images")
    return {"bloated": write_forms(bloated_image(), root, "bloated"),
            "clean": write_forms(clean_image(), root, "clean")}


def test_audit_clean_exits_0(images: dict[str, dict[str, str]]) -> None:
    ref = images["clean"]["oci-archive"]
    result = run("image", "audit", ref, "--gpu", "--pin", "cuda=12.4", "--pin",
                 "onnxruntime=1.18", "--allow-weights", "opt/models", "--max-pull-size", "2GB")
    assert result.exit_code == 0, result.output
    assert "PASS: 0 violation(s)" in result.output
    assert "COPY --from=build /out /" in result.output


def test_audit_bloated_exits_1_with_json(images: dict[str, dict[str, str]]) -> None:
    result = run("audit-image", images["bloated"]["docker-archive"], "-o", "json",
                 "--max-pull-size", "1kB")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    checks = {v["check"] for v in report["violations"]}
    assert {"pull-size", "compilers", "headers", "package-caches", "vcs", "notebooks", "tests",
            "weights", "private-keys", "setuid", "root-user"} == checks
    assert report["digest"] is None and report["image_id"] == images["bloated"]["image_id"]
    for violation in report["violations"]:
        assert set(violation) >= {"check", "message", "paths"}


def test_audit_text_lists_violations(images: dict[str, dict[str, str]]) -> None:
    result = run("audit-image", images["bloated"]["oci"], "--skip", "setuid",
                 "--allow", "private-keys=app/deploy_key")
    assert result.exit_code == 1
    assert "compilers:" in result.output and "usr/lib/gcc/x86_64-linux-gnu/12/cc1" in result.output
    assert "setuid:" not in result.output
    assert "root/.ssh/id_rsa" in result.output


@pytest.mark.parametrize("args", [
    ("audit-image", "/no/such/image.tar"),
    ("image", "audit", "/no/such/image.tar", "-o", "json"),
    ("image", "diff", "/no/such/a.tar", "/no/such/b.tar"),
    ("audit-image", "diff", "/no/such/a.tar"),
    ("audit-image", "a", "b"),
])
def test_bad_input_exits_2(args: tuple[str, ...]) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output


@pytest.mark.parametrize("option", [("--pin", "cuda"), ("--pin", "cudart=12"),
                                    ("--pin", "cuda=twelve"), ("--max-pull-size", "big"),
                                    ("--skip", "everything"), ("--allow", "nope=x")])
def test_bad_options_exit_2(images: dict[str, dict[str, str]], option: tuple[str, str]) -> None:
    result = run("image", "audit", images["clean"]["oci"], *option)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output


def test_not_an_image_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    path.write_bytes(b"not a tar at all" * 100)
    result = run("image", "audit", str(path), "-o", "json")
    assert result.exit_code == 2
    assert json.loads(result.stdout)["verdict"] == "error"


def test_diff_exit_codes(images: dict[str, dict[str, str]]) -> None:
    same = run("audit-image", "diff", images["clean"]["oci"], images["clean"]["docker-archive"])
    assert same.exit_code == 0, same.output
    assert "IDENTICAL" in same.output
    other = run("image", "diff", images["clean"]["oci"], images["bloated"]["oci"], "-o", "json")
    assert other.exit_code == 1
    data = json.loads(other.stdout)
    assert data["identical"] is False
    assert "gcc-12" in data["debian_packages"]["added"]
    text = run("image", "diff", images["clean"]["oci"], images["bloated"]["oci"])
    assert "Debian packages" in text.output and "config" in text.output


def test_diff_refuses_audit_options(images: dict[str, dict[str, str]]) -> None:
    ref = images["clean"]["oci"]
    result = run("audit-image", "diff", ref, ref, "--gpu")
    assert result.exit_code == 2


def test_progress_line_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from rollout.cli import image as image_cli

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    show = image_cli._progress("audit")
    assert show is not None
    show(1_000, 5_000_000)  # a small image: no line
    assert terminal.getvalue() == ""
    show(50_000_000, 200_000_000)
    show(200_000_000, 200_000_000)
    assert "\raudit: 50 / 200 MB read" in terminal.getvalue()
    assert terminal.getvalue().endswith("200 / 200 MB read\n")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert image_cli._progress("audit") is None

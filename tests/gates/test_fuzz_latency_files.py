"""Fuzzing ``rollout compare``'s latency files through the real CLI command.

Whatever the file holds, the command answers with one of its exit codes and a JSON document,
never a traceback: a file with any value that is not a finite, non-negative number of seconds
is bad input (exit 2, the file named) and never reaches a verdict; valid files of any shape
(one value, ties only, an empty arm) get a verdict of the method.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from rollout.cli import app

runner = CliRunner()
_GOOD = st.floats(min_value=0, max_value=1e6, allow_nan=False) | st.integers(0, 10**6)
_BAD = (st.just(math.nan) | st.just(math.inf) | st.just(-math.inf)
        | st.floats(max_value=-1e-300, allow_infinity=False) | st.text(max_size=5)
        | st.none() | st.booleans() | st.just(10**400) | st.just([1.0]) | st.just({"a": 1}))
_FIXTURE = [HealthCheck.function_scoped_fixture]  # tmp_path: each example rewrites the files
_METHODS = st.sampled_from(["sequential", "kayenta", "mannwhitney", "bootstrap", "threshold"])


def _compare(tmp: Path, blue: str | bytes, green: str | bytes, method: str
             ) -> tuple[int, dict[str, Any]]:
    files = []
    for name, body in (("blue", blue), ("green", green)):
        f = tmp / name
        f.write_bytes(body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass"))
        files.append(str(f))
    r = runner.invoke(app, ["compare", "--blue", files[0], "--green", files[1], "--method",
                            method, "--output", "json"])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    return r.exit_code, json.loads(r.stdout)


def _json_text(values: list[Any]) -> str:
    return "[" + ", ".join(json.dumps(v, allow_nan=True) for v in values) + "]"


@settings(max_examples=25, deadline=None, suppress_health_check=_FIXTURE)
@given(st.lists(_GOOD, max_size=40), st.lists(_GOOD, min_size=1, max_size=40), _METHODS,
       st.sampled_from(["json", "jsonl", "csv"]))
def test_valid_files_always_get_a_verdict(tmp_path: Path, blue: list[float], green: list[float],
                                          method: str, fmt: str) -> None:
    def render(values: list[float]) -> str:
        if fmt == "json":
            return _json_text(values) if values else "[]"
        if fmt == "jsonl":
            return "".join(json.dumps({"latency_s": v}) + "\n" for v in values) or "{\"ok\": false}"
        return "latency_s\n" + "".join(f"{v!r}\n" for v in values)

    code, doc = _compare(tmp_path, render(blue), render(green), method)
    if code == 2:  # the one refusal of valid files: sequential pairs blue[i] with green[i]
        assert method == "sequential" and len(blue) < len(green), doc
        assert "blue latencies per green one" in doc["error"]
        return
    assert code in (0, 1, 3, 4) and doc["verdict"] in ("pass", "fail", "inconclusive", "nodata")
    assert (code == 4) == (doc["verdict"] == "nodata")
    if not blue:
        assert doc["verdict"] == "nodata"  # an empty arm never passes


@settings(max_examples=30, deadline=None, suppress_health_check=_FIXTURE)
@given(st.lists(_GOOD, max_size=10), _BAD, st.lists(_GOOD, max_size=10), _METHODS,
       st.booleans())
def test_any_bad_value_is_exit_2_naming_the_file(tmp_path: Path, head: list[Any], bad: Any,
                                                 tail: list[Any], method: str,
                                                 jsonl: bool) -> None:
    values = [*head, bad, *tail]
    text = ("".join(json.dumps({"latency_s": v}, allow_nan=True) + "\n" for v in values)
            if jsonl else _json_text(values))
    code, doc = _compare(tmp_path, "[1.0, 2.0, 3.0]", text, method)
    assert code == 2 and doc["verdict"] == "error", doc
    assert str(tmp_path / "green") in doc["error"]


@settings(max_examples=30, deadline=None, suppress_health_check=_FIXTURE)
@given(st.binary(max_size=300) | st.text(max_size=300), _METHODS)
def test_arbitrary_bytes_never_crash_and_never_pass(tmp_path: Path, junk: bytes | str,
                                                    method: str) -> None:
    code, doc = _compare(tmp_path, "[1.0, 2.0, 3.0]", junk, method)
    assert code in (0, 1, 2, 3, 4)
    if code == 0:  # only a parseable, valid file can pass: it must read as latencies
        assert doc["green"]["n"] > 0


@pytest.mark.parametrize("body", ["[" * 100_000, "[" + "1," * 10 + "1e999]",
                                  "latency_s\n" + "9" * 5000 + "\n", "\ufeff[1.0]",
                                  b"\xff\xfe[\x001\x00]\x00", "[1.0]" + "\x00" * 10])
def test_pathological_files_are_bad_input(tmp_path: Path, body: str | bytes) -> None:
    code, doc = _compare(tmp_path, "[1.0, 2.0]", body, "threshold")
    assert code == 2 and doc["verdict"] == "error", doc

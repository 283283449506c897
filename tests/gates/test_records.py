"""Latency files: formats, and errors that name the file, the line and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gates.records import RecordsError, load_latencies, parse_latencies


def test_json_array() -> None:
    r = parse_latencies("[1.5, 2,\n 3.25]")
    assert r.format == "json"
    np.testing.assert_array_equal(r.latencies, [1.5, 2.0, 3.25])
    assert r.errors == 0


def test_jsonl_with_failed_requests_counted_not_dropped_silently() -> None:
    text = ('{"latency_s": 1.0}\n{"latency_s": null, "ok": false}\n\n'
            '{"latency_s": 2.0, "ok": true}\n')
    r = parse_latencies(text)
    assert r.format == "jsonl"
    np.testing.assert_array_equal(r.latencies, [1.0, 2.0])
    assert r.errors == 1
    assert r.requests == 3


def test_csv_with_ok_column() -> None:
    r = parse_latencies("arm,latency_s,ok\nblue,1.0,true\nblue,9,false\nblue,2.5,1\n")
    assert r.format == "csv"
    np.testing.assert_array_equal(r.latencies, [1.0, 2.5])
    assert r.errors == 1


@pytest.mark.parametrize(("text", "line", "needle"), [
    ("[1.0,\n2.0,\n\"fast\"]", 3, "not a number"),
    ("[1.0, NaN]", 1, "not finite"),
    ("[1.0,\n-2.0]", 2, "negative"),
    ('{"latency_s": 1}\n{"latency_s": 2}\n3.0\n', 3, "not a JSON object"),
    ('{"latency_s": 1}\n{"latency": 2}\n', 2, "missing key latency_s"),
    ("latency_s\n1.0\nabc\n", 3, "not a number"),
    ("latency_s\n1.0\nnan\n", 3, "not finite"),
    ("seconds\n1.0\n", 1, "no latency_s column"),
    ("[1.0, 2.0]\n{\"latency_s\": 1}", 2, "content after the JSON array"),
    ("[1.0, 2.0", 1, "not closed"),
])
def test_bad_input_names_line_and_reason(text: str, line: int, needle: str) -> None:
    with pytest.raises(RecordsError) as e:
        parse_latencies(text, "lat.json")
    assert e.value.line == line
    assert needle in e.value.message
    assert str(e.value).startswith(f"lat.json:{line}: ")
    assert e.value.fix


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.json"
    p.write_text("  \n")
    with pytest.raises(RecordsError, match="empty"):
        load_latencies(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RecordsError, match="file not found"):
        load_latencies(tmp_path / "nope.jsonl")

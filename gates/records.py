"""Reading latency samples from files, with errors that name the file, the line and the fix.

Accepted formats, auto-detected from the content (not the extension, which pipelines mangle):

* a JSON array of seconds: ``[2.41, 2.39, ...]``;
* JSON Lines, one object per line with ``latency_s`` (and optional ``ok``; rows with
  ``"ok": false`` are failed requests: counted as errors, excluded from latency statistics);
* CSV with a header that has a ``latency_s`` column (and optional ``ok``).

Why strict: a latency file with a stray string or a NaN that was silently skipped is how a
broken canary passes. Every problem is a :class:`RecordsError` with the 1-based line.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["LatencyRecords", "RecordsError", "load_latencies", "parse_latencies"]

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


class RecordsError(ValueError):
    """A latency file cannot be read; ``line`` is 1-based (0 when it concerns the whole file)."""

    def __init__(self, path: str, line: int, message: str, fix: str) -> None:
        self.path, self.line, self.message, self.fix = path, line, message, fix
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message} ({fix})")


@dataclass(frozen=True)
class LatencyRecords:
    """Latencies of successful requests in file order, plus the count of failed ones."""

    path: str
    format: str
    latencies: NDArray[np.float64]
    errors: int

    @property
    def requests(self) -> int:
        """All requests in the file, failed ones included."""
        return int(self.latencies.size) + self.errors


def load_latencies(path: str | Path) -> LatencyRecords:
    """Read and validate a latency file (see module docstring for the formats)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise RecordsError(str(p), 0, "file not found", "check the path") from e
    except UnicodeDecodeError as e:
        raise RecordsError(str(p), 0, "not UTF-8 text",
                           "give a JSON, JSON Lines or CSV file") from e
    except OSError as e:
        raise RecordsError(str(p), 0, e.strerror or str(e), "check the path and permissions") from e
    return parse_latencies(text, str(p))


def parse_latencies(text: str, path: str = "<text>") -> LatencyRecords:
    """Parse latency records from ``text``; ``path`` only labels error messages."""
    stripped = text.lstrip()
    if not stripped:
        raise RecordsError(path, 0, "the file is empty",
                           "write a JSON array of seconds, JSON Lines with latency_s, or a CSV")
    if stripped.startswith("["):
        return _parse_json_array(text, path)
    if stripped.startswith("{"):
        return _parse_jsonl(text, path)
    return _parse_csv(text, path)


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _latency(value: Any, path: str, line: int) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordsError(path, line, f"latency {value!r} is not a number",
                           "write the latency in seconds as a number, e.g. 2.41")
    v = float(value)
    if not math.isfinite(v):
        raise RecordsError(path, line, f"latency {value!r} is not finite",
                           "write failed requests with \"ok\": false instead of NaN/inf")
    if v < 0:
        raise RecordsError(path, line, f"latency {value!r} is negative",
                           "latencies are durations in seconds, >= 0")
    return v


def _parse_json_array(text: str, path: str) -> LatencyRecords:
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    values: list[float] = []
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text):
            raise RecordsError(path, _line_of(text, pos), "the JSON array is not closed",
                               "end the array with ]")
        if text[pos] == "]":
            break
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise RecordsError(path, e.lineno, f"invalid JSON: {e.msg}",
                               "a JSON array of numbers, e.g. [2.41, 2.39]") from e
        values.append(_latency(value, path, _line_of(text, pos)))
        pos = end
    rest = text[pos + 1:]
    if rest.strip():
        extra = pos + 1 + len(rest) - len(rest.lstrip())
        raise RecordsError(path, _line_of(text, extra), "content after the JSON array",
                           "one JSON array per file; mixed formats are not accepted")
    return _records(path, "json", values, 0)


def _parse_jsonl(text: str, path: str) -> LatencyRecords:
    values: list[float] = []
    errors = 0
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            raise RecordsError(path, lineno, f"not a JSON object: {e.msg}",
                               "every line must be a JSON object like {\"latency_s\": 2.41}; "
                               "mixed formats are not accepted") from e
        if not isinstance(row, dict):
            raise RecordsError(path, lineno, "line is not a JSON object",
                               "every line must be a JSON object like {\"latency_s\": 2.41}")
        ok = row.get("ok", True)
        if not isinstance(ok, bool):
            raise RecordsError(path, lineno, f"ok is {ok!r}", "ok must be true or false")
        if not ok:
            errors += 1
            continue
        if "latency_s" not in row:
            raise RecordsError(path, lineno, "missing key latency_s",
                               "add latency_s (seconds) or mark the request \"ok\": false")
        values.append(_latency(row["latency_s"], path, lineno))
    return _records(path, "jsonl", values, errors)


def _parse_csv(text: str, path: str) -> LatencyRecords:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "latency_s" not in reader.fieldnames:
        raise RecordsError(path, 1, "no latency_s column in the CSV header",
                           "give a CSV header with a latency_s column, a JSON array, "
                           "or JSON Lines")
    values: list[float] = []
    errors = 0
    for row in reader:
        lineno = reader.line_num
        if None in row or any(v is None for v in row.values()):
            raise RecordsError(path, lineno, "wrong number of CSV fields",
                               f"each row needs the {len(reader.fieldnames)} header fields")
        ok_raw = (row.get("ok") or "true").strip().lower()
        if ok_raw not in _TRUE | _FALSE:
            raise RecordsError(path, lineno, f"ok is {ok_raw!r}", "ok must be true or false")
        if ok_raw in _FALSE:
            errors += 1
            continue
        cell = row["latency_s"].strip()
        try:
            value: float = float(cell)
        except ValueError as e:
            raise RecordsError(path, lineno, f"latency {cell!r} is not a number",
                               "write the latency in seconds as a number, e.g. 2.41") from e
        values.append(_latency(value, path, lineno))
    return _records(path, "csv", values, errors)


def _records(path: str, fmt: str, values: list[float], errors: int) -> LatencyRecords:
    return LatencyRecords(path=path, format=fmt, latencies=np.asarray(values, dtype=np.float64),
                          errors=errors)

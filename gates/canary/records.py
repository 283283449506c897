"""Canary records: one JSON object per request, written as the run goes.

A run with ``records_dir`` writes three JSON Lines files there:

``requests.jsonl``  every request, warm-up and cancelled ones included, in completion order
                    of their slices: the full account of the run.
``blue.jsonl``,     one file per arm for ``rollout compare --blue ... --green ...`` and
``green.jsonl``     :func:`gates.records.load_latencies`: the rows of :func:`in_arm_file`,
                    in the order the sequential judge consumed their slices.

Row fields: ``slice`` (null for warm-up), ``arm``, ``replica`` (0 for green, 0..K-1 for the
blues of a slice), ``url``, ``pod`` and ``node`` (the instance that served it, see
:mod:`gates.canary.fleet`; pod and node null where the platform does not know them),
``order`` (launch position within the slice: arm order is shuffled),
``prompt_id``, ``seed``, ``start`` (Unix time the request was due to be sent), ``latency_s``,
``server_timing`` (seconds, from the ``Server-Timing`` header), ``status`` (HTTP status or
null), ``ok``, ``error`` (null or one of :data:`ERROR_KINDS`), ``detail``, ``censored``,
``excluded``, ``image_hash`` (sha256 of the encoded image), ``image_sig`` (its luminance
signature, present when the image was decoded: only for slices whose arms' encodings differed;
see :mod:`gates.canary.output_check`). Requests drawing several images join them with commas.

``ok`` is true exactly when ``latency_s`` went into the latency judge, which is what
``load_latencies`` counts. That is every request of a *complete* slice: one whose requests all
answered or timed out. A timeout is a right-censored observation (``censored: true``,
``error: "timeout"``, ``latency_s`` = the time waited): the true latency is at least that, so it
still ranks above every answered request, which is all the judge uses. A slice with any other
failure (connect, 4xx, 5xx, bad payload) gives no latency evidence: its failed rows are written
``ok: false`` (``load_latencies`` counts them as errors) and its successful rows appear only in
``requests.jsonl`` with ``excluded: "slice-error"``, so the arm files stay aligned slice by slice
(``green[i]`` with ``blue[K*i : K*(i+1)]``, as ``rollout compare`` pairs them). Green's failures of
every kind, timeouts included, feed the error-rate gate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from gates.canary.fleet import Instance
from gates.canary.output_check import ImageFingerprint

__all__ = ["ARMS", "ERROR_KINDS", "Arm", "ErrorKind", "Excluded", "RecordWriter",
           "RequestRecord", "in_arm_file"]

Arm = Literal["blue", "green"]
ARMS: tuple[Arm, ...] = ("blue", "green")
ErrorKind = Literal["timeout", "connect", "http_4xx", "http_5xx", "bad_payload"]
#: Failure classes: no answer in time; transport failure (refused, reset, DNS, TLS, closed
#: mid-answer); a 4xx or 5xx answer; a 2xx answer without a usable image.
ERROR_KINDS: tuple[ErrorKind, ...] = ("timeout", "connect", "http_4xx", "http_5xx",
                                      "bad_payload")
#: Why a request's latency was not judged although it did not fail itself.
Excluded = Literal["warmup", "slice-error", "cancelled"]


@dataclass(frozen=True)
class RequestRecord:
    """One request of a canary run (see the module docstring for the fields)."""

    slice: int | None
    arm: Arm
    replica: int
    order: int
    prompt_id: str
    seed: int
    start: float
    latency_s: float
    status: int | None = None
    error: ErrorKind | None = None
    detail: str | None = None
    server_timing: dict[str, float] | None = None
    images: tuple[ImageFingerprint, ...] = field(default=(), repr=False)
    #: The encoded images, kept only until the slice is judged (decoded on demand).
    payloads: tuple[bytes, ...] = field(default=(), repr=False, compare=False)
    ok: bool = False
    censored: bool = False
    excluded: Excluded | None = None
    #: The instance that served it (None for records built without a fleet, e.g. in tests).
    instance: Instance | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON Lines row."""
        sigs = [i.signature for i in self.images]
        return {
            "slice": self.slice, "arm": self.arm, "replica": self.replica,
            "url": self.instance.url if self.instance else None,
            "pod": self.instance.pod or None if self.instance else None,
            "node": self.instance.node or None if self.instance else None,
            "order": self.order,
            "prompt_id": self.prompt_id, "seed": self.seed, "start": round(self.start, 6),
            "latency_s": round(self.latency_s, 6), "server_timing": self.server_timing,
            "status": self.status, "ok": self.ok, "error": self.error, "detail": self.detail,
            "censored": self.censored, "excluded": self.excluded,
            "image_hash": ",".join(i.hash for i in self.images) or None,
            "image_sig": None if not sigs or None in sigs else ",".join(s or "" for s in sigs),
        }


def in_arm_file(row: RequestRecord | dict[str, Any]) -> bool:
    """Whether a row belongs in its arm's file: judged latencies and the arm's own failures.

    Applied to the rows of ``requests.jsonl`` (as dicts) with a filter on ``arm`` this gives
    exactly ``blue.jsonl`` / ``green.jsonl``.
    """
    get = row.get if isinstance(row, dict) else lambda k: getattr(row, k)
    return get("excluded") is None and (bool(get("ok")) or get("error") is not None)


class RecordWriter:
    """Write ``requests.jsonl`` and the per-arm files into a directory, flushing per slice.

    Raises:
        OSError: the directory cannot be created or written.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.paths: dict[str, Path] = {name: self.directory / f"{name}.jsonl"
                                       for name in ("requests", *ARMS)}
        self._files: dict[str, IO[str]] = {}
        try:
            for name, path in self.paths.items():
                self._files[name] = path.open("w", encoding="utf-8")
        except OSError:
            self.close()
            raise

    def write(self, records: list[RequestRecord]) -> None:
        """Append rows (one slice, or warm-up requests) and flush them to disk."""
        for r in records:
            line = json.dumps(r.to_json(), allow_nan=False) + "\n"
            self._files["requests"].write(line)
            if in_arm_file(r):
                self._files[r.arm].write(line)
        for f in self._files.values():
            f.flush()

    def close(self) -> None:
        """Close every file (idempotent)."""
        for f in self._files.values():
            f.close()
        self._files = {}

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

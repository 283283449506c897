"""Durable rollout state for the local platform: SQLite (WAL) plus an OS file lock.

Why SQLite: one file, atomic multi-row transactions, and WAL lets ``rollout status --watch``
read while the controller writes. Each transition is one row with its evidence, written in the
same transaction as the new status, so the history can never disagree with the status.

Why corruption is an error, not an empty store: a half-truncated or overwritten file raises
:class:`~rollout.errors.StoreCorruptError` naming it, and a store that lost a rollout it held
(the file truncated to zero bytes, or replaced) is caught by the ``NAME.started`` marker written
beside it on the rollout's first save. Otherwise a rollout would be silently forgotten while
HAProxy still holds its split.

Why ``flock``: the OS releases it when the holder dies, even by SIGKILL, so a crashed
controller never leaves a stale lock, and a second ``rollout promote`` learns at once who holds
it (pid, host, since) from the lock file's content.

User intents (abort, rollback, resume, promote, pause, retry) are separate rows, not fields
the controller might overwrite with a stale in-memory status: the CLI records intent, the
controller consumes it (the Argo Rollouts habit: ``abort`` only patches ``status.abort``).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rollout.errors import LockedError, StateConflictError, StoreCorruptError
from rollout.machine import RolloutStatus

__all__ = ["INTENT_FLAGS", "Intent", "StateStore", "TransitionRecord"]

Intent = Literal["abort", "rollback", "resume", "promote", "pause", "retry"]
#: The status flag each intent sets when the controller folds it in (every store uses it).
#: ``pause`` holds traffic at the next step boundary; ``retry`` runs a RolledBack or Aborted
#: rollout again from step 0 (see :mod:`rollout.machine`).
INTENT_FLAGS: dict[str, str] = {"abort": "abort_requested", "rollback": "rollback_requested",
                                "resume": "resume_requested", "promote": "promote_requested",
                                "pause": "pause_requested", "retry": "retry_requested"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    name TEXT PRIMARY KEY, generation INTEGER NOT NULL, status TEXT NOT NULL,
    updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, generation INTEGER NOT NULL,
    from_phase TEXT, to_phase TEXT NOT NULL, step INTEGER NOT NULL, reason TEXT NOT NULL,
    evidence TEXT NOT NULL, at REAL NOT NULL, UNIQUE(name, generation));
CREATE TABLE IF NOT EXISTS intents (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, kind TEXT NOT NULL,
    at REAL NOT NULL, consumed INTEGER NOT NULL DEFAULT 0);
"""


@dataclass(frozen=True)
class TransitionRecord:
    """One row of a rollout's history."""

    generation: int
    from_phase: str | None
    to_phase: str
    step: int
    reason: str
    evidence: dict[str, Any]
    at: float


class StateStore:
    """Rollout statuses, transitions, intents and locks under one state directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "rollouts.db"
        with self._connection() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        try:
            db = self._connect()
            try:
                with db:
                    yield db
            finally:
                db.close()
        except sqlite3.DatabaseError as e:
            raise StoreCorruptError(
                f"status store {self.path} is unreadable ({e}): restore it from a backup or "
                f"move it away; 'rollout abort NAME --haproxy-socket PATH' returns traffic to "
                f"blue without it") from e

    def _started(self, name: str) -> Path:
        return self.root / f"{name}.started"

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level="IMMEDIATE")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def load(self, name: str) -> RolloutStatus | None:
        """The persisted status of ``name``, or None if it was never started."""
        with self._connection() as db:
            row = db.execute("SELECT status FROM rollouts WHERE name = ?", (name,)).fetchone()
        if row is None:
            if self._started(name).exists():
                raise StoreCorruptError(
                    f"status store {self.path} has no record of rollout {name!r}, which was "
                    f"started here ({self._started(name)} exists): the file was truncated or "
                    f"replaced. Traffic may still be split: 'rollout abort {name} "
                    f"--haproxy-socket PATH' returns it to blue")
            return None
        try:
            return RolloutStatus.model_validate_json(row[0])
        except ValueError as e:
            raise StoreCorruptError(f"status store {self.path}: the status of {name!r} does "
                                    f"not parse: {e}") from e

    def names(self) -> list[str]:
        """All known rollouts."""
        with self._connection() as db:
            return [r[0] for r in db.execute("SELECT name FROM rollouts ORDER BY name")]

    def save(self, status: RolloutStatus, *, previous: RolloutStatus | None,
             evidence: dict[str, Any] | None = None, consumed: list[int] | None = None) -> None:
        """Persist ``status`` and its transition row atomically.

        Optimistic concurrency: the row is only replaced if it still holds ``previous``'s
        generation, so two writers can never interleave silently.

        Raises:
            StateConflictError: someone else changed the rollout since ``previous`` was read.
        """
        now = time.time()
        with self._connection() as db:
            if previous is None:
                try:
                    db.execute("INSERT INTO rollouts VALUES (?, ?, ?, ?)",
                               (status.name, status.generation, status.model_dump_json(), now))
                except sqlite3.IntegrityError as e:
                    raise StateConflictError(f"rollout {status.name!r} already exists") from e
            else:
                cur = db.execute(
                    "UPDATE rollouts SET generation = ?, status = ?, updated_at = ? "
                    "WHERE name = ? AND generation = ?",
                    (status.generation, status.model_dump_json(), now, status.name,
                     previous.generation))
                if cur.rowcount != 1:
                    raise StateConflictError(
                        f"rollout {status.name!r} changed since generation {previous.generation}")
            db.execute(
                "INSERT INTO transitions (name, generation, from_phase, to_phase, step, reason,"
                " evidence, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (status.name, status.generation, previous.phase.value if previous else None,
                 status.phase.value, status.step, status.reason,
                 json.dumps(evidence or {}, default=str), now))
            db.executemany("UPDATE intents SET consumed = 1 WHERE id = ?",
                           [(i,) for i in consumed or []])
        if previous is None:  # after the commit: a marker never names an unsaved rollout
            self._started(status.name).touch()

    def delete(self, name: str) -> None:
        """Forget a finished rollout so the same name can be promoted again."""
        with self._connection() as db:
            db.execute("DELETE FROM rollouts WHERE name = ?", (name,))
        self._started(name).unlink(missing_ok=True)

    def history(self, name: str) -> list[TransitionRecord]:
        """Every transition of ``name`` in order (all runs of that name)."""
        with self._connection() as db:
            rows = db.execute(
                "SELECT generation, from_phase, to_phase, step, reason, evidence, at "
                "FROM transitions WHERE name = ? ORDER BY id", (name,)).fetchall()
        return [TransitionRecord(g, f, t, s, r, json.loads(e), a) for g, f, t, s, r, e, a in rows]

    def request(self, name: str, intent: Intent) -> None:
        """Record a user's intent; the controller acts on it at its next step."""
        with self._connection() as db:
            db.execute("INSERT INTO intents (name, kind, at) VALUES (?, ?, ?)",
                       (name, intent, time.time()))

    def pending_intents(self, status: RolloutStatus) -> tuple[RolloutStatus, list[int]]:
        """``status`` with unconsumed intents folded in as flags, and those intents' ids.

        Pass the ids to :meth:`save` so the intents are consumed in the same transaction that
        persists the status carrying them: a crash in between loses no abort.
        """
        with self._connection() as db:
            rows = db.execute("SELECT id, kind FROM intents WHERE name = ? AND consumed = 0",
                              (status.name,)).fetchall()
        if not rows:
            return status, []
        flags = {INTENT_FLAGS[k]: True for _, k in rows}
        return status.model_copy(update=flags), [i for i, _ in rows]

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold the exclusive lock of rollout ``name`` (released by the OS if we die).

        Raises:
            LockedError: another live process holds it; the message names the holder.
        """
        path = self.root / f"{name}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                holder = path.read_text(encoding="utf-8").strip() or "another process"
                raise LockedError(f"rollout {name!r} is locked by {holder}") from e
            os.ftruncate(fd, 0)
            os.write(fd, (f"pid {os.getpid()} on {socket.gethostname()} since "
                          f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}").encode())
            yield
        finally:
            os.close(fd)

"""Named kill points for the crash-safety suite (``ROLLOUT_CRASH_AT``).

Why a module of its own: the controller is not the only place where a kill matters. A kill
between HAProxy's two weight commands, or between saving a transition and notifying about it,
must leave traffic and the record in a state the next controller can repair, and the tests can
only prove that if they can kill the process exactly there. Points are plain strings:
``Phase:step:before|after`` around each action (the controller), ``router:between`` between the
two commands of a non-atomic router, ``notify:before:PHASE`` after a transition to PHASE is
saved and before its observers run.
"""

from __future__ import annotations

import os
import signal

__all__ = ["CRASH_ENV", "crash_here"]

CRASH_ENV = "ROLLOUT_CRASH_AT"


def crash_here(point: str) -> None:
    """SIGKILL this process if ``ROLLOUT_CRASH_AT`` names ``point`` (crash tests only)."""
    if os.environ.get(CRASH_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)

"""The controller's error tree. The type says whether retrying can help.

::

    RolloutError
    ├── PermanentError          retrying the same call cannot help
    │   ├── BadInputError       policy, files, flags (exit 2, nothing changed)
    │   │   └── StoreCorruptError   the status store is unreadable or lost a rollout
    │   ├── AccessDeniedError   credentials or RBAC refused the call (HTTP 401/403)
    │   ├── LockedError         another controller holds the rollout (exit 2)
    │   ├── NotFoundError       the object or rollout does not exist
    │   └── StateConflictError  the status changed under us: re-read and re-decide
    └── TemporaryError          may succeed later (with ``delay`` seconds as a hint)
        ├── UnavailableError    endpoint/socket/API server unreachable, 5xx, timeouts
        └── RouterError         the router did not apply or confirm a change

Platform modules map their library's exceptions onto this tree with ``raise ... from e``.
"""

from __future__ import annotations

__all__ = [
    "AccessDeniedError",
    "BadInputError",
    "LockedError",
    "NotFoundError",
    "PermanentError",
    "RolloutError",
    "RouterError",
    "StateConflictError",
    "StoreCorruptError",
    "TemporaryError",
    "UnavailableError",
]


class RolloutError(Exception):
    """Base of every error the controller raises on purpose."""


class PermanentError(RolloutError):
    """Retrying the same operation cannot succeed."""


class TemporaryError(RolloutError):
    """The operation may succeed if retried after ``delay`` seconds."""

    def __init__(self, message: str, *, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class BadInputError(PermanentError):
    """The user's input (policy, flags, files) is invalid; nothing was changed."""


class StoreCorruptError(BadInputError):
    """The status store cannot be read, or has lost a rollout it once held.

    Never treated as "no rollout": traffic may still be split, so the message names the file
    and ``rollout abort --haproxy-socket`` can still return traffic to blue without it.
    """


class AccessDeniedError(PermanentError):
    """HTTP 401/403: the credentials are wrong or RBAC does not allow the call."""


class LockedError(PermanentError):
    """Another live controller holds this rollout."""


class NotFoundError(PermanentError):
    """A named object (rollout, Deployment, Service, ...) does not exist."""


class StateConflictError(PermanentError):
    """The persisted status changed since it was read: re-read it and decide again."""


class UnavailableError(TemporaryError):
    """An endpoint, socket or API server did not answer (or answered 5xx)."""


class RouterError(TemporaryError):
    """The traffic router did not apply or confirm a weight change."""
